"""One `up` at a time per cluster: an flock on the operator's side.

The kernel drops the lock when the holder dies, so a crashed run never leaves a stale lock;
the holder's description sits beside it only to name it in the refusal.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from clusterctl.errors import LockHeld


@contextmanager
def cluster_lock(directory: Path, cluster: str, what: str, wait: float = 5.0):
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / "lock"
    holder_path = directory / "lock.holder.json"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockHeld(f"cluster {cluster!r} is busy: {_holder(holder_path)}; try again when it ends") from None
                time.sleep(0.2)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "user": os.environ.get("USER", ""),
                  "what": what, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        holder_path.write_text(json.dumps(holder))
        try:
            yield
        finally:
            holder_path.unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"'{h['what']}' holds it (pid {h['pid']} on {h['host']}, since {h['since']})"
    except (OSError, ValueError, KeyError):
        return "another clusterctl run holds its lock"
