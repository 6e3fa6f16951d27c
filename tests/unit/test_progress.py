"""Progress as a run goes: step marks in a host's script tell which command runs now (read from
stderr in chunks of any size), the watch turns them into events, and the line log (-v) and the
live board show them."""

from __future__ import annotations

import io
import subprocess

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from clusterctl.commands.base import Cmd, Script, StepMarks, sh, strip_step_marks
from clusterctl.phases.manager import PassPlan
from clusterctl.report.events import RemoteCommand, ScriptWatch
from clusterctl.report.live import LineLog, LiveBoard
from clusterctl.report.model import CHANGED, FAILED, Step

SCRIPT = Script((Cmd(("echo", "out")), sh("echo warn >&2; printf partial >&2", "warn"), Cmd(("sh", "-c", "exit 3"), "fail")))


def _run_marked() -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", SCRIPT.render(marked=True)], capture_output=True)


def test_marks_go_to_stderr_and_leave_stdout_and_the_exit_code_alone():
    proc = _run_marked()
    assert proc.stdout == b"out\n" and proc.returncode == 3
    # What the commands wrote is kept whole, marks taken out, for error messages.
    assert strip_step_marks(proc.stderr.decode()) == "warn\npartial"
    assert Script(SCRIPT.cmds).render() == "set -e\n" + "\n".join(c.render() for c in SCRIPT.cmds) + "\n"


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_marks_split_over_any_chunks_are_each_seen_once_in_order(sizes):
    data = _MARKED_STDERR
    seen: list[int] = []
    marks = StepMarks(seen.append)
    at, i = 0, 0
    while at < len(data):
        n = sizes[i % len(sizes)]
        marks.feed(data[at : at + n])
        at, i = at + n, i + 1
    assert seen == [0, 1, 2]


_MARKED_STDERR = _run_marked().stderr


class Events:
    def __init__(self):
        self.log: list[tuple] = []

    def step(self, host, step):
        self.log.append(("step", host, step.phase, step.status))

    def phase_started(self, phase, hosts):
        self.log.append(("phase", phase, tuple(hosts)))

    def command_started(self, cmd):
        self.log.append(("start", cmd.host, cmd.description))

    def command_ended(self, cmd, seconds, ok):
        self.log.append(("end", cmd.host, cmd.description, ok))

    def sent(self, host, total):
        self.log.append(("sent", host, total))


def test_the_watch_ends_each_command_as_the_next_starts_and_the_last_on_close():
    events = Events()
    watch = ScriptWatch(events, "node1", "consul", SCRIPT.cmds, bytes_before=100)
    watch.stderr(_MARKED_STDERR[:5])
    watch.stderr(_MARKED_STDERR[5:])
    watch.sent(50)
    watch.close(False)
    assert events.log == [
        ("start", "node1", "echo"), ("end", "node1", "echo", True),
        ("start", "node1", "warn"), ("end", "node1", "warn", True),
        ("start", "node1", "fail"), ("sent", "node1", 150), ("end", "node1", "fail", False),
    ]  # fmt: skip


def test_a_pass_runs_its_lowest_wave_first():
    plan = PassPlan(cmds={"a": [Cmd(("true",))], "b": [], "c": [Cmd(("true",))], "d": [Cmd(("true",))]}, waves={"a": 1, "c": 0, "d": 0})
    assert plan.todo == ["a", "c", "d"]
    assert plan.first_wave() == (["c", "d"], ["a"])


def _console(width=80) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=False, highlight=False, no_color=True), out


def test_verbose_lines_name_the_host_the_command_and_its_time():
    console, out = _console(200)
    log = LineLog(console, verbose=True)
    cmd = RemoteCommand("node1", "consul", "docker run --name clusterctl-consul [x]", "start the server")
    log.command_started(cmd)
    log.command_ended(cmd, 1.234, True)
    log.step("node1", Step("consul", CHANGED, "start the server", 1.3))
    lines = out.getvalue().splitlines()
    assert lines[0] == "  node1 consul$ docker run --name clusterctl-consul [x]"
    assert lines[1] == "  node1 consul: done in 1.23s: start the server"
    assert lines[2].startswith("  node1 consul: changed start the server")
    quiet_console, quiet = _console(200)
    LineLog(quiet_console).command_started(cmd)
    assert quiet.getvalue() == ""


def test_the_board_shows_what_each_host_does_its_transfer_and_its_result():
    console, out = _console(200)
    board = LiveBoard(console, ["node1", "node2"])
    board.phase_started("filebox", ["node1", "node2"])
    board.command_started(RemoteCommand("node1", "filebox", "docker load", "load the filebox image"))
    board.sent("node1", 3 * 1024 * 1024)
    board.step("node2", Step("filebox", FAILED, "no space left on device"))
    console.print(board)
    text = out.getvalue()
    row1 = next(line for line in text.splitlines() if "node1" in line)
    row2 = next(line for line in text.splitlines() if "node2" in line)
    assert "filebox" in row1 and "load the filebox image" in row1 and "3.0 MB" in row1
    assert "failed no space left on device" in row2 and "filebox" in row2
