"""Typed network facts the driver planners read, with pure parsers from what the probe prints.

The probe hands over Docker's and iproute2's own output; these functions turn it into small
frozen values. Nothing here runs a command.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Protocol

# Labels clusterctl puts on the Docker networks it creates.
LABEL_CLUSTER = "clusterctl.cluster"
LABEL_CIDR = "clusterctl.cidr"


@dataclass(frozen=True)
class DockerNetwork:
    """One Docker network as `docker network inspect` shows it on one host."""

    name: str
    driver: str
    id: str = ""
    scope: str = ""
    ipam_driver: str = "default"
    subnets: tuple[IPv4Network, ...] = ()
    gateways: tuple[IPv4Address, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    # Containers attached on this host (inspect lists local endpoints only).
    containers: int = 0


def network_from_inspect(data: Mapping[str, Any]) -> DockerNetwork:
    """A DockerNetwork from one object of `docker network inspect` (IPv6 configs are skipped)."""
    ipam = data.get("IPAM") or {}
    subnets: list[IPv4Network] = []
    gateways: list[IPv4Address] = []
    for conf in ipam.get("Config") or []:
        try:
            net = ipaddress.ip_network(conf.get("Subnet", ""), strict=False)
        except ValueError:
            continue
        if isinstance(net, IPv4Network):
            subnets.append(net)
            try:
                gw = ipaddress.ip_address(conf.get("Gateway", ""))
            except ValueError:
                continue
            if isinstance(gw, IPv4Address):
                gateways.append(gw)
    return DockerNetwork(
        name=data.get("Name", ""),
        driver=data.get("Driver", ""),
        id=data.get("Id", ""),
        scope=data.get("Scope", ""),
        ipam_driver=ipam.get("Driver") or "default",
        subnets=tuple(subnets),
        gateways=tuple(gateways),
        options=dict(data.get("Options") or {}),
        labels=dict(data.get("Labels") or {}),
        containers=len(data.get("Containers") or {}),
    )


def find_network(networks: Iterable[DockerNetwork], name: str) -> DockerNetwork | None:
    for net in networks:
        if net.name == name:
            return net
    return None


@dataclass(frozen=True)
class Route:
    """One IPv4 route of `ip -o -4 route show`; dest None is the default route."""

    dest: IPv4Network | None
    via: IPv4Address | None = None
    dev: str | None = None
    proto: str | None = None


def parse_route(line: str) -> Route | None:
    """A Route from one line of `ip -o -4 route show`; None for lines that are not plain unicast."""
    words = line.split()
    if not words:
        return None
    if words[0] in ("unreachable", "prohibit", "blackhole", "throw", "local", "broadcast", "multicast"):
        return None
    dest: IPv4Network | None
    if words[0] == "default":
        dest = None
    else:
        try:
            net = ipaddress.ip_network(words[0], strict=False)
        except ValueError:
            return None
        if not isinstance(net, IPv4Network):
            return None
        dest = net

    def after(key: str) -> str | None:
        if key in words[1:]:
            i = words.index(key, 1)
            return words[i + 1] if i + 1 < len(words) else None
        return None

    via: IPv4Address | None = None
    if (text := after("via")) is not None:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            addr = None
        via = addr if isinstance(addr, IPv4Address) else None
    return Route(dest=dest, via=via, dev=after("dev"), proto=after("proto"))


def parse_routes(lines: Iterable[str]) -> tuple[Route, ...]:
    return tuple(r for r in (parse_route(line) for line in lines) if r is not None)


class HasInterface(Protocol):
    ifname: str
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface


def interface_networks(addresses: Iterable[HasInterface], skip_ifnames: Sequence[str] = ()) -> list[IPv4Network]:
    """The IPv4 networks of a host's interfaces, without loopback and the ones named in skip_ifnames."""
    out = []
    for a in addresses:
        iface = a.interface
        if not isinstance(iface, IPv4Interface) or iface.ip.is_loopback or a.ifname in skip_ifnames:
            continue
        out.append(iface.network)
    return out


def host_networks(
    addresses: Iterable[HasInterface],
    routes: Iterable[Route] = (),
    *,
    own_ifnames: Sequence[str] = (),
    own_vias: Iterable[IPv4Address] = (),
) -> list[IPv4Network]:
    """Everything a cluster CIDR must avoid on one host: its interface networks and route targets.

    Our own interfaces (own_ifnames: the routed bridge, the weave bridge) and our own routes (to
    another cluster host's subnet, via its address: own_vias) are left out, or a cluster would
    clash with itself on the second run.
    """
    vias = set(own_vias)
    nets = interface_networks(addresses, own_ifnames)
    for r in routes:
        if r.dest is None or r.dest.prefixlen == 0:
            continue
        if r.dev in own_ifnames or (r.via is not None and r.via in vias):
            continue
        nets.append(r.dest)
    return sorted(set(nets))


def parse_rules(text: str | Iterable[str]) -> tuple[str, ...]:
    """Lines of `iptables -S CHAIN`, stripped; the chain policy line (-P/-N) is dropped."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    return tuple(line.strip() for line in lines if line.strip().startswith("-A "))


# ---------------------------------------------------------------------------------------------
# What the probe's "network facts" block reports (docker.network in its JSON), typed.


@dataclass(frozen=True)
class NetworkFacts:
    """A host's network facts. Defaults mean "not read" (no Docker engine answered)."""

    # IPv4 routes (`ip -o -4 route show`).
    routes: tuple[Route, ...] = ()
    # Every Docker network on the host, as `docker network inspect` shows it.
    networks: tuple[DockerNetwork, ...] = ()
    # `docker node inspect` objects of the swarm's nodes; read on managers only, else None.
    swarm_nodes: tuple[Mapping[str, Any], ...] | None = None
    # `iptables -S DOCKER-USER` and `iptables -t nat -S POSTROUTING` (-A lines); None if unreadable.
    docker_user_rules: tuple[str, ...] | None = None
    nat_postrouting_rules: tuple[str, ...] | None = None
    # "repository:tag" of the weaveworks/* images on the host.
    weave_images: tuple[str, ...] = ()
    # SCRIPT_VERSION of /usr/local/bin/weave; None when the script is absent.
    weave_script_version: str | None = None
    # The `weave` router container: running | exited | ... | absent.
    weave_router: str = "absent"
    weave_args: tuple[str, ...] = ()
    # `weave status targets` (router running).
    weave_targets: tuple[str, ...] = ()
    # The probe's blocks that a driver parses itself (drivers/wireguard.py: "wireguard"; the
    # overlay's encryption: "xfrm"), as they came.
    blocks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def weave_ipalloc_range(self) -> str | None:
        """The running router's --ipalloc-range (from its container's arguments)."""
        args = list(self.weave_args)
        for i, arg in enumerate(args):
            if arg == "--ipalloc-range" and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("--ipalloc-range="):
                return arg.split("=", 1)[1]
        return None


def _strings(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def parse_network_probe(data: Mapping[str, Any] | None, route_lines: Iterable[str] = ()) -> NetworkFacts:
    """NetworkFacts from the probe's docker.network object and its route lines."""
    data = data if isinstance(data, Mapping) else {}
    nodes = data.get("swarm_nodes")
    weave = data.get("weave") if isinstance(data.get("weave"), Mapping) else {}
    docker_user = data.get("docker_user")
    nat = data.get("nat_postrouting")
    return NetworkFacts(
        routes=parse_routes(route_lines),
        networks=tuple(network_from_inspect(n) for n in data.get("networks") or [] if isinstance(n, Mapping)),
        swarm_nodes=tuple(n for n in nodes if isinstance(n, Mapping)) if isinstance(nodes, list) else None,
        docker_user_rules=parse_rules(_strings(docker_user)) if isinstance(docker_user, list) else None,
        nat_postrouting_rules=parse_rules(_strings(nat)) if isinstance(nat, list) else None,
        weave_images=_strings(data.get("weave_images")),
        weave_script_version=(weave.get("script_version") or None) if weave else None,
        weave_router=str(weave.get("router") or "absent") if weave else "absent",
        weave_args=_strings(weave.get("args")),
        weave_targets=_strings(weave.get("targets")),
        blocks={k: v for k in ("wireguard", "xfrm") if isinstance(v := data.get(k), Mapping)},
    )
