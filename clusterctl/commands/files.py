"""Writing files on hosts: atomic (temp file + rename), content as data, never as shell text."""

from __future__ import annotations

import hashlib

from clusterctl.commands.base import Cmd, sh_args

WRITE = 'umask 077; mkdir -p "$(dirname "$1")" && printf "%s" "$2" > "$1.tmp" && chmod "$3" "$1.tmp" && mv -f "$1.tmp" "$1"'
WRITE_STDIN = 'umask 077; mkdir -p "$(dirname "$1")" && cat > "$1.tmp" && chmod "$2" "$1.tmp" && mv -f "$1.tmp" "$1"'


def sha256(content: str | bytes) -> str:
    return hashlib.sha256(content.encode() if isinstance(content, str) else content).hexdigest()


def write_file(path: str, content: str, mode: str = "0644", description: str = "") -> Cmd:
    """Content travels as an argument (visible in a dry run); use write_secret for secrets."""
    return sh_args(WRITE, path, content, mode, description=description or f"write {path}")


def write_secret(path: str, content: bytes, mode: str = "0600", description: str = "") -> Cmd:
    """Content travels on stdin: never on a command line, never in a dry run's output."""
    cmd = sh_args(WRITE_STDIN, path, mode, description=description or f"write {path} (secret)")
    return Cmd(cmd.argv, cmd.description, cmd.check, stdin=content)
