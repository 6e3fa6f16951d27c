"""The phases of `up`, in order. Each plans from facts alone; see phases/base.py."""

from clusterctl.phases.docker import DockerPhase

PHASES = (DockerPhase(),)

__all__ = ["PHASES"]
