"""Where clusterctl keeps operator-side files: known_hosts, locks, labs, secrets.

These are caches and credentials, never the cluster's truth (that lives on the hosts).
"""

from __future__ import annotations

import os
from pathlib import Path


def state_root() -> Path:
    """$CLUSTERCTL_STATE_DIR, else $XDG_STATE_HOME/clusterctl, else ~/.local/state/clusterctl."""
    explicit = os.environ.get("CLUSTERCTL_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "clusterctl"


def cluster_path(name: str) -> Path:
    """The cluster's state directory, not created (dry runs and reads make nothing)."""
    return state_root() / "clusters" / name


def cluster_dir(name: str) -> Path:
    """The cluster's state directory, created 0700 when missing (its secrets live here too)."""
    path = cluster_path(name)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
