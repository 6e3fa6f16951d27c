"""Runs `up` and `plan`: connect -> probe -> each phase, in parallel per host, results as data.

A host that fails a step is skipped by the later ones and named in the report; the others go
on. A dry run stops after planning and sends nothing but the read-only probe.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from clusterctl.commands.base import Cmd, Script
from clusterctl.config.loader import Cluster
from clusterctl.facts.parser import HostFacts, ProbeError, parse_probe_output, probe_script
from clusterctl.phases.base import Context, Inputs, Phase, PlanError, rolling
from clusterctl.transport.executor import DEFAULT_WORKERS, Outcome, run_parallel
from clusterctl.transport.ssh import Endpoint, KnownHosts, Session, SSHError, explain, open_session

OK, CHANGED, PLANNED, FAILED, SKIPPED = "ok", "changed", "planned", "failed", "skipped"


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
        hosts = [h for h in cluster.hosts if options.only is None or h.name in options.only]
        self.reports = {h.name: HostReport(h.name, h.address) for h in hosts}

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        for session in self.sessions.values():
            try:
                session.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    # -- steps --------------------------------------------------------------------------

    def _alive(self) -> list[str]:
        return [n for n, r in self.reports.items() if r.ok and n in self.sessions]

    def _record(self, name: str, step: Step) -> None:
        self.reports[name].steps.append(step)
        self.progress(name, step)

    def _parallel(self, names: Sequence[str], work: Callable[[str], object], timeout: float | None = None):
        return run_parallel(names, work, workers=self.options.workers, timeout=timeout)

    def connect(self) -> None:
        def work(name: str) -> Session:
            ep = self.endpoints[name]
            try:
                return open_session(ep, self.known_hosts)
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
                if label == "probe":
                    self._record(name, Step(label, OK, msg, out.seconds))
            else:
                self._record(name, Step(label, FAILED, _strip_kind(out), out.seconds))

    def context(self) -> Context:
        return Context(self.cluster, {n: r.facts for n, r in self.reports.items() if r.facts is not None}, self.inputs)

    def run_phase(self, phase: Phase, more_phases_follow: bool) -> None:
        ctx = self.context()
        plans: dict[str, list[Cmd]] = {}
        one_at_a_time: list[str] = []
        for name in self._alive():
            host = self.cluster.spec.host(name)
            try:
                plans[name] = phase.plan(ctx, host, ctx.facts[name])
                if plans[name] and rolling(phase, ctx, host, ctx.facts[name]):
                    one_at_a_time.append(name)
            except PlanError as exc:
                self._record(name, Step(phase.name, FAILED, str(exc)))
        todo = [n for n, cmds in plans.items() if cmds]
        for name in plans:
            if name not in todo:
                self._record(name, Step(phase.name, OK, "unchanged"))
        if self.options.dry_run:
            for name in todo:
                rendered = [c.display() for c in plans[name]]
                self._record(name, Step(phase.name, PLANNED, _summary(plans[name]), commands=rendered))
            return
        timeout = self.cluster.spec.ssh.command_timeout

        def work(name: str):
            script = Script(tuple(plans[name]))
            return self.sessions[name].run(shlex.join(["sh", "-c", script.render()]), timeout=timeout, stdin=script.stdin)

        together = [n for n in todo if n not in one_at_a_time]
        results = self._parallel(together, work, timeout=timeout + 5) if together else {}
        for name in one_at_a_time:  # rolling: each waits for the cluster before the next starts
            results.update(self._parallel([name], work, timeout=timeout + 5))
            if not results[name].ok or not results[name].value.ok:  # type: ignore[union-attr]
                break  # stop rolling: the others keep their running agents
        for name, out in results.items():
            rendered = [c.display() for c in plans[name]]
            self.reports[name].round_trips = self.sessions[name].round_trips
            self.reports[name].bytes_sent = self.sessions[name].bytes_sent
            if out.ok and out.value.ok:  # type: ignore[union-attr]
                self._record(name, Step(phase.name, CHANGED, _summary(plans[name]), out.seconds, rendered))
            else:
                why = _strip_kind(out) if not out.ok else out.value.tail(2)  # type: ignore[union-attr]
                self._record(name, Step(phase.name, FAILED, why, out.seconds, rendered))
        for name in todo:
            if name not in results:
                self._record(name, Step(phase.name, SKIPPED, "rolling change stopped: an earlier host failed"))
        changed = [n for n in todo if n in results and self.reports[n].ok]
        if changed and more_phases_follow:
            # Facts are re-read from the host, never edited by hand.
            self.probe(changed, label=f"{phase.name}:reprobe")


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
) -> RunReport:
    t0 = time.monotonic()
    with Manager(cluster, endpoints, known_hosts, options, progress, inputs) as m:
        m.connect()
        m.probe()
        for i, phase in enumerate(phases):
            m.run_phase(phase, more_phases_follow=i < len(phases) - 1)
        return RunReport(
            cluster=cluster.name,
            dry_run=options.dry_run,
            phases=["connect", "probe", *[p.name for p in phases]],
            hosts=list(m.reports.values()),
            seconds=time.monotonic() - t0,
        )
