"""Progress on stderr as a run goes: a line per host step (off a terminal, or with -v), or a
live board with one row per host (on a terminal). Both are RunObservers (report/events.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from clusterctl.report.events import RemoteCommand
from clusterctl.report.model import Step
from rich.markup import escape

from clusterctl.report.render import STYLE, progress_line


VERBOSE_WIDTH = 400


class LineLog:
    """A line per host step as it ends; `verbose`: also each remote command as it starts and
    its time as it ends."""

    def __init__(self, console, verbose: bool = False):  # noqa: ANN001 - rich.Console, imported lazily
        self.console, self.verbose = console, verbose

    def step(self, host: str, step: Step) -> None:
        self.console.print(progress_line(host, step), soft_wrap=True)

    def phase_started(self, phase: str, hosts: Sequence[str]) -> None:
        pass

    def command_started(self, cmd: RemoteCommand) -> None:
        if self.verbose:
            # One line each, bounded (a script of many lines, the probe); `plan` prints them whole.
            line = " ".join(cmd.line.split())
            line = line if len(line) <= VERBOSE_WIDTH else line[: VERBOSE_WIDTH - 1] + "…"
            self.console.print(f"  [dim]{cmd.host} {cmd.phase}$[/dim] {escape(line)}", soft_wrap=True)

    def command_ended(self, cmd: RemoteCommand, seconds: float, ok: bool) -> None:
        if self.verbose:
            how = "done" if ok else "[bold red]failed[/bold red]"
            self.console.print(f"  [dim]{cmd.host} {cmd.phase}:[/dim] {how} in {seconds:.2f}s: {escape(cmd.description)}", soft_wrap=True)

    def sent(self, host: str, total_bytes: int) -> None:
        pass


@dataclass
class _Row:
    phase: str = "connect"
    doing: str = "connecting"
    running: bool = True
    result: str = ""
    result_style: str = ""
    sent: int = 0
    sent_since: float = 0.0
    sent_at_start: int = 0


class LiveBoard:
    """One row per host, redrawn a few times a second: the phase it is in, a spinner and what
    it runs or waits for (a leader, a check), the bytes sent and their rate, then its result.
    Use as a context manager; the board's last state stays on the terminal."""

    def __init__(self, console, hosts: Sequence[str]):  # noqa: ANN001 - rich.Console
        from rich.live import Live

        self.console = console
        self.rows = {h: _Row() for h in hosts}
        self._lock = threading.Lock()
        self._live = Live(self, console=console, refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveBoard:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for row in self.rows.values():
                row.running = False
        self._live.__exit__(*exc)

    def __rich__(self):  # noqa: ANN204 - a rich renderable
        from rich import box
        from rich.spinner import Spinner
        from rich.table import Table

        # Fixed widths: a redraw never reflows the columns; host names are never cut.
        host_width = max([4, *(len(h) for h in self.rows)])
        phase_width, sent_width = 14, 17
        free = max(20, self.console.width - host_width - phase_width - sent_width - 1 - 5 * 2)
        now_width = min(40, free // 2)
        rest = free - now_width
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=False, padding=(0, 2, 0, 0))
        table.add_column("host", no_wrap=True, style="bold", min_width=host_width)
        table.add_column("phase", no_wrap=True, width=phase_width, overflow="ellipsis")
        table.add_column("", width=1, no_wrap=True)
        table.add_column("now", width=now_width, overflow="ellipsis", no_wrap=True)
        table.add_column("sent", width=sent_width, no_wrap=True, justify="right", overflow="ellipsis")
        table.add_column("result", width=rest, overflow="ellipsis", no_wrap=True)
        now = time.monotonic()
        with self._lock:
            for host, row in self.rows.items():
                spin = Spinner("dots", style="cyan") if row.running else ""
                result = f"[{row.result_style}]{escape(row.result)}[/]" if row.result and not row.running else ""
                table.add_row(host, row.phase, spin, escape(row.doing) if row.running else "", _sent(row, now), result)
        return table

    # -- RunObserver --------------------------------------------------------------------

    def step(self, host: str, step: Step) -> None:
        with self._lock:
            row = self.rows.setdefault(host, _Row())
            row.phase = step.phase
            row.running = False
            row.doing = ""
            row.result = f"{step.status} {step.message}".strip()
            row.result_style = STYLE.get(step.status, "")

    def phase_started(self, phase: str, hosts: Sequence[str]) -> None:
        with self._lock:
            for host in hosts:
                row = self.rows.setdefault(host, _Row())
                row.phase, row.running, row.doing = phase, True, "starting"

    def command_started(self, cmd: RemoteCommand) -> None:
        with self._lock:
            row = self.rows.setdefault(cmd.host, _Row())
            row.phase, row.running, row.doing = cmd.phase, True, cmd.description

    def command_ended(self, cmd: RemoteCommand, seconds: float, ok: bool) -> None:
        pass

    def sent(self, host: str, total_bytes: int) -> None:
        with self._lock:
            row = self.rows.setdefault(host, _Row())
            if not row.sent_since:
                row.sent_since, row.sent_at_start = time.monotonic(), row.sent
            row.sent = total_bytes


def _sent(row: _Row, now: float) -> str:
    if not row.sent:
        return ""
    text = _size(row.sent)
    took = now - row.sent_since if row.sent_since else 0.0
    if row.running and took > 0.5:
        text += f" {_size((row.sent - row.sent_at_start) / took)}/s"
    return text


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
