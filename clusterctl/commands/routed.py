"""The routed driver: one bridge subnet per host, plain routes between hosts, no encapsulation.

On every host: a Docker bridge network (the cluster network's name) on that host's subnet; a
route to every other host's subnet via that host's cluster address; a DOCKER-USER rule that
lets cluster traffic through; a nat POSTROUTING RETURN rule, kept first, so cluster traffic keeps
its source addresses (Docker's MASQUERADE still applies to traffic leaving the cluster).
Routes are next hops, so every host must reach every other on one L2 segment (same subnet).

Docker 28 and later drop packets from other hosts addressed to unpublished container ports; the
network is then created with gateway mode `nat-unprotected`, which turns that filter off for
this network only (older engines do not know the option and do not filter).

Pure: `plan_routed` reads typed facts and returns per-host commands; nothing runs here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from clusterctl.commands.base import Cmd, sh_args
from clusterctl.network.facts import (
    LABEL_CIDR,
    LABEL_CLUSTER,
    DockerNetwork,
    HasInterface,
    Route,
    find_network,
    interface_networks,
)
from clusterctl.network.subnets import DEFAULT_HOST_PREFIX, SubnetError, as_network, default_cluster_cidr, plan_subnets

OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_GATEWAY_MODE = "com.docker.network.bridge.gateway_mode_ipv4"
OPT_MTU = "com.docker.network.driver.mtu"
UNPROTECTED = "nat-unprotected"
# First Docker Engine major version that filters direct routing to containers.
DIRECT_ROUTING_FILTER_SINCE = 28


# ---------------------------------------------------------------------------------------------
# Builders


def bridge_name(network: str) -> str:
    """The Linux bridge of the cluster network: `br-` and up to 12 characters (IFNAMSIZ is 16).

    The `br-` prefix is also what the probe's parser skips when it looks for host addresses.
    """
    return "br-" + re.sub(r"[^A-Za-z0-9_-]", "-", network)[:12]


def network_create_bridge(
    name: str,
    subnet: IPv4Network,
    gateway: IPv4Address,
    *,
    bridge: str,
    cluster: str,
    cidr: IPv4Network,
    gateway_mode: str | None = None,
    mtu: int | None = None,
) -> Cmd:
    argv = [
        "docker", "network", "create",
        "-d", "bridge",
        "--subnet", str(subnet),
        "--gateway", str(gateway),
        "-o", f"{OPT_BRIDGE_NAME}={bridge}",
    ]
    if gateway_mode:
        argv += ["-o", f"{OPT_GATEWAY_MODE}={gateway_mode}"]
    if mtu:
        argv += ["-o", f"{OPT_MTU}={mtu}"]
    argv += ["--label", f"{LABEL_CLUSTER}={cluster}", "--label", f"{LABEL_CIDR}={cidr}", name]
    return Cmd(tuple(argv), f"create the cluster network on this host's subnet {subnet}")


def network_rm(name: str) -> Cmd:
    return Cmd(("docker", "network", "rm", name), "remove the cluster network (its settings changed)")


def route_replace(dest: IPv4Network, via: IPv4Address) -> Cmd:
    return Cmd(("ip", "route", "replace", str(dest), "via", str(via)), f"route {dest} via {via}")


def route_del(dest: IPv4Network, via: IPv4Address) -> Cmd:
    # check=False: the route may have gone since the probe; "remove if present".
    return Cmd(("ip", "route", "del", str(dest), "via", str(via)), f"remove the route {dest} via {via}", check=False)


def accept_rule(cidr: IPv4Network) -> str:
    """The rule as `iptables -S DOCKER-USER` prints it."""
    return f"-A DOCKER-USER -s {cidr} -d {cidr} -j ACCEPT"


def return_rule(cidr: IPv4Network) -> str:
    """The rule as `iptables -t nat -S POSTROUTING` prints it."""
    return f"-A POSTROUTING -s {cidr} -d {cidr} -j RETURN"


def accept_forward(cidr: IPv4Network) -> Cmd:
    """Let cluster-to-cluster traffic through Docker's forward filter (check before insert)."""
    return sh_args(
        'iptables -w -C DOCKER-USER -s "$1" -d "$1" -j ACCEPT 2>/dev/null || '
        'iptables -w -I DOCKER-USER -s "$1" -d "$1" -j ACCEPT',
        str(cidr),
        description="accept cluster traffic in DOCKER-USER",
    )


def keep_source_first(cidr: IPv4Network) -> Cmd:
    """Keep `-t nat POSTROUTING -s C -d C -j RETURN` the first rule of its chain.

    Docker inserts its MASQUERADE rules at the top when it (re)creates a network, e.g. after an
    engine restart, so "present" is not enough: the rule must come before them.
    """
    return sh_args(
        'if [ "$(iptables -w -t nat -S POSTROUTING | sed -n 2p)" != "-A POSTROUTING -s $1 -d $1 -j RETURN" ]; then '
        'while iptables -w -t nat -D POSTROUTING -s "$1" -d "$1" -j RETURN 2>/dev/null; do :; done; '
        'iptables -w -t nat -I POSTROUTING 1 -s "$1" -d "$1" -j RETURN; fi',
        str(cidr),
        description="keep source addresses of cluster traffic (nat RETURN first in POSTROUTING)",
    )


def _may_match(rule: str, cidr: IPv4Network) -> bool:
    """Whether an `iptables -S` rule could match a packet from `cidr` to `cidr`."""
    words = rule.split()
    for i, word in enumerate(words[:-1]):
        if word in ("-s", "-d") and (i == 0 or words[i - 1] != "!"):
            try:
                net = ipaddress.ip_network(words[i + 1], strict=False)
            except ValueError:
                continue
            if not net.overlaps(cidr):
                return False
    return True


def source_kept(rules: Sequence[str] | None, cidr: IPv4Network) -> bool:
    """Whether cluster traffic meets our nat RETURN rule before any rule that could rewrite it.

    Docker puts its MASQUERADE rules at the top of POSTROUTING when the engine starts; those of
    other networks (e.g. `-s 172.17.0.0/16 ! -o docker0`) cannot match cluster traffic, so an
    engine restart alone does not make the rule move again. None (rules unread): not kept.
    """
    if rules is None or return_rule(cidr) not in rules:
        return False
    before = rules[: list(rules).index(return_rule(cidr))]
    return not any(_may_match(r, cidr) for r in before)


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


def docker_major(version: str | None) -> int | None:
    m = re.match(r"^(\d+)\.", version or "")
    return int(m.group(1)) if m else None


def gateway_mode_for(version: str | None) -> str | None:
    major = docker_major(version)
    return UNPROTECTED if major is not None and major >= DIRECT_ROUTING_FILTER_SINCE else None


def network_matches(
    net: DockerNetwork, subnet: IPv4Network, gateway: IPv4Address, bridge: str, cidr: IPv4Network, mode: str | None,
    mtu: int | None = None,
) -> bool:
    """Whether the host's network is the one network_create_bridge would make."""
    return (
        net.options.get(OPT_MTU) == (str(mtu) if mtu else None) and
        net.driver == "bridge"
        and net.subnets == (subnet,)
        and net.gateways in ((gateway,), ())
        and net.options.get(OPT_BRIDGE_NAME) == bridge
        and net.options.get(OPT_GATEWAY_MODE) == mode
        and net.labels.get(LABEL_CIDR) == str(cidr)
    )


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
