"""An interrupted run (Ctrl-C, SIGTERM) through the manager: nothing new starts, the work in
flight gets its grace and is then ended on its host (END_RUN with the run's ID, on a channel of
its own), the phase's finish still runs, and the report says where it stopped."""

from __future__ import annotations

import _thread
import json
import shlex
import threading
from pathlib import Path

from clusterctl.commands.base import Cmd
from clusterctl.config.loader import load_text
from clusterctl.phases import manager as manager_mod
from clusterctl.phases.manager import END_RUN, RECORD_PGID, Manager, Options, execute
from clusterctl.transport.ssh import RunResult

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"


class Hanging:
    """A host whose phase script runs until it is ended, as a remote `docker load` would."""

    def __init__(self, name: str, log: list):
        self.name, self.log, self.round_trips, self.bytes_sent = name, log, 0, 0
        self.ended = threading.Event()

    def run(self, command: str, timeout=None, stdin=None, watch=None) -> RunResult:
        self.round_trips += 1
        argv = shlex.split(command)
        if argv[2].startswith("# clusterctl probe"):
            return RunResult(0, FIXTURE.read_text(), "", 0.01)
        if argv[2] == END_RUN:
            self.log.append((self.name, "end", argv[4]))
            self.ended.set()
            return RunResult(0, "", "", 0.01)
        if not argv[2].startswith(RECORD_PGID):  # a clean-up: not recorded, so END_RUN never ends it
            self.log.append((self.name, "unrecorded", argv[4], argv[2]))
            return RunResult(0, "", "", 0.01)
        self.log.append((self.name, "script", argv[4], argv[2].removeprefix(RECORD_PGID)))
        if "sleep" in argv[2]:
            self.ended.wait(30)
            return RunResult(143, "", "Terminated", 1.0)
        return RunResult(0, "", "", 0.01)

    def close(self) -> None:
        pass


class SlowPhase:
    name = "slow"
    title = "a phase whose commands hang"

    def __init__(self) -> None:
        self.finished: list = []

    def plan(self, ctx, host, facts):
        return [Cmd(("sleep", "1000"), "wait a long time")]

    def finish(self, ctx, ran):
        self.finished.append(sorted(ran))
        return {h: [Cmd(("true",), "clean up")] for h in ran}


class NeverPhase:
    name = "never"
    title = "must not start after an interrupt"

    def plan(self, ctx, host, facts):
        raise AssertionError("planned after the interrupt")


def test_an_interrupt_ends_remote_work_runs_finish_and_starts_nothing_new(monkeypatch):
    monkeypatch.setattr(manager_mod, "GRACE_SECONDS", 0.3)
    cluster = load_text("name: c1\nhosts:\n  - {name: n1, address: 10.0.0.1}\n  - {name: n2, address: 10.0.0.2}\n", "c.yaml")
    log: list = []

    def connect(self: Manager) -> None:
        for name in self.reports:
            self.sessions[name] = Hanging(name, log)  # type: ignore[assignment]

    monkeypatch.setattr(Manager, "connect", connect)
    slow = SlowPhase()
    timer = threading.Timer(0.5, _thread.interrupt_main)  # Ctrl-C while both hosts run `sleep`
    timer.start()
    try:
        report = execute(cluster, [slow, NeverPhase()], {}, None, Options())  # type: ignore[arg-type]
    finally:
        timer.cancel()
    assert report.interrupted == "slow" and report.ended_on == ["n1", "n2"]
    scripts = [e for e in log if e[1] == "script"]
    run_ids = {e[2] for e in log if e[1] in ("script", "end", "unrecorded")}
    assert len(run_ids) == 1 and len(next(iter(run_ids))) == 16  # the one run's records, ended by ID
    assert sorted(e[0] for e in log if e[1] == "end") == ["n1", "n2"]
    assert slow.finished == [["n1", "n2"]]  # the phase's clean-up ran anyway
    # The clean-up, one per host, unrecorded: an interrupt being handled never ends it.
    assert sorted(e[0] for e in log if e[1] == "unrecorded" and e[3].rstrip().endswith("\ntrue")) == ["n1", "n2"]
    assert not any(e[3].rstrip().endswith("\ntrue") for e in scripts)
    for h in report.hosts:
        assert [(s.phase, s.status, s.message) for s in h.steps][-1] == ("slow", "failed", "interrupted: its remote commands were ended")
    from clusterctl.report.render import report_dict

    shown = report_dict(report)
    assert shown["interrupted"] == "slow" and shown["ended_on"] == ["n1", "n2"] and json.dumps(shown)


def test_end_run_ends_every_script_of_the_run_on_the_host_and_no_other(tmp_path):
    """Phases that run beside each other have scripts of the same run at once on one host: each
    records its own process group, and END_RUN ends them all, not another run's."""
    import os
    import subprocess
    import time

    env = dict(os.environ, HOME=str(tmp_path))

    def start(run_id: str) -> subprocess.Popen:
        return subprocess.Popen(["sh", "-c", RECORD_PGID + "sleep 30\n", "sh", run_id], env=env, start_new_session=True)

    mine, also_mine, other = start("r1"), start("r1"), start("r2")
    records = tmp_path / ".cache" / "clusterctl"
    deadline = time.monotonic() + 10
    while len(list(records.glob("run-*.pid"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(records.glob("run-r1-*.pid"))) == 2
    subprocess.run(["sh", "-c", END_RUN, "sh", "r1"], env=env, check=True, timeout=10)
    assert mine.wait(10) != 0 and also_mine.wait(10) != 0
    assert other.poll() is None
    other.kill()
    other.wait()
    assert not list(records.glob("run-r1-*.pid"))
