"""Runs `up` and `plan`: connect -> probe -> each phase, in parallel per host, results as data.

A host that fails a step is skipped by the later ones and named in the report; the others go
on. A dry run stops after planning and sends nothing but the read-only probe.
"""

from __future__ import annotations

import shlex
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from clusterctl.commands.base import Cmd, Script
from clusterctl.config.loader import Cluster
from clusterctl.errors import UserError, printable
from clusterctl.facts.parser import HostFacts, ProbeError, parse_probe_output, probe_script
from clusterctl.phases.base import Context, Inputs, Phase, PhaseError, PlanError, independent_hosts, rolling, wave
from clusterctl.transport.executor import DEFAULT_WORKERS, Outcome, run_parallel
from clusterctl.transport.ssh import Connector, Endpoint, KnownHosts, Session, SSHError, explain

OK, CHANGED, PLANNED, FAILED, SKIPPED = "ok", "changed", "planned", "failed", "skipped"

# How long commands already running may go on after Ctrl-C or SIGTERM before they are ended.
GRACE_SECONDS = 5.0
# Every remote script of a phase first records its process group in the SSH user's own cache
# dir ($1: the run's ID), so that an interrupted run can end it: closing a channel does not stop
# a remote command that is not writing (a wait, a `docker load` reading what was sent).
RECORD_PGID = r"""( p="${HOME:-/nonexistent}/.cache/clusterctl"; umask 077; mkdir -p "$p" && cut -d' ' -f5 "/proc/$$/stat" > "$p/run-$1.pid" ) 2>/dev/null
trap 'rm -f "${HOME:-/nonexistent}/.cache/clusterctl/run-$1.pid"' EXIT
"""
END_RUN = r"""p="${HOME:-/nonexistent}/.cache/clusterctl/run-$1.pid"
[ -r "$p" ] || exit 0
g=$(cat "$p"); case "$g" in '' | *[!0-9]*) exit 0 ;; esac
rm -f "$p"
kill -TERM -- "-$g" 2>/dev/null || true
"""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: no new work is started, work in flight was given GRACE_SECONDS and
    then ended on its host; the phases' clean-up and the lock's release still run."""


@dataclass
class Step:
    phase: str
    status: str
    message: str = ""
    seconds: float = 0.0
    commands: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.status in (CHANGED, PLANNED)


@dataclass
class HostReport:
    name: str
    address: str
    steps: list[Step] = field(default_factory=list)
    round_trips: int = 0
    # Bytes sent on stdin (image layers, secrets): what crossed the wire for this host.
    bytes_sent: int = 0
    facts: HostFacts | None = None

    @property
    def failed(self) -> Step | None:
        return next((s for s in self.steps if s.status == FAILED), None)

    @property
    def ok(self) -> bool:
        return self.failed is None


@dataclass
class RunReport:
    cluster: str
    dry_run: bool
    phases: list[str]
    hosts: list[HostReport]
    seconds: float = 0.0
    # Failures that belong to no one host, one line each (a bastion that could not be opened).
    errors: list[str] = field(default_factory=list)
    # Phases refused for the whole cluster (PhaseError), with their one-line reason.
    refused: dict[str, str] = field(default_factory=dict)
    # What operator-side steps changed beyond the hosts (e.g. Consul's ACLs), one line each.
    notes: list[str] = field(default_factory=list)
    # The step the run was in when Ctrl-C or SIGTERM stopped it (None: it was not stopped), and
    # the hosts whose remote commands were then ended.
    interrupted: str | None = None
    ended_on: list[str] = field(default_factory=list)

    @property
    def failed_hosts(self) -> list[HostReport]:
        return [h for h in self.hosts if not h.ok]

    @property
    def ok(self) -> bool:
        return not self.failed_hosts

    @property
    def changed(self) -> bool:
        return any(s.changed for h in self.hosts for s in h.steps)


Progress = Callable[[str, Step], None]


@dataclass
class Options:
    accept_new_host_keys: bool = False
    workers: int = DEFAULT_WORKERS
    dry_run: bool = False
    # Limit the run to these host names (None: all).
    only: frozenset[str] | None = None


def _phase_notes(phase: Phase, ctx: Context) -> list[str]:
    """The phase's cluster-wide remarks on its plan (e.g. the moves a rebalance would make)."""
    fn = getattr(phase, "notes", None)
    if fn is None:
        return []
    try:
        return list(fn(ctx))
    except PhaseError:  # the phase's check has said it already
        return []


class Manager:
    """Owns the sessions of one run; use as a context manager so connections always close."""

    def __init__(
        self,
        cluster: Cluster,
        endpoints: dict[str, Endpoint],
        known_hosts: KnownHosts,
        options: Options,
        progress: Progress | None = None,
        inputs: Inputs | None = None,
    ):
        self.cluster = cluster
        self.inputs = inputs or Inputs()
        self.endpoints = endpoints
        self.known_hosts = known_hosts
        self.options = options
        self.progress = progress or (lambda host, step: None)
        self.sessions: dict[str, Session] = {}
        # One connection per bastion, shared by the hosts behind it; closed once, in __exit__.
        self.connector = Connector(known_hosts)
        self.errors: list[str] = []
        hosts = [h for h in cluster.hosts if options.only is None or h.name in options.only]
        self.reports = {h.name: HostReport(h.name, h.address) for h in hosts}
        self.refused: dict[str, str] = {}
        # What phases said about the cluster while planning (phase `notes`), one line each.
        self.phase_notes: list[str] = []
        # Per phase name: an operator-side step run before each of its passes (see execute).
        self.settle: dict[str, Callable[[Context, Callable], Inputs]] = {}
        # Interrupts (Ctrl-C, SIGTERM): this run's ID names its remote scripts' records; which
        # hosts have work running now; where the run was; whose work was ended.
        self.run_id = uuid.uuid4().hex[:16]
        self.in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()
        self.interrupted = False
        self.current = "connect"
        self.ended_on: list[str] = []
        self.in_pass: list[str] = []

    def consul_api(self, name: str, token: str | None = None):
        """A py-consul client on the host's Consul agent, through its SSH session."""
        from clusterctl.transport.tunnel import consul_api

        return consul_api(self.sessions[name], token)

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        for session in self.sessions.values():
            try:
                session.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self.connector.close()

    # -- steps --------------------------------------------------------------------------

    def _alive(self) -> list[str]:
        return [n for n, r in self.reports.items() if r.ok and n in self.sessions]

    def _record(self, name: str, step: Step) -> None:
        self.reports[name].steps.append(step)
        self.progress(name, step)

    def _parallel(self, names: Sequence[str], work: Callable[[str], object], timeout: float | None = None, force: bool = False):
        """work(name) on each host at once. Once the run is interrupted, nothing new starts
        (`force`: clean-up that must run anyway); an interrupt while waiting ends the work."""
        if self.interrupted and not force:
            raise Interrupted()

        def tracked(name: str):
            with self._in_flight_lock:
                self.in_flight.add(name)
            try:
                return work(name)
            finally:
                with self._in_flight_lock:
                    self.in_flight.discard(name)

        try:
            return run_parallel(names, tracked, workers=self.options.workers, timeout=timeout)
        except KeyboardInterrupt:
            if not self.interrupted:  # a second Ctrl-C (e.g. during clean-up) waits no more
                self.stop()
            raise Interrupted() from None

    def stop(self) -> None:
        """Stop the run: work in flight gets GRACE_SECONDS, then its remote process group is
        ended (END_RUN, on a channel of its own); a second Ctrl-C ends clusterctl at once."""
        self.interrupted = True
        deadline = time.monotonic() + GRACE_SECONDS
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.1)
        with self._in_flight_lock:
            left = sorted(n for n in self.in_flight if n in self.sessions)
        if not left:
            return
        end = shlex.join(["sh", "-c", END_RUN, "sh", self.run_id])
        run_parallel(left, lambda n: self.sessions[n].run(end, timeout=10), workers=self.options.workers, timeout=15)
        self.ended_on = left
        deadline = time.monotonic() + GRACE_SECONDS
        while self.in_flight and time.monotonic() < deadline:  # their channels close as they end
            time.sleep(0.1)

    def _remote(self, script: Script) -> str:
        """The command line of a phase's script on a host: recorded first, so it can be ended."""
        return shlex.join(["sh", "-c", RECORD_PGID + script.render(), "sh", self.run_id])

    def connect(self) -> None:
        def work(name: str) -> Session:
            ep = self.endpoints[name]
            try:
                return self.connector.open(ep)
            except Exception as exc:  # noqa: BLE001 - reworded for the operator, then kept as data
                raise SSHError(explain(exc, ep, self.known_hosts.path)) from None

        budget = self.cluster.spec.ssh.connect_timeout * 3 + 5
        results = self._parallel(list(self.reports), work, timeout=budget)
        for name, out in results.items():
            if out.ok:
                self.sessions[name] = out.value  # type: ignore[assignment]
                self._record(name, Step("connect", OK, self.endpoints[name].label, out.seconds))
            else:
                self._record(name, Step("connect", FAILED, _strip_kind(out), out.seconds))
        self.errors = self.connector.failures

    def probe(self, names: Sequence[str] | None = None, label: str = "probe") -> None:
        script = shlex.join(["sh", "-c", probe_script()])
        timeout = self.cluster.spec.ssh.command_timeout

        def work(name: str) -> HostFacts:
            result = self.sessions[name].run(script, timeout=timeout)
            if not result.ok:
                raise ProbeError(f"probe failed: {result.tail()}")
            return parse_probe_output(result.stdout)

        results = self._parallel(list(names if names is not None else self._alive()), work, timeout=timeout + 5)
        for name, out in results.items():
            self.reports[name].round_trips = self.sessions[name].round_trips
            if out.ok:
                self.reports[name].facts = out.value  # type: ignore[assignment]
                f = out.value
                msg = f"{f.os_pretty or f.os_id} {f.arch}, docker {f.docker.server_version or ('stopped' if f.docker.installed else 'absent')}"
                if f.docker.server_version and f.docker.image_store != "classic":
                    msg += f" ({f.docker.image_store} image store)"
                if f.skipped_nameservers:
                    skipped = ", ".join(repr(v) for v in f.skipped_nameservers)
                    msg = one_line(f"{msg}; /etc/resolv.conf: skipped nameserver {skipped} (not an address)")
                if label == "probe":
                    self._record(name, Step(label, OK, msg, out.seconds))
            else:
                self._record(name, Step(label, FAILED, _strip_kind(out), out.seconds))

    def context(self, lookups: dict[str, str] | None = None, pass_index: int = 0) -> Context:
        facts = {n: r.facts for n, r in self.reports.items() if r.facts is not None}
        outside = frozenset(h.name for h in self.cluster.hosts if h.name not in self.reports)
        return Context(self.cluster, facts, self.inputs, lookups or {}, outside, pass_index)

    def check(self, phase: Phase) -> str | None:
        """The phase's cluster-wide check (PhaseError) as a one-line reason, or None."""
        fn = getattr(phase, "check", None)
        if fn is None:
            return None
        try:
            fn(self.context())
        except PhaseError as exc:
            return str(exc)
        return None

    def preflight(self, phases: Sequence[Phase]) -> bool:
        """Every phase's check, before anything runs: a refusal stops the whole run."""
        for phase in phases:
            why = self.check(phase)
            if why is not None:
                self.refused[phase.name] = why
                for name in self._alive():
                    self._record(name, Step(phase.name, FAILED, why))
                return False
        return True

    def _lookups(self, phase: Phase, ctx: Context) -> dict[str, str]:
        """Run the phase's read-only lookups; their stdout is kept in memory only, never reported."""
        fn = getattr(phase, "lookups", None)
        if fn is None or self.options.dry_run:
            return {}
        alive = set(self._alive())
        wanted = {h: c for h, c in fn(ctx).items() if h in alive}
        if not wanted:
            return {}
        timeout = self.cluster.spec.ssh.command_timeout

        def work(name: str):
            script = Script((wanted[name],))
            return self.sessions[name].run(self._remote(script), timeout=timeout)

        results = self._parallel(list(wanted), work, timeout=timeout + 5)
        for name in results:
            self.reports[name].round_trips = self.sessions[name].round_trips
        return {n: out.value.stdout for n, out in results.items() if out.ok and out.value.ok}  # type: ignore[union-attr]

    def run_phase(self, phase: Phase, more_phases_follow: bool) -> None:
        """Plan and run one phase: one pass, or several (`passes`), each planned from fresh facts;
        then the phase's `finish`, however the passes ended."""
        ran: dict[str, list[Cmd]] = {}
        try:
            self._run_passes(phase, more_phases_follow, ran)
        finally:
            self._finish(phase, ran)

    def _finish(self, phase: Phase, ran: dict[str, list[Cmd]]) -> None:
        """The phase's clean-up after its passes, also after a failure: `finish(ctx, ran)`
        returns commands by host from what each host ran (e.g. the filebox relay is removed)."""
        fn = getattr(phase, "finish", None)
        if fn is None or self.options.dry_run or not ran:
            return
        alive = set(self.sessions)
        todo = {h: cmds for h, cmds in fn(self.context(), ran).items() if cmds and h in alive}
        timeout = self.cluster.spec.ssh.command_timeout

        def work(name: str):
            script = Script(tuple(todo[name]))
            return self.sessions[name].run(self._remote(script), timeout=timeout)

        for name, out in self._parallel(list(todo), work, timeout=timeout + 5, force=True).items():
            self.reports[name].round_trips = self.sessions[name].round_trips
            if not out.ok or not out.value.ok:  # type: ignore[union-attr]
                why = _strip_kind(out) if not out.ok else out.value.tail(2)  # type: ignore[union-attr]
                self._record(name, Step(phase.name, FAILED, f"clean-up failed: {one_line(why)}"))

    def _run_passes(self, phase: Phase, more_phases_follow: bool, ran: dict[str, list[Cmd]]) -> None:
        """The passes, then one step per host recorded, also when the run is interrupted: the
        hosts whose commands were running then are named."""
        steps: dict[str, Step] = {}
        recorded: set[str] = set()
        self.current = phase.name
        try:
            self._passes(phase, more_phases_follow, ran, steps, recorded)
        except Interrupted:
            for name in self.in_pass:
                note = "interrupted: its remote commands were ended" if name in self.ended_on else "interrupted while it ran"
                steps[name] = _merge(steps.get(name), Step(phase.name, FAILED, note))
            raise
        finally:
            self.in_pass = []
            for name in self.reports:
                if name in steps and name not in recorded:
                    self._record(name, steps[name])

    def _passes(
        self, phase: Phase, more_phases_follow: bool, ran: dict[str, list[Cmd]], steps: dict[str, Step], recorded: set[str]
    ) -> None:
        passes = max(1, int(getattr(phase, "passes", 1)))
        waiting: list[str] = []
        timeout = self.cluster.spec.ssh.command_timeout
        settle = self.settle.get(phase.name)
        for n in range(passes):
            if settle is not None:
                # The phase's operator-side step before each pass (consul: its ACLs), from the
                # latest facts; a refusal stops the phase, one line.
                try:
                    self.inputs = settle(self.context(), self.consul_api)
                except UserError as exc:
                    self.refused[phase.name] = str(exc)
                    for name in self._alive():
                        steps[name] = _merge(steps.get(name), Step(phase.name, FAILED, str(exc)))
                    break
            why = self.check(phase)
            if why is not None:
                self.refused[phase.name] = why
                for name in self._alive():
                    steps[name] = _merge(steps.get(name), Step(phase.name, FAILED, why))
                break
            ctx = self.context(pass_index=n)
            ctx = self.context(self._lookups(phase, ctx), pass_index=n)
            plans: dict[str, list[Cmd]] = {}
            waves: dict[str, int] = {}
            one_at_a_time: list[str] = []
            for name in self._alive():
                host = self.cluster.spec.host(name)
                try:
                    plans[name] = phase.plan(ctx, host, ctx.facts[name])
                    if plans[name]:
                        waves[name] = wave(phase, ctx, host, ctx.facts[name])
                        if rolling(phase, ctx, host, ctx.facts[name]):
                            one_at_a_time.append(name)
                except PlanError as exc:
                    # Recorded now: a failed host is skipped by the rest of the run.
                    self._record(name, _merge(steps.get(name), Step(phase.name, FAILED, str(exc))))
                    recorded.add(name)
                except Exception as exc:  # noqa: BLE001 - one host's odd facts never stop the others
                    why = one_line(f"could not plan this host ({type(exc).__name__}: {exc})")
                    self._record(name, _merge(steps.get(name), Step(phase.name, FAILED, why)))
                    recorded.add(name)
            if n == 0:
                self.phase_notes += _phase_notes(phase, ctx)
            todo = [n for n, cmds in plans.items() if cmds]
            for name in plans:
                if name not in todo and name not in steps and name not in recorded:
                    steps[name] = Step(phase.name, OK, "unchanged")
            waiting = []
            if not todo:
                break
            if self.options.dry_run:
                for name in todo:
                    rendered = [c.display() for c in plans[name]]
                    steps[name] = Step(phase.name, PLANNED, _summary(plans[name]), commands=rendered)
                break
            first = min(waves[n] for n in todo)
            now = [n for n in todo if waves[n] == first]
            waiting = [n for n in todo if waves[n] != first]

            def work(name: str):
                script = Script(tuple(plans[name]))
                return self.sessions[name].run(self._remote(script), timeout=timeout, stdin=script.stdin)

            for name in now:
                ran.setdefault(name, []).extend(plans[name])
            self.in_pass = list(now)
            together = [n for n in now if n not in one_at_a_time]
            results = self._parallel(together, work, timeout=timeout + 5) if together else {}
            rolling_now = [n for n in now if n in one_at_a_time]
            batch = max(1, int(getattr(phase, "rolling_batch", lambda _ctx: 1)(ctx)))
            for i in range(0, len(rolling_now), batch):  # rolling: each batch waits for the cluster first
                group = rolling_now[i : i + batch]
                results.update(self._parallel(group, work, timeout=timeout + 5))
                if any(not results[n].ok or not results[n].value.ok for n in group):  # type: ignore[union-attr]
                    break  # stop rolling: the others keep what they run
            self.in_pass = []
            failed = False
            for name, out in results.items():
                rendered = [c.display() for c in plans[name]]
                self.reports[name].round_trips = self.sessions[name].round_trips
                self.reports[name].bytes_sent = self.sessions[name].bytes_sent
                if out.ok and out.value.ok:  # type: ignore[union-attr]
                    step = Step(phase.name, CHANGED, _summary(plans[name]), out.seconds, rendered)
                else:
                    why = _strip_kind(out) if not out.ok else out.value.tail(2)  # type: ignore[union-attr]
                    step = Step(phase.name, FAILED, why, out.seconds, rendered)
                    failed = True
                steps[name] = _merge(steps.get(name), step)
            for name in now:
                if name not in results:
                    steps[name] = _merge(steps.get(name), Step(phase.name, SKIPPED, "rolling change stopped: an earlier host failed"))
            changed = [n for n in now if n in results and steps[n].status == CHANGED]
            if failed and waiting:
                for name in waiting:
                    steps[name] = _merge(steps.get(name), Step(phase.name, SKIPPED, "not started: an earlier wave failed"))
                waiting = []
            if failed and passes > 1 and independent_hosts(phase, ctx):
                # The others go on to their next pass; the failed ones are out of the run now.
                for name in results:
                    if steps[name].status == FAILED:
                        self._record(name, steps[name])
                        recorded.add(name)
            elif failed and passes > 1:
                break
            if not changed:
                break
            if n < passes - 1:
                # Facts are re-read from the hosts, never edited by hand; a later pass may
                # depend on any host's view (a swarm manager's node list), so all are read.
                self._reprobe(list(self._alive()), phase)
            elif more_phases_follow:
                self._reprobe(changed if passes == 1 else list(self._alive()), phase)
        for name in waiting:
            steps[name] = _merge(steps.get(name), Step(phase.name, FAILED, f"not reached within {passes} passes"))

    def _reprobe(self, names: list[str], phase: Phase) -> None:
        # Hosts failed in this phase are not alive any more; their failure is already noted.
        if names:
            self.probe(names, label=f"{phase.name}:reprobe")


def one_line(text: str, limit: int = 500) -> str:
    """Text from a host or an exception, safe for a terminal: one line, control characters
    escaped, bounded."""
    safe = printable(" ".join(text.split()))
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


def _merge(old: Step | None, new: Step) -> Step:
    """One step per host per phase, however many passes it took."""
    if old is None or (old.status == OK and not old.commands):
        return new
    status = FAILED if FAILED in (old.status, new.status) else new.status
    message = new.message if new.status == FAILED else "; ".join(m for m in (old.message, new.message) if m)
    return Step(old.phase, status, message, old.seconds + new.seconds, old.commands + new.commands)


def _summary(cmds: list[Cmd]) -> str:
    return "; ".join(c.description or c.argv[0] for c in cmds)


def _strip_kind(out: Outcome) -> str:
    text = out.error or ""
    for prefix in ("SSHError: ", "ProbeError: ", "TimeoutError: ", "HostKeyUnknown: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def execute(
    cluster: Cluster,
    phases: Sequence[Phase],
    endpoints: dict[str, Endpoint],
    known_hosts: KnownHosts,
    options: Options,
    progress: Progress | None = None,
    inputs: Inputs | None = None,
    prepare: Callable[[Context, Callable], Inputs] | None = None,
    settle: Mapping[str, Callable[[Context, Callable], Inputs]] | None = None,
    lock: Callable[[Context, Callable], AbstractContextManager] | None = None,
) -> RunReport:
    """`prepare`, when given, is an operator-side step right after the probe: it returns the
    run's Inputs from what the probe found (e.g. the gossip key, made only when no host runs
    Consul of the cluster), or raises a UserError to refuse the whole run, nothing sent yet.
    `settle` maps a phase name to such a step run before each pass of that phase. Both get the
    context and `consul_api(host)`, a py-consul client on that host's agent through SSH.
    `lock`, when given, is held from right after `prepare` to the end of the phases (the
    cluster's own lock in Consul; it raises LockHeld to refuse)."""
    t0 = time.monotonic()
    with Manager(cluster, endpoints, known_hosts, options, progress, inputs) as m:
        try:
            m.connect()
            m.current = "probe"
            m.probe()
            m.settle = dict(settle or {})
            if prepare is not None:
                m.current = "prepare"
                m.inputs = prepare(m.context(), m.consul_api)
            with lock(m.context(), m.consul_api) if lock is not None else nullcontext():
                if m.preflight(phases):
                    for i, phase in enumerate(phases):
                        m.run_phase(phase, more_phases_follow=i < len(phases) - 1)
        except (Interrupted, KeyboardInterrupt):
            # Stopped: what ran is in the report, the lock is released, phases cleaned up.
            if not m.interrupted:
                m.stop()
        return RunReport(
            cluster=cluster.name,
            dry_run=options.dry_run,
            phases=["connect", "probe", *[p.name for p in phases]],
            hosts=list(m.reports.values()),
            seconds=time.monotonic() - t0,
            errors=list(m.errors),
            refused=dict(m.refused),
            notes=[*m.inputs.notes, *m.phase_notes],
            interrupted=m.current if m.interrupted else None,
            ended_on=list(m.ended_on),
        )
