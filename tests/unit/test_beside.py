"""Phases that need nothing of each other run at the same time (`beside`): the filebox ships
while the network forms, each host's two scripts at once; the report keeps one step per host
per phase; the filebox waits for the network when the hosts talk over the WireGuard mesh."""

from __future__ import annotations

import json
import shlex
import threading
from pathlib import Path

from clusterctl.commands.base import Cmd
from clusterctl.config.loader import load_text
from clusterctl.phases.base import Context, Inputs
from clusterctl.phases.filebox import FileboxPhase
from clusterctl.phases.manager import RECORD_PGID, Manager, Options, _groups, execute
from clusterctl.transport.ssh import RunResult

FIXTURE = (Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json").read_text()
CLUSTER = load_text("name: c1\nhosts:\n  - {name: n1, address: 10.0.0.1}\n  - {name: n2, address: 10.0.0.2}\n", "c.yaml")


class Host:
    def __init__(self, name: str, both_started: threading.Barrier):
        self.name, self.both, self.round_trips, self.bytes_sent = name, both_started, 0, 0

    def run(self, command: str, timeout=None, stdin=None, watch=None) -> RunResult:
        self.round_trips += 1
        argv = shlex.split(command)
        if argv[2].startswith("# clusterctl probe"):
            return RunResult(0, FIXTURE, "", 0.01)
        assert argv[2].startswith(RECORD_PGID)
        self.both.wait(5)  # the other phase's script must be running at the same time
        return RunResult(0, "", "", 0.01)

    def close(self) -> None:
        pass


class Step:
    def __init__(self, name: str, beside: tuple[str, ...] = ()):
        self.name, self.title, self._beside = name, name, beside

    def beside(self, ctx):
        return self._beside

    def plan(self, ctx, host, facts):
        return [Cmd(("true",), f"{self.name} on {host.name}")]


def test_a_phase_beside_the_one_before_runs_at_the_same_time_on_each_host(monkeypatch):
    barriers = {"n1": threading.Barrier(2), "n2": threading.Barrier(2)}

    def connect(self: Manager) -> None:
        for name in self.reports:
            self.sessions[name] = Host(name, barriers[name])  # type: ignore[assignment]

    monkeypatch.setattr(Manager, "connect", connect)
    network, filebox, after = Step("network"), Step("filebox", beside=("network",)), Step("after")
    assert [([p.name for p in g], follow) for g, follow in _groups([network, filebox, after], None)] == [
        (["network", "filebox"], True), (["after"], False),
    ]  # fmt: skip
    report = execute(CLUSTER, [network, filebox], {}, None, Options())  # type: ignore[arg-type]
    assert report.ok, [(h.name, [(s.phase, s.status, s.message) for s in h.steps]) for h in report.hosts]
    for h in report.hosts:
        assert sorted(s.phase for s in h.steps if s.phase in ("network", "filebox")) == ["filebox", "network"]
        assert all(s.status == "changed" for s in h.steps if s.phase in ("network", "filebox"))


def test_the_filebox_waits_for_the_network_when_hosts_talk_over_the_mesh(tmp_path):
    text = "name: c1\nnetwork: {driver: wireguard}\nhosts:\n  - {name: n1, address: 10.0.0.1, labels: {provider: a}}\n  - {name: n2, address: 10.0.0.2, labels: {provider: b}}\n"
    mesh = Context(load_text(text, "c.yaml"), {}, Inputs())
    assert FileboxPhase().beside(mesh) == ()
    assert FileboxPhase().beside(Context(CLUSTER, {}, Inputs())) == ("network",)


class Blocking:
    """Every script blocks until END_RUN (as a remote `docker load` or a slow read would)."""

    def __init__(self, name: str):
        from clusterctl.phases.manager import END_RUN

        self.name, self.end_run, self.round_trips, self.bytes_sent = name, END_RUN, 0, 0
        self.ended = threading.Event()

    def run(self, command: str, timeout=None, stdin=None, watch=None) -> RunResult:
        self.round_trips += 1
        argv = shlex.split(command)
        if argv[2].startswith("# clusterctl probe"):
            return RunResult(0, FIXTURE, "", 0.01)
        if argv[2] == self.end_run:
            self.ended.set()
            return RunResult(0, "", "", 0.01)
        self.ended.wait(30)
        return RunResult(143, "", "Terminated", 0.01)

    def close(self) -> None:
        pass


class Reading(Step):
    """A phase still reading (its lookups) when the run is stopped: it ran no command yet."""

    def lookups(self, ctx):
        return {h.name: Cmd(("read-tokens",)) for h in ctx.cluster.hosts}


def test_the_report_names_the_phase_whose_commands_ran_not_one_that_was_reading(monkeypatch):
    import _thread

    from clusterctl.phases import manager as manager_mod

    monkeypatch.setattr(manager_mod, "GRACE_SECONDS", 0.3)

    def connect(self: Manager) -> None:
        for name in self.reports:
            self.sessions[name] = Blocking(name)  # type: ignore[assignment]

    monkeypatch.setattr(Manager, "connect", connect)
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    try:
        report = execute(CLUSTER, [Reading("network"), Step("filebox", beside=("network",))], {}, None, Options())  # type: ignore[arg-type]
    finally:
        timer.cancel()
    assert report.interrupted == "filebox", report.interrupted
    assert report.ended_on == ["n1", "n2"]


class Finishing(Step):
    """A phase whose clean-up (`finish`) must run however its passes end (the filebox's relay)."""

    def __init__(self, name: str, beside: tuple[str, ...] = ()):
        super().__init__(name, beside)
        self.finished: list[str] = []

    def finish(self, ctx, ran):
        import time

        time.sleep(0.5)  # as the relay's removal takes a round trip
        self.finished += sorted(ran)
        return {}


class Slow:
    """Scripts that end on their own 0.5 s after they start (within the grace of an interrupt)."""

    def __init__(self, name: str):
        self.name, self.round_trips, self.bytes_sent = name, 0, 0

    def run(self, command: str, timeout=None, stdin=None, watch=None) -> RunResult:
        import time

        self.round_trips += 1
        if shlex.split(command)[2].startswith("# clusterctl probe"):
            return RunResult(0, FIXTURE, "", 0.01)
        time.sleep(0.5)
        return RunResult(0, "", "", 0.5)

    def close(self) -> None:
        pass


def test_a_ctrl_c_while_phases_run_beside_each_other_still_runs_each_ones_clean_up(monkeypatch):
    """A real SIGINT to the main thread while it waits for the phases' threads: every phase's
    `finish` has run when the run returns (Thread.join under Ctrl-C once let the run end first,
    leaving the filebox's relay running on its host)."""
    import signal

    def connect(self: Manager) -> None:
        for name in self.reports:
            self.sessions[name] = Slow(name)  # type: ignore[assignment]

    monkeypatch.setattr(Manager, "connect", connect)
    network, filebox = Finishing("network"), Finishing("filebox", beside=("network",))
    main = threading.main_thread().ident
    for delay in (0.15, 0.25, 0.35):  # the signal lands at a different moment of the wait each time
        network.finished.clear()
        filebox.finished.clear()
        timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        try:
            report = execute(CLUSTER, [network, filebox], {}, None, Options())  # type: ignore[arg-type]
        finally:
            timer.cancel()
        assert report.interrupted, delay
        assert network.finished == ["n1", "n2"] and filebox.finished == ["n1", "n2"], (delay, network.finished, filebox.finished)
