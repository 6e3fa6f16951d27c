"""The routed driver: one bridge subnet per host, plain routes between hosts, no encapsulation.

On every host: a Docker bridge network (the cluster network's name) on that host's subnet; a
route to every other host's subnet via that host's cluster address; a DOCKER-USER rule that
lets cluster traffic through; a nat POSTROUTING RETURN rule, kept first, so cluster traffic keeps
its source addresses (Docker's MASQUERADE still applies to traffic leaving the cluster).
Routes are next hops, so every host must reach every other on one L2 segment (same subnet).

Docker 28 and later drop packets from other hosts addressed to unpublished container ports; the
network is then created with gateway mode `nat-unprotected`, which turns that filter off for
this network only (older engines do not know the option and do not filter).

Here: the typed facts, settings and plan, `plan_routed` (pure: typed facts in, per-host commands
out) and RoutedDriver, which reads them from the probe. The argv builders are in commands/routed.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from clusterctl.commands.base import Cmd
from clusterctl.commands.routed import (
    accept_forward,
    accept_rule,
    bridge_name,
    gateway_mode_for,
    keep_source_first,
    network_create_bridge,
    network_matches,
    network_rm,
    route_del,
    route_replace,
    source_kept,
)
from clusterctl.errors import UserError
from clusterctl.facts.parser import HostFacts
from clusterctl.network.drivers.base import NetworkPlan
from clusterctl.network.facts import LABEL_CIDR, DockerNetwork, HasInterface, Route, find_network, interface_networks
from clusterctl.network.subnets import DEFAULT_HOST_PREFIX, SubnetError, as_network, default_cluster_cidr, plan_subnets
from clusterctl.phases.base import Context, PhaseError


# ---------------------------------------------------------------------------------------------
# Typed inputs and plan


@dataclass(frozen=True)
class RoutedHostFacts:
    addresses: tuple[HasInterface, ...]
    routes: tuple[Route, ...]
    networks: tuple[DockerNetwork, ...]
    docker_version: str | None = None
    # `iptables -S DOCKER-USER` and `iptables -t nat -S POSTROUTING` rules (-A lines, in order);
    # None when the probe did not read them: the guarded commands are then always planned.
    docker_user_rules: tuple[str, ...] | None = None
    nat_postrouting_rules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RoutedHost:
    name: str
    address: str  # the cluster address


@dataclass(frozen=True)
class RoutedSettings:
    cluster: str
    network: str
    cidr: IPv4Network | None = None  # None: keep the running cluster's, else choose a free one
    host_prefix: int = DEFAULT_HOST_PREFIX


@dataclass(frozen=True)
class RoutedPlan:
    cidr: IPv4Network
    subnets: Mapping[str, IPv4Network]
    cmds: Mapping[str, tuple[Cmd, ...]]
    errors: Mapping[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.cmds.values())


def _label_cidr(networks: Sequence[DockerNetwork], name: str) -> IPv4Network | None:
    net = find_network(networks, name)
    if net is None or LABEL_CIDR not in net.labels:
        return None
    try:
        return as_network(net.labels[LABEL_CIDR])
    except SubnetError:
        return None


def plan_routed(
    hosts: Sequence[RoutedHost],
    facts: Mapping[str, RoutedHostFacts],
    settings: RoutedSettings,
) -> RoutedPlan:
    """Per-host commands for the routed network; hosts in inventory order, facts for those that answered.

    Raises SubnetError when the cluster CIDR clashes with the hosts' networks or cannot hold them.
    """
    bridge = bridge_name(settings.network)
    errors: dict[str, str] = {}
    addr: dict[str, IPv4Address] = {}
    for h in hosts:
        try:
            ip = ipaddress.ip_address(h.address)
        except ValueError:
            ip = None
        if isinstance(ip, IPv4Address):
            addr[h.name] = ip
        else:
            errors[h.name] = f"the routed network needs an IPv4 cluster address, not {h.address!r}"
    cluster_vias = set(addr.values())
    answered = [h for h in hosts if h.name in facts and h.name in addr]
    silent = [h for h in hosts if h.name not in facts and h.name in addr]

    # The cluster CIDR: configured, else the one our networks carry, else a free /16.
    labelled = next((c for h in answered if (c := _label_cidr(facts[h.name].networks, settings.network))), None)
    known = settings.cidr or labelled

    def ours(r: Route) -> bool:
        """A route we made: inside the CIDR our networks are labelled with (whatever its next
        hop: it may point at a host that left), or to a cluster host inside the configured CIDR."""
        if r.dest is None or r.via is None:
            return False
        if labelled is not None and r.dest.subnet_of(labelled):
            return True
        return known is not None and r.via in cluster_vias and r.dest.subnet_of(known)

    avoid: set[IPv4Network] = set()
    for h in answered:
        f = facts[h.name]
        avoid.update(interface_networks(f.addresses, (bridge,)))
        for r in f.routes:
            if r.dest is None or r.dest.prefixlen == 0 or r.dev == bridge or ours(r):
                continue
            avoid.add(r.dest)
    cidr = known if known is not None else default_cluster_cidr(sorted(avoid))

    # Subnets now: each host's own network, else (host silent) what the others route to it.
    current: dict[str, IPv4Network] = {}
    for h in answered:
        net = find_network(facts[h.name].networks, settings.network)
        if net is not None and net.driver == "bridge" and len(net.subnets) == 1:
            current[h.name] = net.subnets[0]
    for h in silent:
        for o in answered:
            found = [
                r.dest for r in facts[o.name].routes
                if r.dest is not None and r.via == addr[h.name] and r.dest.subnet_of(cidr)
            ]
            if found:
                current[h.name] = found[0]
                break
    # A silent host whose subnet nobody knows is left alone: no subnet, routes via it untouched.
    planned = [h for h in hosts if h.name in addr and (h.name in facts or h.name in current)]
    protected_vias = {addr[h.name] for h in silent if h.name not in current}
    subnets = plan_subnets(cidr, settings.host_prefix, [h.name for h in planned], current, sorted(avoid))

    cmds: dict[str, tuple[Cmd, ...]] = {}
    for h in answered:
        f = facts[h.name]
        own = subnets[h.name]
        gateway = next(own.hosts())
        mode = gateway_mode_for(f.docker_version)
        local_nets = interface_networks(f.addresses, (bridge,))
        off_link = [o.name for o in planned if o.name != h.name and not any(addr[o.name] in n for n in local_nets)]
        if off_link:
            errors[h.name] = (
                f"{', '.join(off_link)} not on a network of this host; routed subnets need one L2 segment "
                "(use driver overlay or weave across networks)"
            )
            continue
        out: list[Cmd] = []

        net = find_network(f.networks, settings.network)
        create = network_create_bridge(
            settings.network, own, gateway, bridge=bridge, cluster=settings.cluster, cidr=cidr, gateway_mode=mode
        )
        if net is None:
            out.append(create)
        elif not network_matches(net, own, gateway, bridge, cidr, mode):
            if net.containers:
                errors[h.name] = (
                    f"network {settings.network!r} must be recreated on {own} but {net.containers} "
                    "container(s) use it; stop them first"
                )
                continue
            out += [network_rm(settings.network), create]

        if f.docker_user_rules is None or accept_rule(cidr) not in f.docker_user_rules:
            out.append(accept_forward(cidr))
        if not source_kept(f.nat_postrouting_rules, cidr):
            out.append(keep_source_first(cidr))

        want = {subnets[o.name]: addr[o.name] for o in planned if o.name != h.name}
        have: dict[IPv4Network, IPv4Address] = {}
        for r in f.routes:
            if r.dest is not None and r.via is not None and (r.dest.subnet_of(cidr) or ours(r)):
                have.setdefault(r.dest, r.via)
        for dest, via in have.items():
            if dest not in want and via not in protected_vias:
                out.append(route_del(dest, via))
        for dest, via in want.items():
            if have.get(dest) != via:
                out.append(route_replace(dest, via))
        cmds[h.name] = tuple(out)
    return RoutedPlan(cidr=cidr, subnets=subnets, cmds=cmds, errors=errors)


class RoutedDriver:
    name = "routed"
    independent_hosts = True
    docker_driver = "bridge"

    def interfaces(self, network: str) -> tuple[str, ...]:
        return (bridge_name(network),)

    def watchers(self, ctx: Context, changed) -> frozenset[str]:  # noqa: ANN001 - host names
        """Nobody: a host's bridge, routes and rules change only what its own probe shows."""
        return frozenset()

    def plan(self, ctx: Context, addresses: dict[str, str], cidr: IPv4Network) -> NetworkPlan:
        net = ctx.cluster.spec.network
        hosts = [RoutedHost(h.name, addresses[h.name]) for h in ctx.cluster.spec.hosts if h.name in addresses]
        facts = {
            name: RoutedHostFacts(
                addresses=f.addresses,
                routes=f.network.routes,
                networks=f.network.networks,
                docker_version=f.docker.server_version,
                docker_user_rules=f.network.docker_user_rules,
                nat_postrouting_rules=f.network.nat_postrouting_rules,
            )
            for name, f in ctx.facts.items()
        }
        settings = RoutedSettings(ctx.cluster.name, net.name, cidr=cidr, host_prefix=net.host_prefix)
        try:
            plan = plan_routed(hosts, facts, settings)
        except UserError as exc:
            raise PhaseError(str(exc)) from None
        return NetworkPlan(cidr, {n: list(c) for n, c in plan.cmds.items()}, dict(plan.errors))

    def teardown(self, ctx: Context, facts: HostFacts) -> list[Cmd]:
        return []
