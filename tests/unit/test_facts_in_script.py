"""A phase whose commands change only their own host's view ends each host's script with the
probe: the next phase plans from those facts with no probe of its own (one round trip less per
host and phase); facts that cannot be read mean a probe on its own; a multi-pass phase whose
joins change the others' views probes every host again after each pass."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from clusterctl.commands.base import Cmd
from clusterctl.config.loader import load_text
from clusterctl.phases.manager import FACTS_MARK, RECORD_PGID, Manager, Options, execute
from clusterctl.transport.ssh import RunResult

FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json").read_text())
CLUSTER = load_text("name: c1\nhosts:\n  - {name: n1, address: 10.0.0.1}\n  - {name: n2, address: 10.0.0.2}\n", "c.yaml")


class Host:
    """A host whose hostname is what its last phase script set (`set-name X`)."""

    def __init__(self, name: str, log: list, garbled: bool = False):
        self.name, self.log, self.garbled = name, log, garbled
        self.hostname, self.round_trips, self.bytes_sent = "before", 0, 0

    def facts(self) -> str:
        return json.dumps(FIXTURE | {"hostname": self.hostname})

    def run(self, command: str, timeout=None, stdin=None, watch=None) -> RunResult:
        self.round_trips += 1
        argv = shlex.split(command)
        if argv[2].startswith("# clusterctl probe"):
            self.log.append((self.name, "probe"))
            return RunResult(0, self.facts(), "", 0.01)
        script = argv[2].removeprefix(RECORD_PGID)
        self.log.append((self.name, "script"))
        out = ""
        for line in script.splitlines():
            if line.startswith("set-name "):
                self.hostname = shlex.split(line)[1]
        if FACTS_MARK in script:  # the script ends with the probe
            out += f"\n{FACTS_MARK}\n" + ("{not json" if self.garbled else self.facts())
        return RunResult(0, out, "", 0.01)

    def close(self) -> None:
        pass


class Rename:
    name = "rename"
    title = "set each host's name"

    def __init__(self, passes: int = 1, own: bool | None = None):
        self.passes = passes
        if own is not None:
            self.own_facts_suffice = own

    def plan(self, ctx, host, facts):
        return [] if facts.hostname == f"{host.name}-renamed" else [Cmd(("set-name", f"{host.name}-renamed"), "rename")]


class Seen:
    name = "seen"
    title = "plans from the facts"

    def __init__(self):
        self.names: dict[str, str] = {}

    def plan(self, ctx, host, facts):
        self.names[host.name] = facts.hostname
        return []


def _run(monkeypatch, phases, garbled=()):
    log: list = []

    def connect(self: Manager) -> None:
        for name in self.reports:
            self.sessions[name] = Host(name, log, name in garbled)  # type: ignore[assignment]

    monkeypatch.setattr(Manager, "connect", connect)
    report = execute(CLUSTER, phases, {}, None, Options())  # type: ignore[arg-type]
    return report, log


def test_the_next_phase_plans_from_the_facts_the_script_read_with_no_probe_of_its_own(monkeypatch):
    seen = Seen()
    report, log = _run(monkeypatch, [Rename(), seen])
    assert report.ok and seen.names == {"n1": "n1-renamed", "n2": "n2-renamed"}
    assert sorted(log) == sorted([("n1", "probe"), ("n2", "probe"), ("n1", "script"), ("n2", "script")])
    assert [h.round_trips for h in report.hosts] == [2, 2]


def test_facts_that_cannot_be_read_mean_a_probe_on_its_own(monkeypatch):
    seen = Seen()
    report, log = _run(monkeypatch, [Rename(), seen], garbled=("n2",))
    assert report.ok and seen.names == {"n1": "n1-renamed", "n2": "n2-renamed"}
    assert log.count(("n2", "probe")) == 2 and log.count(("n1", "probe")) == 1


def test_a_multi_pass_phase_whose_hosts_change_the_others_views_probes_every_host(monkeypatch):
    seen = Seen()
    report, log = _run(monkeypatch, [Rename(passes=2), seen])
    assert report.ok and seen.names == {"n1": "n1-renamed", "n2": "n2-renamed"}
    # The first probe, then one after the pass that changed; the second pass finds nothing.
    assert log.count(("n1", "probe")) == 2 and log.count(("n2", "probe")) == 2


def test_the_last_phase_reads_no_facts_it_would_not_use(monkeypatch):
    report, log = _run(monkeypatch, [Rename()])
    assert report.ok and [h.round_trips for h in report.hosts] == [2, 2]


def test_after_a_pass_only_the_watchers_that_saw_another_host_change_are_probed_again():
    from clusterctl.phases.base import reads_own_facts, reprobe_after_pass

    class Every:  # no word on watchers: every host is probed again
        passes = 3

    class Own:
        passes = 3
        own_facts_suffice = True

    class Swarm:
        passes = 3

        def watchers(self, ctx, changed):
            return frozenset({"a", "b"}) | frozenset(changed)

    class Unsure(Swarm):
        def watchers(self, ctx, changed):
            return None

    alive = ["a", "b", "c"]
    assert reprobe_after_pass(Every(), None, ["a"], {"a": object()}, alive) == alive
    assert reprobe_after_pass(Own(), None, ["a", "c"], {"a": object()}, alive) == ["c"]  # c printed no facts
    # a ran alone: b (a member) saw it, a printed its own facts, c watches nothing.
    assert reprobe_after_pass(Swarm(), None, ["a"], {"a": object()}, alive) == ["b"]
    # a and c ran: each saw the other; c is a watcher now that it ran (it may have joined).
    assert reprobe_after_pass(Swarm(), None, ["a", "c"], {"a": object(), "c": object()}, alive) == ["a", "b", "c"]
    assert reprobe_after_pass(Unsure(), None, ["a"], {"a": object()}, alive) == alive
    assert [reads_own_facts(p, None) for p in (Every(), Own(), Swarm(), Unsure())] == [False, True, True, False]


def test_hosts_an_operator_side_step_changed_are_probed_again_before_the_phase_plans(monkeypatch):
    """E.g. Consul's ACL settle made an agent's token: that host's probe reads raft now. Probed
    once more (n2 only), before the phase plans from its facts; not again on the next pass."""
    from dataclasses import replace

    log: list = []
    seen = Seen()
    calls = []

    def settle(ctx, consul_api):
        calls.append(len(log))
        return replace(ctx.inputs, reprobe=frozenset({"n2"}) if len(calls) == 1 else frozenset())

    def connect(self: Manager) -> None:
        for name in self.reports:
            self.sessions[name] = Host(name, log)  # type: ignore[assignment]

    monkeypatch.setattr(Manager, "connect", connect)
    report = execute(CLUSTER, [seen], {}, None, Options(), settle={"seen": settle})  # type: ignore[arg-type]
    assert report.ok and calls == [2]
    assert sorted(log[:2]) == [("n1", "probe"), ("n2", "probe")] and log[2:] == [("n2", "probe")]


def _with_lock(monkeypatch, phases, waited=False, dry_run=False):
    """execute() with a stand-in for the cluster's lock noting when it is entered (in `log`)."""
    from contextlib import contextmanager

    log: list = []

    @contextmanager
    def lock(ctx, consul_api):
        log.append(("lock", "enter"))
        yield waited
        log.append(("lock", "exit"))

    def connect(self: Manager) -> None:
        for name in self.reports:
            self.sessions[name] = Host(name, log)  # type: ignore[assignment]

    monkeypatch.setattr(Manager, "connect", connect)
    report = execute(CLUSTER, phases, {}, None, Options(dry_run=dry_run), lock=lock)  # type: ignore[arg-type]
    return report, log


def test_a_converged_run_never_takes_the_clusters_lock(monkeypatch):
    report, log = _with_lock(monkeypatch, [Seen()])
    assert report.ok and ("lock", "enter") not in log
    report, log = _with_lock(monkeypatch, [Rename()], dry_run=True)
    assert report.ok and ("lock", "enter") not in log and ("n1", "script") not in log


def test_the_lock_is_taken_once_before_the_first_change_and_held_to_the_end(monkeypatch):
    report, log = _with_lock(monkeypatch, [Seen(), Rename(), Rename()])
    assert report.ok and log.count(("lock", "enter")) == 1 and log[-1] == ("lock", "exit")
    assert log.index(("lock", "enter")) < min(log.index(("n1", "script")), log.index(("n2", "script")))
    assert all(e[1] == "probe" for e in log[: log.index(("lock", "enter"))])  # only the first reads before it


def test_a_lock_that_had_to_wait_means_the_hosts_are_read_and_planned_again(monkeypatch):
    """Another run held it: what it changed is read before anything runs here."""
    seen = Seen()
    report, log = _with_lock(monkeypatch, [seen, Rename()], waited=True)
    assert report.ok and log.count(("lock", "enter")) == 1
    taken = log.index(("lock", "enter"))
    assert sorted(log[taken + 1 : taken + 3]) == [("n1", "probe"), ("n2", "probe")]  # read again
    assert log.count(("n1", "script")) == 1 and log.count(("n2", "script")) == 1
    for h in report.hosts:  # one step a phase, as in any run
        assert [s.phase for s in h.steps] == ["probe", "seen", "rename"], h.steps


def test_a_lock_held_by_another_run_refuses_the_whole_run_even_from_the_settle(monkeypatch):
    """The ACL settle's first Consul call takes the lock: another run holding it is LockHeld out
    of the run (exit 3), never a refusal of the phase, nor an agent to skip for the next."""
    from contextlib import contextmanager

    import pytest

    from clusterctl.errors import LockHeld

    @contextmanager
    def lock(ctx, consul_api):
        raise LockHeld("cluster 'c1' is busy: 'clusterctl up (the other)' holds it")
        yield

    asked = []

    def settle(ctx, consul_api):
        for name in ("n1", "n2"):
            try:
                consul_api(name)
            except LockHeld:
                raise
            except Exception:  # noqa: BLE001 - as the settle tries the next agent
                asked.append(name)
        return ctx.inputs

    log: list = []

    def connect(self: Manager) -> None:
        for name in self.reports:
            self.sessions[name] = Host(name, log)  # type: ignore[assignment]

    monkeypatch.setattr(Manager, "connect", connect)
    with pytest.raises(LockHeld, match="is busy"):
        execute(CLUSTER, [Seen()], {}, None, Options(), settle={"seen": settle}, lock=lock)  # type: ignore[arg-type]
    assert asked == [] and ("n1", "script") not in log
