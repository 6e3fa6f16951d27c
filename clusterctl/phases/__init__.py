"""The phases of `up`, in order. Each plans from facts alone; see phases/base.py."""

from clusterctl.phases.consul import ConsulPhase
from clusterctl.phases.docker import DockerPhase
from clusterctl.phases.engine import EnginePhase
from clusterctl.phases.filebox import FileboxPhase
from clusterctl.phases.network import NetworkPhase

PHASES = (DockerPhase(), NetworkPhase(), EnginePhase(), FileboxPhase(), ConsulPhase())

__all__ = ["PHASES"]
