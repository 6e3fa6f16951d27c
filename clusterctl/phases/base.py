"""What a phase is: a title and a pure plan(ctx, host, facts) -> commands.

A phase with an empty plan for a host leaves it untouched ("unchanged"). `plan` and `up` print
and run the very same plans, so a dry run cannot drift from a real one.

Optional members, all read with getattr so simple phases need none of them:
- check(ctx): raise PhaseError when the cluster as a whole cannot take this phase (e.g. a
  network range that overlaps a host's network); the manager calls it before any phase runs
  and again before this one, and then runs nothing of this phase on any host;
- rolling(ctx, host, facts): this host's change runs alone (or in batches of
  rolling_batch(ctx) hosts); a failed batch stops the rest of the rolling hosts;
- passes: N > 1 plans the phase again from fresh facts after a pass that changed something,
  until the plan is empty, at most N passes (a swarm: init, then joins, then node labels);
- wave(ctx, host, facts) -> int: a pass runs only the hosts of the lowest wave that has work;
  the others wait for the next pass, planned again from fresh facts. A dry run shows them all;
- lookups(ctx) -> {host: Cmd}: read-only commands whose stdout the next plan needs (e.g. join
  tokens: secrets, never recorded or printed); run before planning a pass, never in a dry run,
  and handed to the plan as ctx.lookups[host];
- notes(ctx) -> [str]: cluster-wide remarks on the first pass's plan (a rebalance's moves),
  in the run's report;
- finish(ctx, ran): after the phase's passes, however they ended (remove a relay);
- own_facts_suffice: after a pass, each host that ran commands is probed again at the end of
  its own script (the same round trip) and the hosts that ran nothing are not: true when a
  host's commands change only what its own probe shows. Default: true for one-pass phases;
  a multi-pass phase whose joins change the others' views (a swarm's node list) keeps false,
  and every host is probed again after each pass, unless it says which views others change:
- watchers(ctx, changed) -> names | None: the hosts whose facts may change with what *other*
  hosts ran in a pass (`changed`: the hosts that ran commands), e.g. a swarm's members. With
  names, hosts read their own facts at the end of their scripts, and after a pass only the
  watchers are probed again (those that saw another host change); with None (or no such
  method), every host is;
- beside(ctx) -> names: the phases right before this one that it may run at the same time as
  (it needs nothing they make, they nothing it makes): the filebox ships while the network forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, TypeVar

from clusterctl.commands.base import Cmd
from clusterctl.config.loader import Cluster
from clusterctl.config.models import Host
from clusterctl.facts.parser import Container, HostFacts
from clusterctl.secrets import Secret


class PlanError(Exception):
    """The host cannot be brought to the desired state (e.g. no package manager); one line."""


class PhaseError(Exception):
    """The phase cannot run on this cluster at all (e.g. overlapping ranges); one line."""


@dataclass(frozen=True)
class Inputs:
    """What a run brings from the operator's side: secrets and built artifacts."""

    # Consul's gossip key, settled right after the probe (phases/gossip.py); never in a repr.
    gossip_key: Secret | None = field(default=None, repr=False)
    # The microcontainer base image (BusyBox + the filebox's symlinks) consul runs from; an
    # ImageSpec, run by its ID on each host (shipping/store.py::image_ref).
    base_image: Any = None
    # The filebox container (created, never running) that microcontainers mount.
    filebox_container: str | None = None
    # Built images every host needs (filebox, microcontainer base), shipped by the filebox phase.
    images: tuple = ()
    filebox_image: Any = None
    filebox_version: str | None = None
    # App images of the services that name an app folder, by service name (phases/services.py).
    apps: Mapping[str, Any] = field(default_factory=dict)
    # Secret env values of services (env: {KEY: {from_env: NAME}}), by service, then key; read
    # from the operator's environment (phases/services.py::secret_env_inputs).
    service_env: Mapping[str, Mapping[str, Secret]] = field(default_factory=dict, repr=False)
    # The weave driver's encryption password (network.weave_password_env, else the state dir).
    weave_password: bytes | None = field(default=None, repr=False)
    # Consul's RPC TLS: the CA's certificate and each host's own (phases/consul_tls.py), settled
    # right after the probe.
    tls: Any = field(default=None, repr=False)
    # Consul's ACL tokens (phases/consul_acl.py), settled right after the probe.
    acl: Any = field(default=None, repr=False)
    # What the operator-side steps changed in the cluster beyond the hosts, one line each.
    notes: tuple[str, ...] = ()
    # `up --rebalance`: running replicas move to meet their spread (else they stay).
    rebalance: bool = False
    # The hosts the operator reaches with no bastion or ProxyCommand between (filebox.relay auto).
    direct_ssh: frozenset[str] = frozenset()
    # Hosts whose facts an operator-side step just changed (e.g. their Consul agent's token now
    # exists, so their probe reads raft): probed again before the phase plans (then emptied).
    reprobe: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.gossip_key is not None and not isinstance(self.gossip_key, Secret):
            object.__setattr__(self, "gossip_key", Secret(self.gossip_key))


@dataclass(frozen=True)
class Context:
    """Everything a phase may read. No globals, no hidden hand-offs between phases."""

    cluster: Cluster
    # Facts of every host that answered the probe, by host name.
    facts: dict[str, HostFacts]
    inputs: Inputs = field(default_factory=Inputs)
    # Answers of the phase's read-only lookups, by host (see the module docstring).
    lookups: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Hosts left out of this run (`--host`): not probed, not down; their state is unknown.
    outside: frozenset[str] = frozenset()
    # Which pass of the phase this plan is for (0 first; see `passes`): a phase whose passes do
    # different work (the filebox relay: serve, fetch, fall back) reads it.
    pass_index: int = 0


class Phase(Protocol):
    name: str
    title: str

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]: ...


def cluster_containers(ctx: Context, facts: HostFacts, role: str) -> list[Container]:
    """This cluster's containers of one clusterctl.role on a host (never another cluster's)."""
    return [
        c
        for c in facts.docker.containers
        if c.labels.get("clusterctl.cluster") == ctx.cluster.name and c.labels.get("clusterctl.role") == role
    ]


T = TypeVar("T")


class ContextMemo(Generic[T]):
    """A cluster-wide plan computed once per Context (each host's plan reads the same one); a
    PhaseError it raised is raised again for every host, and by the phase's check."""

    def __init__(self, compute: Callable[[Context], T]) -> None:
        self._compute = compute
        self._memo: tuple[Context, T | PhaseError] | None = None

    def __call__(self, ctx: Context) -> T:
        if self._memo is None or self._memo[0] is not ctx:
            try:
                result: T | PhaseError = self._compute(ctx)
            except PhaseError as exc:
                result = exc
            self._memo = (ctx, result)
        result = self._memo[1]
        if isinstance(result, PhaseError):
            raise result
        return result


def rolling(phase: object, ctx: Context, host: Host, facts: HostFacts) -> bool:
    """Whether this host's change must run alone (e.g. restarting a quorum member)."""
    fn = getattr(phase, "rolling", None)
    return bool(fn and fn(ctx, host, facts))


def independent_hosts(phase: object, ctx: Context) -> bool:
    """Whether a host that fails in one pass leaves the others to their next passes (each
    host's change stands alone, e.g. a routed or wireguard network), rather than stopping the
    phase (a swarm whose joins need its leader). Default: stop."""
    fn = getattr(phase, "independent_hosts", None)
    return bool(fn and fn(ctx))


def beside(phase: object, ctx: Context) -> tuple[str, ...]:
    """See the module's docstring (`beside`)."""
    fn = getattr(phase, "beside", None)
    return tuple(fn(ctx)) if fn else ()


def own_facts_suffice(phase: object) -> bool:
    """See the module's docstring (`own_facts_suffice`)."""
    default = int(getattr(phase, "passes", 1)) <= 1
    return bool(getattr(phase, "own_facts_suffice", default))


def reprobe_after_pass(phase: object, ctx: Context, changed: list[str], fresh: Mapping[str, object], alive: list[str]) -> list[str]:
    """The hosts to probe again after a pass (see own_facts_suffice and watchers): `fresh` holds
    the facts the changed hosts' own scripts printed."""
    if own_facts_suffice(phase):
        return [h for h in changed if h not in fresh]
    fn = getattr(phase, "watchers", None)
    watching = fn(ctx, changed) if fn is not None else None
    if watching is None:
        return list(alive)
    return [h for h in alive if (h in watching and any(c != h for c in changed)) or (h in changed and h not in fresh)]


def reads_own_facts(phase: object, ctx: Context) -> bool:
    """Whether the phase's scripts end with the host's own probe (own_facts_suffice, or it
    names its watchers)."""
    fn = getattr(phase, "watchers", None)
    return own_facts_suffice(phase) or (fn is not None and fn(ctx, ()) is not None)


def wave(phase: object, ctx: Context, host: Host, facts: HostFacts) -> int:
    """Which wave of a pass this host's change belongs to (0 unless the phase says otherwise)."""
    fn = getattr(phase, "wave", None)
    return int(fn(ctx, host, facts)) if fn else 0
