"""What a run did, as data: per host, one step per phase (status, message, time, the commands
it ran), and the run's cluster-wide facts. The manager fills it; report/render prints it."""

from __future__ import annotations

from dataclasses import dataclass, field

from clusterctl.facts.parser import HostFacts

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


def merge_step(old: Step | None, new: Step) -> Step:
    """One step per host per phase, however many passes it took."""
    if old is None or (old.status == OK and not old.commands):
        return new
    status = FAILED if FAILED in (old.status, new.status) else new.status
    message = new.message if new.status == FAILED else "; ".join(m for m in (old.message, new.message) if m)
    return Step(old.phase, status, message, old.seconds + new.seconds, old.commands + new.commands)
