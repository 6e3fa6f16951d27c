"""The one place where argv becomes shell text.

A Cmd is an argv tuple plus a short description. Rendering goes through shlex.join, so a value
from the cluster file can never become shell syntax. A Script joins a host's Cmds into one
`sh -c` payload so a whole phase costs one SSH round trip.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Cmd:
    argv: tuple[str, ...]
    description: str = ""
    # Tolerate failure (e.g. "remove if present"); the script goes on.
    check: bool = True
    # Fed to this command's stdin: bytes (secrets stay off command lines), or a stream source
    # with write_to(write) and describe() (image archives). One per Script.
    stdin: object | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("empty argv")
        for part in self.argv:
            if not isinstance(part, str):
                raise TypeError(f"argv parts must be str, got {type(part).__name__}: {part!r}")

    def render(self) -> str:
        text = shlex.join(self.argv)
        return text if self.check else f"{text} || true"

    def display(self) -> str:
        """What a dry run shows: the rendered line, with stdin named but never printed."""
        if self.stdin is None:
            return self.render()
        describe = getattr(self.stdin, "describe", None)
        what = describe() if describe else f"{len(self.stdin)} bytes, not shown"  # type: ignore[arg-type]
        return f"{self.render()}  # stdin: {what}"

    def __str__(self) -> str:
        return self.render()


def sh(script: str, description: str = "", check: bool = True) -> Cmd:
    """A fixed shell snippet written in this codebase (never user data) run by `sh -c`.

    Used for control flow such as `command -v docker`; values from the cluster file must be
    passed as positional parameters ("$1"...) through `args`, never formatted into `script`.
    """
    return Cmd(("sh", "-c", script), description=description, check=check)


def sh_args(script: str, *args: str, description: str = "", check: bool = True) -> Cmd:
    """Like sh(), with values bound to $1.. so they stay data."""
    return Cmd(("sh", "-c", script, "sh", *args), description=description, check=check)


@dataclass(frozen=True)
class Script:
    """A host's ordered commands for one phase, run in one round trip with `set -e`."""

    cmds: tuple[Cmd, ...]

    def __post_init__(self) -> None:
        if sum(c.stdin is not None for c in self.cmds) > 1:
            raise ValueError("a Script can feed stdin to one command only")

    @property
    def stdin(self) -> object | None:
        return next((c.stdin for c in self.cmds if c.stdin is not None), None)

    def render(self) -> str:
        lines = ["set -e"]
        lines += [c.render() for c in self.cmds]
        return "\n".join(lines) + "\n"

    def __bool__(self) -> bool:
        return bool(self.cmds)
