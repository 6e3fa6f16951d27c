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
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace

from clusterctl.commands.base import Cmd, Script, sh, strip_step_marks
from clusterctl.config.loader import Cluster
from clusterctl.errors import LockHeld, UserError, printable
from clusterctl.facts.parser import HostFacts, ProbeError, parse_probe_output, probe_script
from clusterctl.phases.base import (
    Context,
    Inputs,
    Phase,
    PhaseError,
    PlanError,
    beside,
    independent_hosts,
    reads_own_facts,
    reprobe_after_pass,
    rolling,
    wave,
)
from clusterctl.report.events import NullObserver, RunObserver, ScriptWatch
from clusterctl.report.model import CHANGED, FAILED, OK, PLANNED, SKIPPED, HostReport, RunReport, Step, merge_step
from clusterctl.transport.executor import DEFAULT_WORKERS, Outcome, run_parallel
from clusterctl.transport.ssh import Connector, Endpoint, KnownHosts, Session, SSHError, explain

# How long commands already running may go on after Ctrl-C or SIGTERM before they are ended.
GRACE_SECONDS = 5.0
# Every remote script of a phase first records its process group in the SSH user's own cache
# dir ($1: the run's ID; one file per script), so that an interrupted run can end it: closing a channel does not stop
# a remote command that is not writing (a wait, a `docker load` reading what was sent).
# What a phase script prints before the probe it ends with (own_facts_suffice).
FACTS_MARK = "clusterctl-facts-follow"
RECORD_PGID = r"""( p="${HOME:-/nonexistent}/.cache/clusterctl"; umask 077; mkdir -p "$p" && cut -d' ' -f5 "/proc/$$/stat" > "$p/run-$1-$$.pid" ) 2>/dev/null
trap 'rm -f "${HOME:-/nonexistent}/.cache/clusterctl/run-$1-$$.pid"' EXIT
"""
# Every script of the run still recorded (phases that run beside each other: one file each).
END_RUN = r"""for p in "${HOME:-/nonexistent}/.cache/clusterctl/run-$1-"*.pid; do
	[ -r "$p" ] || continue
	g=$(cat "$p"); rm -f "$p"
	case "$g" in '' | *[!0-9]*) continue ;; esac
	# Not `kill -TERM -- -G`: dash (Debian's sh) takes `--` for a number and kills nothing.
	kill -TERM "-$g" 2>/dev/null || true
done
"""


class Replan(BaseException):
    """The cluster's lock was taken only after another run released it: what the probe read may
    have changed meanwhile, so the hosts are read again and the phases planned again. Not an
    Exception: steps that try the next agent on any error (the ACL settle) must let it through."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: no new work is started, work in flight was given GRACE_SECONDS and
    then ended on its host; the phases' clean-up and the lock's release still run."""


@dataclass
class PassPlan:
    """One pass of a phase: each live host's commands (empty: nothing to do), the wave of each
    host with commands (the lowest wave runs now, the others wait for a later pass), and the
    hosts that roll (one batch at a time)."""

    cmds: dict[str, list[Cmd]] = field(default_factory=dict)
    waves: dict[str, int] = field(default_factory=dict)
    rolling: set[str] = field(default_factory=set)

    @property
    def todo(self) -> list[str]:
        return [n for n, cmds in self.cmds.items() if cmds]

    def first_wave(self) -> tuple[list[str], list[str]]:
        """(the hosts that run now, the hosts that wait), in the file's order."""
        todo = self.todo
        first = min(self.waves[n] for n in todo)
        return [n for n in todo if self.waves[n] == first], [n for n in todo if self.waves[n] != first]


@dataclass
class PhaseSteps:
    """A phase's one step per host, merged over its passes; `recorded`: hosts whose step is in
    their report already (they failed early and are out of the run)."""

    phase: str
    by_host: dict[str, Step] = field(default_factory=dict)
    recorded: set[str] = field(default_factory=set)

    def add(self, name: str, step: Step) -> Step:
        self.by_host[name] = merge_step(self.by_host.get(name), step)
        return self.by_host[name]


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
        observer: RunObserver | None = None,
        inputs: Inputs | None = None,
    ):
        self.cluster = cluster
        self.inputs = inputs or Inputs()
        self.endpoints = endpoints
        self.known_hosts = known_hosts
        self.options = options
        self.observer = observer or NullObserver()
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
        # Per phase running now: the hosts whose commands of it run (phases may run beside
        # each other: `beside`).
        self.in_pass: dict[str, list[str]] = {}
        self.running: list[str] = []
        # The cluster's lock, taken before the run's first change (lock_factory; a converged run
        # never takes it) and held until the run ends (released before the sessions close).
        self.lock_factory: Callable[[], AbstractContextManager] | None = None
        self._locks = ExitStack()
        self._locked = self._waited = False
        self._locking = threading.Lock()

    def consul_api(self, name: str, token: str | None = None):
        """A py-consul client on the host's Consul agent, through its SSH session."""
        from clusterctl.transport.tunnel import consul_api

        return consul_api(self.sessions[name], token)

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._locks.close()  # through the sessions: before they close
        except Exception:  # noqa: BLE001 - the lock's release is best effort (its TTL ends it)
            pass
        for session in self.sessions.values():
            try:
                session.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self.connector.close()

    def ensure_locked(self) -> None:
        """Take the cluster's lock, once, before the run's first change; LockHeld when another
        run holds it past the wait. A lock that had to wait means Replan."""
        if self.lock_factory is None or self.options.dry_run:
            return
        with self._locking:
            if not self._locked:
                self._waited = bool(self._locks.enter_context(self.lock_factory()))
                self._locked = True
            if self._waited:  # every phase of this attempt stops (phases beside each other too)
                raise Replan()

    def locked_api(self, name: str, token: str | None = None):
        """consul_api for an operator-side step that may change Consul (the ACL settle): the
        cluster's lock first."""
        self.ensure_locked()
        return self.consul_api(name, token)

    def start_over(self) -> None:
        """Forget what the phases recorded and read every connected host again (Replan)."""
        for report in self.reports.values():
            report.steps = [s for s in report.steps if s.phase == "connect"]
        self.refused.clear()
        self.phase_notes.clear()
        self._waited = False
        self.probe([n for n in self.reports if n in self.sessions])

    # -- steps --------------------------------------------------------------------------

    def _alive(self) -> list[str]:
        return [n for n, r in self.reports.items() if r.ok and n in self.sessions]

    def _record(self, name: str, step: Step) -> None:
        self.reports[name].steps.append(step)
        self.observer.step(name, step)

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
            # Clean-up (`force`) is never work in flight that an interrupt ends: with phases
            # beside each other, one's clean-up may run while the interrupt is being handled.
            return run_parallel(names, work if force else tracked, workers=self.options.workers, timeout=timeout)
        except KeyboardInterrupt:
            if not self.interrupted:  # a second Ctrl-C (e.g. during clean-up) waits no more
                self.stop()
            raise Interrupted() from None

    def stop(self) -> None:
        """Stop the run: work in flight gets GRACE_SECONDS, then its remote process group is
        ended (END_RUN, on a channel of its own); a second Ctrl-C ends clusterctl at once."""
        self.interrupted = True
        # The report names the phases whose commands were running (of phases running beside
        # each other, not one that was only reading, e.g. the swarm's join tokens).
        busy = [p for p in self.running if self.in_pass.get(p)]
        if busy:
            self.current = ", ".join(busy)
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

    def _remote(self, script: Script, recorded: bool = True) -> str:
        """The command line of a phase's script on a host: recorded first, so it can be ended
        (not a clean-up: END_RUN must never end the removal of a relay)."""
        return shlex.join(["sh", "-c", (RECORD_PGID if recorded else "") + script.render(marked=True), "sh", self.run_id])

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
            watch = ScriptWatch.single(self.observer, name, label, "sh -c '# clusterctl probe ...'", "read-only probe")
            result = None
            try:
                result = self.sessions[name].run(script, timeout=timeout)
            finally:
                watch.close(result is not None and result.ok)
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
        results = self._run_scripts(phase.name, {h: [c] for h, c in wanted.items()})
        return {n: out.value.stdout for n, out in results.items() if out.ok and out.value.ok}  # type: ignore[union-attr]

    def _run_scripts(
        self, phase: str, cmds: Mapping[str, Sequence[Cmd]], force: bool = False, fresh: dict[str, HostFacts] | None = None
    ) -> dict[str, Outcome]:
        """Each host's commands as one marked script, in parallel: one round trip per host; the
        observer sees each command start and end, and the bytes sent. `fresh`, when given: the
        script ends with the probe, and each host whose probe printed facts has them put there."""
        with_facts = fresh is not None
        timeout = self.cluster.spec.ssh.command_timeout
        probe_again = (sh(f"printf '\\n%s\\n' {FACTS_MARK}", "facts follow"), Cmd(("sh", "-c", probe_script()), "read-only probe", check=False))

        def work(name: str):
            script = Script(tuple(cmds[name]) + (probe_again if with_facts else ()))
            session = self.sessions[name]
            watch = ScriptWatch(self.observer, name, phase, script.cmds, session.bytes_sent)
            result = None
            try:
                result = session.run(self._remote(script, recorded=not force), timeout=timeout, stdin=script.stdin, watch=watch)
            finally:
                watch.close(result is not None and result.ok)
            stdout = result.stdout
            if with_facts and result.ok and f"\n{FACTS_MARK}\n" in stdout:
                stdout, _, facts = stdout.rpartition(f"\n{FACTS_MARK}\n")
                try:
                    fresh[name] = parse_probe_output(facts)  # type: ignore[index]
                except Exception:  # noqa: BLE001 - unreadable: this host is probed again on its own
                    pass
            return replace(result, stdout=stdout, stderr=strip_step_marks(result.stderr))

        results = self._parallel(list(cmds), work, timeout=timeout + 5, force=force)
        for name in results:
            self.reports[name].round_trips = self.sessions[name].round_trips
            self.reports[name].bytes_sent = self.sessions[name].bytes_sent
        return results

    def run_phase(self, phase: Phase, more_phases_follow: bool) -> None:
        """Plan and run one phase: one pass, or several (`passes`), each planned from fresh facts;
        then the phase's `finish`, however the passes ended."""
        ran: dict[str, list[Cmd]] = {}
        try:
            self._run_passes(phase, more_phases_follow, ran)
        finally:
            self._finish(phase, ran)

    def run_together(self, group: Sequence[Phase], more_phases_follow: bool) -> None:
        """Phases that need nothing of each other (`beside`), each in its own thread; Ctrl-C
        (which only this thread sees) stops them all; the first failure of one is raised."""
        failures: list[BaseException] = []
        # Waited for by events, not Thread.join: a Ctrl-C landing inside join() (Python < 3.13)
        # can mark a thread still running as ended, and the run then exits before its clean-up.
        done = {p.name: threading.Event() for p in group}

        def one(phase: Phase) -> None:
            try:
                self.run_phase(phase, more_phases_follow)
            except BaseException as exc:  # noqa: BLE001 - raised again in this thread
                failures.append(exc)
            finally:
                done[phase.name].set()

        for phase in group:
            threading.Thread(target=one, args=(phase,), daemon=True, name=f"phase-{phase.name}").start()
        try:
            for event in done.values():
                while not event.wait(0.2):
                    pass
        except KeyboardInterrupt:
            if not self.interrupted:
                self.stop()
            for event in done.values():
                event.wait()
            raise Interrupted() from None
        if failures:
            raise failures[0]

    def run_phases(self, phases: Sequence[Phase]) -> None:
        if self.preflight(phases):
            for group, follow in _groups(phases, self.context()):
                if len(group) == 1:
                    self.run_phase(group[0], more_phases_follow=follow)
                else:
                    self.run_together(group, more_phases_follow=follow)

    def _finish(self, phase: Phase, ran: dict[str, list[Cmd]]) -> None:
        """The phase's clean-up after its passes, also after a failure: `finish(ctx, ran)`
        returns commands by host from what each host ran (e.g. the filebox relay is removed)."""
        fn = getattr(phase, "finish", None)
        if fn is None or self.options.dry_run or not ran:
            return
        alive = set(self.sessions)
        todo = {h: cmds for h, cmds in fn(self.context(), ran).items() if cmds and h in alive}
        for name, out in self._run_scripts(phase.name, todo, force=True).items():
            if not out.ok or not out.value.ok:  # type: ignore[union-attr]
                why = _strip_kind(out) if not out.ok else out.value.tail(2)  # type: ignore[union-attr]
                self._record(name, Step(phase.name, FAILED, f"clean-up failed: {one_line(why)}"))

    def _run_passes(self, phase: Phase, more_phases_follow: bool, ran: dict[str, list[Cmd]]) -> None:
        """The passes, then one step per host recorded, also when the run is interrupted: the
        hosts whose commands were running then are named."""
        steps = PhaseSteps(phase.name)
        self.running.append(phase.name)
        self.current = ", ".join(self.running)
        try:
            self._passes(phase, more_phases_follow, ran, steps)
        except Interrupted:
            for name in self.in_pass.get(phase.name, []):
                note = "interrupted: its remote commands were ended" if name in self.ended_on else "interrupted while it ran"
                steps.add(name, Step(phase.name, FAILED, note))
            raise
        finally:
            self.in_pass.pop(phase.name, None)
            if not self.interrupted:  # the report names the phases that were running
                self.running.remove(phase.name)
                self.current = ", ".join(self.running) or phase.name
            for name in self.reports:
                if name in steps.by_host and name not in steps.recorded:
                    self._record(name, steps.by_host[name])

    def _refusal(self, phase: Phase) -> str | None:
        """The phase's operator-side step before a pass (consul: its ACLs; a UserError), then its
        cluster-wide check, from the latest facts: a one-line refusal stops the phase."""
        settle = self.settle.get(phase.name)
        if settle is not None:
            try:
                self.inputs = settle(self.context(), self.locked_api)
            except LockHeld:
                raise  # another run holds the cluster: the whole run is refused (exit 3), not this phase
            except UserError as exc:
                return str(exc)
            if self.inputs.reprobe:
                alive = set(self._alive())
                names = [n for n in self.reports if n in self.inputs.reprobe and n in alive]
                self.inputs = replace(self.inputs, reprobe=frozenset())
                self._reprobe(names, phase)
        return self.check(phase)

    def _plan_pass(self, phase: Phase, ctx: Context, steps: PhaseSteps) -> PassPlan:
        """Every live host's commands for this pass, its wave and whether it rolls; a host that
        cannot be planned fails now (and is skipped by the rest of the run)."""
        pass_plan = PassPlan()
        for name in self._alive():
            host = self.cluster.spec.host(name)
            try:
                cmds = phase.plan(ctx, host, ctx.facts[name])
                pass_plan.cmds[name] = cmds
                if cmds:
                    pass_plan.waves[name] = wave(phase, ctx, host, ctx.facts[name])
                    if rolling(phase, ctx, host, ctx.facts[name]):
                        pass_plan.rolling.add(name)
            except PlanError as exc:
                self._record(name, steps.add(name, Step(phase.name, FAILED, str(exc))))
                steps.recorded.add(name)
            except Exception as exc:  # noqa: BLE001 - one host's odd facts never stop the others
                why = one_line(f"could not plan this host ({type(exc).__name__}: {exc})")
                self._record(name, steps.add(name, Step(phase.name, FAILED, why)))
                steps.recorded.add(name)
        return pass_plan

    def _apply_wave(
        self, phase: Phase, ctx: Context, pass_plan: PassPlan, now: list[str], fresh: dict[str, HostFacts] | None
    ) -> dict[str, Outcome]:
        """Run this wave: hosts that do not roll all at once, then the rolling ones a batch at a
        time (each batch waits for the cluster first); a failed batch stops the rolling."""
        self.in_pass[phase.name] = list(now)
        self.observer.phase_started(phase.name, now)
        together = [n for n in now if n not in pass_plan.rolling]
        results = self._run_scripts(phase.name, {n: pass_plan.cmds[n] for n in together}, fresh=fresh) if together else {}
        rolling_now = [n for n in now if n in pass_plan.rolling]
        batch = max(1, int(getattr(phase, "rolling_batch", lambda _ctx: 1)(ctx)))
        for i in range(0, len(rolling_now), batch):
            group = rolling_now[i : i + batch]
            results.update(self._run_scripts(phase.name, {n: pass_plan.cmds[n] for n in group}, fresh=fresh))
            if any(not results[n].ok or not results[n].value.ok for n in group):  # type: ignore[union-attr]
                break  # stop rolling: the others keep what they run
        self.in_pass[phase.name] = []
        return results

    def _passes(self, phase: Phase, more_phases_follow: bool, ran: dict[str, list[Cmd]], steps: PhaseSteps) -> None:
        passes = max(1, int(getattr(phase, "passes", 1)))
        waiting: list[str] = []
        for n in range(passes):
            why = self._refusal(phase)
            if why is not None:
                self.refused[phase.name] = why
                for name in self._alive():
                    steps.add(name, Step(phase.name, FAILED, why))
                break
            ctx = self.context(pass_index=n)
            ctx = self.context(self._lookups(phase, ctx), pass_index=n)
            pass_plan = self._plan_pass(phase, ctx, steps)
            if n == 0:
                self.phase_notes += _phase_notes(phase, ctx)
            for name, cmds in pass_plan.cmds.items():
                if not cmds and name not in steps.by_host and name not in steps.recorded:
                    steps.by_host[name] = Step(phase.name, OK, "unchanged")
            waiting = []
            if not pass_plan.todo:
                break
            if self.options.dry_run:
                for name in pass_plan.todo:
                    cmds = pass_plan.cmds[name]
                    steps.by_host[name] = Step(phase.name, PLANNED, _summary(cmds), commands=[c.display() for c in cmds])
                break
            now, waiting = pass_plan.first_wave()
            self.ensure_locked()  # the run's first change takes the cluster's lock
            for name in now:
                ran.setdefault(name, []).extend(pass_plan.cmds[name])
            # Facts are re-read from the hosts, never edited by hand: when a host's commands
            # change only its own view, at the end of its own script (one round trip less).
            own = reads_own_facts(phase, ctx)
            fresh: dict[str, HostFacts] = {}
            results = self._apply_wave(phase, ctx, pass_plan, now, fresh if own and (more_phases_follow or n < passes - 1) else None)
            failed = False
            for name, out in results.items():
                rendered = [c.display() for c in pass_plan.cmds[name]]
                if out.ok and out.value.ok:  # type: ignore[union-attr]
                    step = Step(phase.name, CHANGED, _summary(pass_plan.cmds[name]), out.seconds, rendered)
                else:
                    why = _strip_kind(out) if not out.ok else out.value.tail(2)  # type: ignore[union-attr]
                    step = Step(phase.name, FAILED, why, out.seconds, rendered)
                    failed = True
                steps.add(name, step)
            for name in now:
                if name not in results:
                    steps.add(name, Step(phase.name, SKIPPED, "rolling change stopped: an earlier host failed"))
            changed = [n for n in now if n in results and steps.by_host[n].status == CHANGED]
            if failed and waiting:
                for name in waiting:
                    steps.add(name, Step(phase.name, SKIPPED, "not started: an earlier wave failed"))
                waiting = []
            if failed and passes > 1 and independent_hosts(phase, ctx):
                # The others go on to their next pass; the failed ones are out of the run now.
                for name in results:
                    if steps.by_host[name].status == FAILED:
                        self._record(name, steps.by_host[name])
                        steps.recorded.add(name)
            elif failed and passes > 1:
                break
            for name, facts in fresh.items():
                if name in changed:
                    self.reports[name].facts = facts
            if not changed:
                break
            if n < passes - 1 or more_phases_follow:
                # The hosts whose facts the pass may have changed and did not print themselves
                # (all of them, unless the phase says whose views others change).
                self._reprobe(reprobe_after_pass(phase, ctx, changed, fresh, self._alive()), phase)
        for name in waiting:
            steps.add(name, Step(phase.name, FAILED, f"not reached within {passes} passes"))

    def _reprobe(self, names: list[str], phase: Phase) -> None:
        # Hosts failed in this phase are not alive any more; their failure is already noted.
        if names:
            self.probe(names, label=f"{phase.name}:reprobe")


def one_line(text: str, limit: int = 500) -> str:
    """Text from a host or an exception, safe for a terminal: one line, control characters
    escaped, bounded."""
    safe = printable(" ".join(text.split()))
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


def _summary(cmds: list[Cmd]) -> str:
    return "; ".join(c.description or c.argv[0] for c in cmds)


def _strip_kind(out: Outcome) -> str:
    text = out.error or ""
    for prefix in ("SSHError: ", "ProbeError: ", "TimeoutError: ", "HostKeyUnknown: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _groups(phases: Sequence[Phase], ctx: Context) -> list[tuple[list[Phase], bool]]:
    """The phases in order, a phase that may run beside the ones before it (`beside`) joined
    to their group; each group with whether more phases follow it."""
    groups: list[list[Phase]] = []
    for phase in phases:
        if groups and all(p.name in beside(phase, ctx) for p in groups[-1]):
            groups[-1].append(phase)
        else:
            groups.append([phase])
    return [(g, i < len(groups) - 1) for i, g in enumerate(groups)]


def execute(
    cluster: Cluster,
    phases: Sequence[Phase],
    endpoints: dict[str, Endpoint],
    known_hosts: KnownHosts,
    options: Options,
    observer: RunObserver | None = None,
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
    `lock`, when given, is the cluster's own lock in Consul (it raises LockHeld to refuse; its
    context's value is true when it had to wait for another run): taken before the run's first
    change (a command, or the ACL settle's Consul calls) and held to the end of the run, so a
    converged run never takes it. One that had to wait means the hosts are read again and the
    phases planned again (what the other run changed)."""
    t0 = time.monotonic()
    with Manager(cluster, endpoints, known_hosts, options, observer, inputs) as m:
        try:
            m.connect()
            m.current = "probe"
            m.probe()
            m.settle = dict(settle or {})
            if prepare is not None:
                m.current = "prepare"
                m.inputs = prepare(m.context(), m.consul_api)
            if lock is not None:
                m.lock_factory = lambda: lock(m.context(), m.consul_api)
            try:
                m.run_phases(phases)
            except Replan:
                m.start_over()
                m.run_phases(phases)  # the lock is held now: no second Replan
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
