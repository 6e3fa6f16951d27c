"""What a run tells as it goes: the events a manager sends to whoever shows progress (the line
log, the live board, -v), and the watch that turns a running script's step marks into them.

Events come from worker threads, one host each; observers keep their own locks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from clusterctl.commands.base import Cmd, StepMarks
from clusterctl.report.model import Step


@dataclass(frozen=True)
class RemoteCommand:
    host: str
    phase: str
    # What -v prints: the rendered command, stdin named but never shown (Cmd.display).
    line: str
    # What the board shows: what the command does or waits for.
    description: str


class RunObserver(Protocol):
    def step(self, host: str, step: Step) -> None:
        """A host's phase ended (one step per host per phase, or a connect/probe failure)."""

    def phase_started(self, phase: str, hosts: Sequence[str]) -> None:
        """These hosts start their remote work of a phase (a pass, or a wave of it)."""

    def command_started(self, cmd: RemoteCommand) -> None: ...

    def command_ended(self, cmd: RemoteCommand, seconds: float, ok: bool) -> None: ...

    def sent(self, host: str, total_bytes: int) -> None:
        """Bytes sent to the host on stdin so far in this run (image layers, secrets)."""


class NullObserver:
    def step(self, host: str, step: Step) -> None:
        pass

    def phase_started(self, phase: str, hosts: Sequence[str]) -> None:
        pass

    def command_started(self, cmd: RemoteCommand) -> None:
        pass

    def command_ended(self, cmd: RemoteCommand, seconds: float, ok: bool) -> None:
        pass

    def sent(self, host: str, total_bytes: int) -> None:
        pass


class ScriptWatch:
    """Session.run's `watch` for one host's marked script: each step mark ends the command
    before it and starts the next; `close(ok)` ends the last one. A script without marks (the
    probe) is one command, started at once."""

    def __init__(self, observer: RunObserver, host: str, phase: str, cmds: Sequence[Cmd], bytes_before: int = 0):
        self.observer, self.host, self.phase = observer, host, phase
        self.commands = [RemoteCommand(host, phase, c.display(), c.description or c.argv[0]) for c in cmds]
        self.marks = StepMarks(self._on_step)
        self.current: tuple[RemoteCommand, float] | None = None
        self.total = bytes_before
        self._lock = threading.Lock()

    @classmethod
    def single(cls, observer: RunObserver, host: str, phase: str, line: str, description: str) -> ScriptWatch:
        watch = cls(observer, host, phase, ())
        watch._start(RemoteCommand(host, phase, line, description))
        return watch

    def _start(self, cmd: RemoteCommand) -> None:
        self.current = (cmd, time.monotonic())
        self.observer.command_started(cmd)

    def _end(self, ok: bool) -> None:
        if self.current is not None:
            cmd, t0 = self.current
            self.current = None
            self.observer.command_ended(cmd, time.monotonic() - t0, ok)

    def _on_step(self, index: int) -> None:
        if 0 <= index < len(self.commands):
            self._end(True)
            self._start(self.commands[index])

    # Session.run's watch protocol.
    def stderr(self, data: bytes) -> None:
        with self._lock:
            self.marks.feed(data)

    def sent(self, n: int) -> None:
        self.total += n
        self.observer.sent(self.host, self.total)

    def close(self, ok: bool) -> None:
        with self._lock:
            self._end(ok)
