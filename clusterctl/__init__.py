"""clusterctl: turn SSH-reachable Linux hosts into one container cluster."""

__version__ = "0.1.0"
