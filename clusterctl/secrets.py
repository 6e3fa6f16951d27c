"""Operator-side secrets of a cluster, generated once and kept 0600 in its state directory."""

from __future__ import annotations

import base64
import os
from pathlib import Path


def gossip_key(directory: Path) -> str:
    """Consul's gossip encryption key: 32 random bytes, base64 (what `consul keygen` prints)."""
    path = directory / "gossip.key"
    if path.exists():
        return path.read_text().strip()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = base64.b64encode(os.urandom(32)).decode()
    # O_EXCL: two first runs racing cannot both write a key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def weave_password(directory: Path) -> bytes:
    """The weave driver's encryption password: 32 random bytes as url-safe base64, made once."""
    path = directory / "weave.password"
    if path.exists():
        return path.read_bytes().strip()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    password = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(password + b"\n")
    return password
