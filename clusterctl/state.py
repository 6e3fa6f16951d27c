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


# In each cluster's state directory: the absolute path of the cluster file it was made for.
SOURCE_FILE = "source"


def recorded_source(directory: Path) -> Path | None:
    """The cluster file the state directory was made for, if recorded and still there."""
    try:
        with open(directory / SOURCE_FILE, encoding="utf-8", errors="replace") as f:
            recorded = Path(f.read(4096).strip())
    except OSError:  # none recorded (a new directory, or one made before the record)
        return None
    return recorded if recorded.is_absolute() and recorded.is_file() else None


def other_source(directory: Path, cluster_file: Path) -> Path | None:
    """Another existing cluster file the state directory was made for; None if it is this one's."""
    recorded = recorded_source(directory)
    if recorded is None or recorded == cluster_file.resolve():
        return None
    try:
        return None if os.path.samefile(recorded, cluster_file) else recorded
    except OSError:
        return recorded


def cluster_dir(name: str, cluster_file: Path) -> Path:
    """The cluster's state directory, created 0700 when missing (its secrets live here too).
    It records the cluster file it is for, unless another file that still exists has it."""
    path = cluster_path(name)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    source = cluster_file.resolve()
    if recorded_source(path) is None:
        tmp = path / f".{SOURCE_FILE}.{os.getpid()}.tmp"
        tmp.write_text(f"{source}\n", encoding="utf-8")
        os.replace(tmp, path / SOURCE_FILE)
    return path
