"""The phases of `up`, in order. Each plans from facts alone; see phases/base.py.

The engine phase comes right after docker: its one restart of the engine (to set the default
DNS) is quick before a swarm or any container exists, and ~10 s slower after.
"""

from clusterctl.phases.consul import ConsulPhase
from clusterctl.phases.docker import DockerPhase
from clusterctl.phases.engine import EnginePhase
from clusterctl.phases.filebox import FileboxPhase
from clusterctl.phases.network import NetworkPhase
from clusterctl.phases.prune import PrunePhase
from clusterctl.phases.services import ServicesPhase

PHASES = (DockerPhase(), EnginePhase(), NetworkPhase(), FileboxPhase(), ConsulPhase(), ServicesPhase(), PrunePhase())

__all__ = ["PHASES"]
