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
    # with write_to(write) and describe() (image archives). One per Script, but for commands
    # that read exactly len(stdin) bytes of it (`stdin_bounded`): those come first, in order.
    stdin: object | None = field(default=None, repr=False, compare=False)
    stdin_bounded: bool = False

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
        fed = [c for c in self.cmds if c.stdin is not None]
        # The script's commands share one stdin: each but the last must stop at its own bytes.
        if any(not c.stdin_bounded for c in fed[:-1]):
            raise ValueError("a Script can feed stdin to one command only, after those that read a bounded part")

    @property
    def stdin(self) -> object | None:
        fed = [c.stdin for c in self.cmds if c.stdin is not None]
        if not fed:
            return None
        return fed[0] if len(fed) == 1 else ChainedStdin(tuple(fed))

    def render(self, marked: bool = False) -> str:
        """`marked`: each command is preceded by a step mark on stderr (STEP_MARK, its index), so
        the operator's side can tell which command runs now and how long each took."""
        lines = ["set -e"]
        for i, c in enumerate(self.cmds):
            if marked:
                lines.append(f"printf '{STEP_MARK_SHELL}%s\\n' {i} >&2")
            lines.append(c.render())
        return "\n".join(lines) + "\n"

    def __bool__(self) -> bool:
        return bool(self.cmds)


# A step mark: a byte no command prints (ASCII record separator), a tag, the command's index.
STEP_MARK = "\x1eclusterctl-step "
STEP_MARK_SHELL = "\\036clusterctl-step "
_STEP_MARK_BYTES = STEP_MARK.encode()


def strip_step_marks(stderr: str) -> str:
    """A marked script's stderr as the commands wrote it (for error messages)."""
    if STEP_MARK not in stderr:
        return stderr
    return "".join(part.split("\n", 1)[1] if i else part for i, part in enumerate(stderr.split(STEP_MARK)))


class StepMarks:
    """Reads a marked script's stderr as it arrives (chunks may split a mark) and calls
    on_step(index) as each command starts."""

    def __init__(self, on_step):  # noqa: ANN001 - Callable[[int], None]
        self.on_step = on_step
        self._tail = b""

    def feed(self, data: bytes) -> None:
        buf = self._tail + data
        while True:
            at = buf.find(_STEP_MARK_BYTES)
            if at < 0:
                # Keep what could be the start of a mark split over two chunks.
                keep = next((k for k in range(min(len(buf), len(_STEP_MARK_BYTES)), 0, -1) if _STEP_MARK_BYTES.startswith(buf[-k:])), 0)
                self._tail = buf[len(buf) - keep :] if keep else b""
                return
            end = buf.find(b"\n", at)
            if end < 0:
                self._tail = buf[at:]
                return
            index = buf[at + len(_STEP_MARK_BYTES) : end]
            buf = buf[end + 1 :]
            if index.isdigit():
                self.on_step(int(index))


@dataclass(frozen=True)
class ChainedStdin:
    """Several commands' stdin, one after another on the script's one stdin."""

    parts: tuple[object, ...] = field(repr=False)  # bytes parts may be secrets: never in a repr

    def describe(self) -> str:
        return "; ".join(getattr(p, "describe", lambda p=p: f"{len(p)} bytes, not shown")() for p in self.parts)  # type: ignore[arg-type, misc]

    def write_to(self, write) -> None:  # noqa: ANN001 - a bytes sink
        for part in self.parts:
            if isinstance(part, (bytes, bytearray)):
                write(bytes(part))
            else:
                part.write_to(write)  # type: ignore[attr-defined]
