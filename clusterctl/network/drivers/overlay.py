"""The overlay driver: Docker swarm mode (the Consul server hosts are managers) and one attachable
overlay network.

Here: the typed facts (a host's swarm state, the swarm's nodes), settings and plan, `plan_swarm`,
what `down` reads from the facts (whether a host's swarm is this cluster's, who its leader is),
and OverlayDriver. The argv builders are in commands/swarm.py.

`plan_swarm` decides, from each host's `docker info` Swarm section and the leader's node list,
who inits, who joins, which stale nodes go, which labels and roles change, and whether the
overlay network must be created. Pure: typed facts in, Cmds out.

A plan comes in waves that run in order (the steps of one wave may run in parallel):
  wave 0, on the leader: init, network create, node rm/demote/promote/labels for known nodes;
  wave 1, on the others: leave (when stuck) and join.
Joins need join tokens, which exist only once a swarm does. `plan_swarm` takes them as an
argument and never from the probe (they are secrets: a manager token is the keys to the whole
cluster); a join without them carries a placeholder (commands/swarm.py::TokenInput). A real run
(OverlayDriver.plan, one pass each):
  1. plan; if wave 0 is not empty and tokens are needed: run wave 0, probe again, plan again;
  2. if plan.needs_tokens: run read_join_tokens() on plan.leader (a lookup), parse_join_tokens(),
     plan again;
  3. run the waves; probe again; plan again (labels and roles of nodes that just joined);
     a converged swarm plans nothing.
A dry run shows the init and the joins, with `<worker token of node1>` placeholders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.commands.swarm import (
    LABEL_HOST,
    OPT_ENCRYPTED,
    TOKEN_RE,
    Role,
    SwarmError,
    TokenInput,
    init,
    join,
    label_self,
    leave,
    leave_for_good,
    network_create_overlay,
    node_demote,
    node_promote,
    node_rm,
    node_update_labels,
    read_join_tokens,
)
from clusterctl.errors import UserError
from clusterctl.facts.parser import HostFacts
from clusterctl.network.drivers.base import NetworkPlan
from clusterctl.network.facts import LABEL_CLUSTER, DockerNetwork, find_network
from clusterctl.phases.base import Context, PhaseError
from clusterctl.phases.consul import chosen_servers


# ---------------------------------------------------------------------------------------------
# Typed inputs


@dataclass(frozen=True)
class JoinTokens:
    worker: str
    manager: str

    def __repr__(self) -> str:  # never print the secrets
        return "JoinTokens(worker=***, manager=***)"


def parse_join_tokens(stdout: str) -> JoinTokens:
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if len(lines) != 2 or not all(TOKEN_RE.match(t) for t in lines):
        raise SwarmError("could not read the swarm join tokens (expected two SWMTKN-1-... lines)")
    return JoinTokens(worker=lines[0], manager=lines[1])


@dataclass(frozen=True)
class RemoteManager:
    node_id: str
    addr: str  # "IP:2377" as docker info reports it

    @property
    def host(self) -> str:
        host, _, _ = self.addr.rpartition(":")
        return host.strip("[]")


@dataclass(frozen=True)
class SwarmState:
    """The Swarm section of `docker info` on one host."""

    local_node_state: str = "inactive"  # inactive | pending | active | error | locked
    node_id: str = ""
    node_addr: str = ""
    control_available: bool = False
    cluster_id: str = ""  # only on managers
    remote_managers: tuple[RemoteManager, ...] = ()
    error: str = ""

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> SwarmState:
        """From the whole `docker info --format '{{json .}}'` object (or its Swarm section)."""
        swarm = info.get("Swarm", info) or {}
        cluster = swarm.get("Cluster") or {}
        return cls(
            local_node_state=swarm.get("LocalNodeState") or "inactive",
            node_id=swarm.get("NodeID") or "",
            node_addr=swarm.get("NodeAddr") or "",
            control_available=bool(swarm.get("ControlAvailable")),
            cluster_id=cluster.get("ID") or "",
            remote_managers=tuple(
                RemoteManager(m.get("NodeID", ""), m.get("Addr", "")) for m in swarm.get("RemoteManagers") or []
            ),
            error=swarm.get("Error") or "",
        )

    @property
    def active(self) -> bool:
        return self.local_node_state == "active"

    @property
    def is_manager(self) -> bool:
        return self.active and self.control_available


@dataclass(frozen=True)
class SwarmNode:
    """One node of the swarm as a manager sees it."""

    id: str
    hostname: str = ""
    role: Role = "worker"
    status: str = "ready"  # ready | down | unknown | disconnected
    availability: str = "active"
    manager_status: str = ""  # leader | reachable | unreachable | "" for workers
    addr: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> SwarmNode:
        """From one object of `docker node inspect --format '{{json .}}'`."""
        spec = data.get("Spec") or {}
        status = data.get("Status") or {}
        mgr = data.get("ManagerStatus") or {}
        manager_status = ""
        if mgr:
            manager_status = "leader" if mgr.get("Leader") else (mgr.get("Reachability") or "").lower()
        role = "manager" if (spec.get("Role") or "").lower() == "manager" else "worker"
        return cls(
            id=data.get("ID", ""),
            hostname=(data.get("Description") or {}).get("Hostname", ""),
            role=role,
            status=(status.get("State") or "").lower(),
            availability=(spec.get("Availability") or "").lower(),
            manager_status=manager_status,
            addr=status.get("Addr") or "",
            labels=dict(spec.get("Labels") or {}),
        )


@dataclass(frozen=True)
class SwarmHostFacts:
    swarm: SwarmState
    # Read only on managers: the swarm's nodes (None when not read).
    nodes: tuple[SwarmNode, ...] | None = None
    # Docker networks on this host that matter: ours, and any other with our network's name.
    networks: tuple[DockerNetwork, ...] = ()


@dataclass(frozen=True)
class SwarmHost:
    name: str
    address: str  # the cluster address (IP)
    is_server: bool
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def role(self) -> Role:
        return "manager" if self.is_server else "worker"


@dataclass(frozen=True)
class SwarmSettings:
    cluster: str
    network: str
    subnet: IPv4Network
    default_addr_pool: tuple[str, ...] = ()
    default_addr_pool_mask_length: int | None = None
    encrypted: bool = False


@dataclass(frozen=True)
class SwarmStep:
    host: str
    cmds: tuple[Cmd, ...]


@dataclass(frozen=True)
class SwarmPlan:
    leader: str | None
    waves: tuple[tuple[SwarmStep, ...], ...]
    # Hosts that cannot be brought into the swarm, with a one-line reason each.
    errors: Mapping[str, str] = field(default_factory=dict)
    # Joins were planned with placeholder tokens: read tokens on the leader and plan again.
    needs_tokens: bool = False

    @property
    def empty(self) -> bool:
        return not any(step.cmds for wave in self.waves for step in wave)

    def cmds(self, host: str) -> list[Cmd]:
        """All of one host's commands, in wave order (what a dry run prints for it)."""
        return [c for wave in self.waves for step in wave if step.host == host for c in step.cmds]


# ---------------------------------------------------------------------------------------------
# Planner


def wanted_labels(h: SwarmHost) -> dict[str, str]:
    """A host's node labels: its labels from the file, and which host it is."""
    return {**dict(h.labels), LABEL_HOST: h.name}


def plan_swarm(
    hosts: Sequence[SwarmHost],
    facts: Mapping[str, SwarmHostFacts],
    settings: SwarmSettings,
    tokens: JoinTokens | None = None,
) -> SwarmPlan:
    """The swarm and overlay network for `hosts` (inventory order); `facts` holds hosts that answered."""
    servers = [h for h in hosts if h.is_server]
    if not servers:
        raise SwarmError("the overlay network needs at least one server host (a swarm manager)")
    inventory_addrs = {h.address for h in hosts}
    errors: dict[str, str] = {}

    # Which swarm is ours: the one the inventory's managers belong to.
    managers = [h for h in hosts if h.name in facts and facts[h.name].swarm.is_manager]
    clusters = {facts[h.name].swarm.cluster_id for h in managers}
    if len(clusters) > 1:
        shown = ", ".join(f"{h.name} ({facts[h.name].swarm.cluster_id[:12]})" for h in managers)
        raise SwarmError(f"hosts are managers of different swarms: {shown}; make them leave all but one")

    leader: SwarmHost
    fresh = not managers
    if fresh:
        # No manager of ours answered. Never start a second swarm next to one we cannot see.
        silent = [h.name for h in servers if h.name not in facts]
        if silent:
            raise SwarmError(
                f"no swarm manager answered and server(s) {', '.join(silent)} did not answer; "
                "not initialising a swarm that might split the cluster"
            )
        for h in hosts:
            st = facts[h.name].swarm if h.name in facts else None
            if st and st.active and any(m.host in inventory_addrs for m in st.remote_managers):
                raise SwarmError(
                    f"{h.name} is in a swarm managed by inventory hosts that did not answer as managers; "
                    "check those hosts before planning"
                )
        leader = servers[0]
        nodes: tuple[SwarmNode, ...] = ()
    else:
        leader = next((h for h in managers if h.is_server), managers[0])
        nodes_read = facts[leader.name].nodes
        if nodes_read is None:
            raise SwarmError(f"the probe did not list the swarm's nodes on manager {leader.name}")
        nodes = nodes_read
    cluster_id = "" if fresh else facts[leader.name].swarm.cluster_id
    node_ids = {n.id for n in nodes}
    manager_ids = {n.id for n in nodes if n.role == "manager"}
    node_by_id = {n.id: n for n in nodes}

    wave0: list[Cmd] = []
    joins: list[SwarmStep] = []
    promote: list[str] = []
    demote: list[str] = []

    if fresh:
        wave0.append(
            init(
                leader.address,
                default_addr_pool=settings.default_addr_pool,
                default_addr_pool_mask_length=settings.default_addr_pool_mask_length,
            )
        )

    # The overlay network, created once on the leader.
    subnet = settings.subnet
    leader_net = find_network(facts[leader.name].networks, settings.network)
    if leader_net is None:
        wave0.append(network_create_overlay(settings.network, subnet, settings.cluster, settings.encrypted))
    elif leader_net.driver == "bridge" and leader_net.labels.get(LABEL_CLUSTER) == settings.cluster:
        raise SwarmError(
            f"network {settings.network!r} on {leader.name} is this cluster's bridge network (driver routed or "
            "wireguard); to move a running cluster to the overlay, `clusterctl down --yes` and then `up`"
        )
    elif leader_net.driver != "overlay" or subnet not in leader_net.subnets:
        raise SwarmError(
            f"network {settings.network!r} on {leader.name} is {leader_net.driver} "
            f"{', '.join(map(str, leader_net.subnets)) or 'without a subnet'}, not overlay {subnet}; "
            "remove it (docker network rm) once no container uses it"
        )
    elif (OPT_ENCRYPTED in leader_net.options) != settings.encrypted:
        # Docker cannot change a network's encryption in place.
        now = "not encrypted" if settings.encrypted else "encrypted"
        raise SwarmError(
            f"network {settings.network!r} on {leader.name} is {now}, and network.encrypted is "
            f"{str(settings.encrypted).lower()}; remove it (docker network rm) once no container uses it, and up makes it again"
        )

    def ours(st: SwarmState) -> bool:
        if fresh:
            return False
        if st.cluster_id:
            return st.cluster_id == cluster_id
        return st.node_id in node_ids

    def managed_by_us(st: SwarmState) -> bool:
        """A worker whose managers are ours, though its node is gone from our list (orphaned)."""
        return any(m.node_id in manager_ids or m.host in inventory_addrs for m in st.remote_managers)

    leader_addr = leader.address
    for h in hosts:
        if h.name == leader.name or h.name not in facts:
            continue
        hf = facts[h.name]
        st = hf.swarm
        # A local network with our name but another driver would make `--network NAME` ambiguous.
        local = find_network(hf.networks, settings.network)
        if local is not None and local.driver != "overlay":
            errors[h.name] = (
                f"a {local.driver} network named {settings.network!r} exists here; remove it "
                "(docker network rm) before joining the overlay"
            )
            continue
        if st.local_node_state == "locked":
            errors[h.name] = "the swarm on this host is locked (autolock); unlock it with `docker swarm unlock`"
            continue
        cmds: list[Cmd] = []
        if st.active:
            if ours(st):
                node = node_by_id.get(st.node_id)
                if node is not None and node.role != h.role:
                    (promote if h.is_server else demote).append(node.id)
                continue
            if fresh or not managed_by_us(st):
                where = ", ".join(m.addr for m in st.remote_managers) or st.cluster_id[:12] or "unknown managers"
                errors[h.name] = (
                    f"this host is in another swarm ({where}); run `docker swarm leave --force` on it "
                    "or remove it from the inventory"
                )
                continue
            cmds.append(leave())  # orphaned: its node was removed from our swarm
        elif st.local_node_state in ("pending", "error"):
            cmds.append(leave())
        elif st.local_node_state != "inactive":
            errors[h.name] = f"unexpected swarm state {st.local_node_state!r}"
            continue
        secret = None if tokens is None else (tokens.manager if h.is_server else tokens.worker)
        token = TokenInput(f"{h.role} token of {leader.name}", secret)
        cmds.append(join(token, leader_addr, h.address, h.role))
        if h.is_server:  # a manager labels its own node (a worker's: the leader, next pass)
            cmds.append(label_self(wanted_labels(h)))
        joins.append(SwarmStep(h.name, tuple(cmds)))

    if fresh:  # the new swarm's first node: labelled now that it exists
        wave0.append(label_self(wanted_labels(leader)))

    # Nodes in the swarm that the inventory no longer has.
    keep = {facts[h.name].swarm.node_id for h in hosts if h.name in facts and facts[h.name].swarm.node_id}
    silent_hosts = {h.name for h in hosts if h.name not in facts}
    stale = [n for n in nodes if n.id not in keep and n.labels.get(LABEL_HOST) not in silent_hosts]
    stale_managers = [n.id for n in stale if n.role == "manager"]
    if stale_managers:
        wave0.append(node_demote(stale_managers))
    if stale:
        wave0.append(node_rm([n.id for n in stale]))

    if promote:
        wave0.append(node_promote(promote))
    if demote:
        wave0.append(node_demote(demote))

    # Labels of nodes we know (nodes that join now get theirs on the next round).
    for h in hosts:
        if h.name not in facts:
            continue
        node = node_by_id.get(facts[h.name].swarm.node_id)
        if node is None:
            continue
        want = wanted_labels(h)
        missing = {k: v for k, v in want.items() if node.labels.get(k) != v}
        if missing:
            wave0.append(node_update_labels(node.id, missing))

    waves: list[tuple[SwarmStep, ...]] = []
    if wave0:
        waves.append((SwarmStep(leader.name, tuple(wave0)),))
    if joins:
        waves.append(tuple(joins))
    return SwarmPlan(
        leader=leader.name,
        waves=tuple(waves),
        errors=errors,
        needs_tokens=bool(joins) and tokens is None,
    )


# ---------------------------------------------------------------------------------------------
# What `down` reads


def swarm_state(facts: HostFacts) -> SwarmState:
    return SwarmState.from_info(facts.docker.info or {})


def is_swarm_leader(facts: HostFacts) -> bool:
    """Whether the host is its swarm's leader (the node list says so; read on managers only)."""
    me = swarm_state(facts).node_id
    nodes = facts.network.swarm_nodes or ()
    return any(n.id == me and n.manager_status == "leader" for n in map(SwarmNode.from_inspect, nodes))


def manager_ours(ctx: Context, facts: HostFacts) -> bool:
    """A manager's swarm is this cluster's when this cluster's overlay network is in it, or
    (once an earlier host removed that network) when its own node carries the host label
    `up` gave it with one of this cluster's host names."""
    if any(n.driver == "overlay" and n.labels.get(LABEL_CLUSTER) == ctx.cluster.name for n in facts.network.networks):
        return True
    me = swarm_state(facts).node_id
    names = {h.name for h in ctx.cluster.hosts}
    nodes = map(SwarmNode.from_inspect, facts.network.swarm_nodes or ())
    return any(n.id == me and n.labels.get(LABEL_HOST) in names for n in nodes)


def our_swarm(ctx: Context, facts: HostFacts) -> bool:
    """Whether the host is in this cluster's swarm: a manager by itself (above); a worker
    when a manager it names is one of this cluster's managers (node ID or address)."""
    swarm = swarm_state(facts)
    if swarm.local_node_state == "inactive":
        return False
    if swarm.is_manager:
        return manager_ours(ctx, facts)
    ours = [f for f in ctx.facts.values() if swarm_state(f).is_manager and manager_ours(ctx, f)]
    ids = {swarm_state(f).node_id for f in ours}
    addrs = {a for f in ours if (a := f.cluster_address())}
    return any(m.node_id in ids or m.host in addrs for m in swarm.remote_managers)


def check_esp(ctx: Context) -> None:
    """network.encrypted needs IPsec (ESP) in every host's kernel: refused before anything runs
    when the probe shows a host without it (no esp4 module or built-in)."""
    lacking = sorted(n for n, f in ctx.facts.items() if (f.network.blocks.get("xfrm") or {}).get("esp") is False)
    if lacking:
        raise PhaseError(
            f"network.encrypted: the overlay's encryption is IPsec (ESP), and the kernel of {', '.join(lacking)} "
            "has no esp4 (module or built in); use driver wireguard to encrypt, or set encrypted: false"
        )


class OverlayDriver:
    name = "overlay"
    independent_hosts = False
    docker_driver = "overlay"

    def interfaces(self, network: str) -> tuple[str, ...]:
        return ()

    def watchers(self, ctx: Context, changed) -> frozenset[str]:  # noqa: ANN001 - host names
        """Every swarm member sees the others join, leave and get labels (a manager's node list,
        every node's remote managers): those and the hosts that just ran (and may have joined).
        A host outside any swarm sees only what it runs itself (the first pass: one init)."""
        return frozenset(n for n, f in ctx.facts.items() if swarm_state(f).local_node_state != "inactive") | frozenset(changed)

    def plan(self, ctx: Context, addresses: dict[str, str], cidr: IPv4Network) -> NetworkPlan:
        spec = ctx.cluster.spec
        choice = chosen_servers(ctx)  # swarm managers are the Consul server hosts
        hosts = [SwarmHost(h.name, addresses[h.name], choice.is_server(h.name), h.labels) for h in spec.hosts if h.name in addresses]
        facts = {}
        for name, f in ctx.facts.items():
            nodes = f.network.swarm_nodes
            facts[name] = SwarmHostFacts(
                swarm=SwarmState.from_info(f.docker.info),
                nodes=None if nodes is None else tuple(SwarmNode.from_inspect(n) for n in nodes),
                networks=f.network.networks,
            )
        settings = SwarmSettings(
            cluster=ctx.cluster.name,
            network=spec.network.name,
            subnet=cidr,
            default_addr_pool=spec.network.default_addr_pool,
            default_addr_pool_mask_length=spec.network.default_addr_pool_mask_length,
            encrypted=spec.network.encrypted,
        )
        if spec.network.encrypted:
            check_esp(ctx)
        try:
            plan = plan_swarm(hosts, facts, settings)
            leader = plan.leader or ""
            if leader in ctx.lookups:
                plan = plan_swarm(hosts, facts, settings, parse_join_tokens(ctx.lookups[leader]))
        except UserError as exc:
            raise PhaseError(str(exc)) from None
        out = NetworkPlan(cidr, errors=dict(plan.errors))
        leader_cmds = plan.cmds(leader)
        fresh = any(c.argv[:3] == ("docker", "swarm", "init") for c in leader_cmds)
        for wave in plan.waves:
            for step in wave:
                out.cmds[step.host] = list(step.cmds)
                # Joins wait for a swarm to exist (and for its tokens); the rest runs together.
                out.waves[step.host] = 1 if fresh and step.host != leader else 0
        if plan.needs_tokens and not fresh and leader in ctx.facts:
            out.lookups[leader] = as_root(read_join_tokens(), ctx.facts[leader].sudo)
        return out

    def teardown(self, ctx: Context, facts: HostFacts) -> list[Cmd]:
        """Leave the swarm, only when it is this cluster's (see our_swarm)."""
        return [leave_for_good()] if facts.docker.running and our_swarm(ctx, facts) else []
