"""The weave driver: Weave Net routers and a weavemesh network, encrypted with a password.

Here: the typed facts, settings and plan, `plan_weave` (pure: per-host commands: install,
launch with all peers, connect/forget, network, expose) and WeaveDriver, which reads them from
the probe and first checks every host has Weave's images. The argv builders, and what Weave's
documentation says of its CLI, are in commands/weave.py. Tested as command plans only (its
images cannot be had here).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network

from clusterctl.commands import weave
from clusterctl.commands.base import Cmd
from clusterctl.commands.files import sha256
from clusterctl.commands.weave import (
    MESH_DRIVER,
    PASSWORD_FILE,
    PEER_PORT,
    WEAVE_VERSION,
    connect,
    expose,
    forget,
    images,
    install_script,
    launch,
    network_create,
    script_url,
    stop,
    store_password,
    subnets,
)
from clusterctl.config.models import check_name
from clusterctl.errors import UserError
from clusterctl.facts.parser import HostFacts
from clusterctl.network.drivers.base import NetworkPlan
from clusterctl.network.facts import LABEL_CLUSTER, DockerNetwork, find_network
from clusterctl.phases.base import Context, PhaseError


# ---------------------------------------------------------------------------------------------
# Typed inputs and plan


@dataclass(frozen=True)
class WeaveHostFacts:
    script_version: str | None  # SCRIPT_VERSION of /usr/local/bin/weave; None when absent
    router: str  # "running" | "stopped" | "absent": the `weave` container
    images: tuple[str, ...]  # "repository:tag" present on the host
    targets: tuple[str, ...] = ()  # `weave status targets` (router running)
    ipalloc_range: str | None = None  # the running router's allocation range, if read
    networks: tuple[DockerNetwork, ...] = ()
    bridge_addresses: tuple[IPv4Interface, ...] = ()  # IPv4 addresses on the `weave` bridge
    password_sha256: str | None = None  # of the password file (managed_files); None when absent


@dataclass(frozen=True)
class WeaveHost:
    name: str
    address: str  # the cluster address; what other peers connect to


@dataclass(frozen=True)
class WeaveSettings:
    cluster: str
    network: str
    cidr: IPv4Network
    version: str = WEAVE_VERSION
    # The encryption password, or None for no encryption. It only ever leaves the planner as
    # the stdin of store_password(); repr hides it.
    password: bytes | None = field(default=None, repr=False)
    password_file: str = PASSWORD_FILE
    expose: bool = True
    script_url: str | None = None  # default: the release of `version` on GitHub


@dataclass(frozen=True)
class WeavePlan:
    default_subnet: IPv4Network
    network_subnet: IPv4Network
    cmds: Mapping[str, tuple[Cmd, ...]]
    errors: Mapping[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.cmds.values())


def _peer(target: str) -> str:
    """A target without the default port, so `10.0.0.2:6783` and `10.0.0.2` compare equal."""
    host, sep, port = target.rpartition(":")
    return host.strip("[]") if sep and port == str(PEER_PORT) else target


def plan_weave(hosts: Sequence[WeaveHost], facts: Mapping[str, WeaveHostFacts], settings: WeaveSettings) -> WeavePlan:
    """Per-host commands: install, launch with all peers, connect/forget, network, expose."""
    default_subnet, net_subnet = subnets(settings.cidr)
    wanted_images = images(settings.version)
    errors: dict[str, str] = {}
    cmds: dict[str, tuple[Cmd, ...]] = {}
    for h in hosts:
        if h.name not in facts:
            continue
        f = facts[h.name]
        missing = [i for i in wanted_images if i not in f.images]
        if missing:
            errors[h.name] = (
                f"weave images missing: {', '.join(missing)}; load them on the host (docker load) "
                "before using the weave driver"
            )
            continue
        peers = [o.address for o in hosts if o.name != h.name]
        out: list[Cmd] = []
        relaunch = False
        if settings.password is not None and f.password_sha256 != sha256(settings.password):
            out.append(store_password(settings.password, settings.password_file))
            relaunch = f.router == "running"  # a running router keeps its old password
        if f.script_version != settings.version:
            out.append(install_script(settings.script_url or script_url(settings.version)))
        if f.router == "running" and f.ipalloc_range and f.ipalloc_range != str(settings.cidr):
            errors[h.name] = (
                f"the weave router allocates from {f.ipalloc_range}, the cluster wants {settings.cidr}; "
                "`weave reset` this host (containers lose their weave addresses) or set network.subnet"
            )
            continue
        if f.router != "running" or relaunch:
            if relaunch:
                out.append(stop())
            out.append(
                launch(
                    peers,
                    ipalloc_range=settings.cidr,
                    default_subnet=default_subnet,
                    nickname=h.name,
                    password_file=settings.password_file if settings.password is not None else None,
                )
            )
        else:
            have = [_peer(t) for t in f.targets]
            new = [p for p in peers if p not in have]
            gone = [t for t in dict.fromkeys(have) if t not in peers]
            if new:
                out.append(connect(new))
            if gone:
                out.append(forget(gone))

        net = find_network(f.networks, settings.network)
        if net is None:
            out.append(network_create(settings.network, net_subnet, cluster=settings.cluster, cidr=settings.cidr))
        elif net.driver != MESH_DRIVER or net.subnets != (net_subnet,):
            errors[h.name] = (
                f"network {settings.network!r} here is {net.driver} "
                f"{', '.join(map(str, net.subnets)) or 'without a subnet'}, not {MESH_DRIVER} {net_subnet}; "
                "remove it (docker network rm) once no container uses it"
            )
            continue
        if settings.expose and not any(a.ip in net_subnet for a in f.bridge_addresses):
            out.append(expose([f"net:{net_subnet}"]))
        cmds[h.name] = tuple(out)
    return WeavePlan(
        default_subnet=default_subnet,
        network_subnet=net_subnet,
        cmds=cmds,
        errors=errors,
    )


class WeaveDriver:
    name = "weave"
    independent_hosts = False
    docker_driver = "weavemesh"

    def interfaces(self, network: str) -> tuple[str, ...]:
        return (weave.BRIDGE,)

    def plan(self, ctx: Context, addresses: dict[str, str], cidr: IPv4Network) -> NetworkPlan:
        net = ctx.cluster.spec.network
        wanted = weave.images(net.weave_version)
        missing = {n: [i for i in wanted if i not in f.network.weave_images] for n, f in ctx.facts.items()}
        missing = {n: m for n, m in missing.items() if m}
        if missing:
            shown = sorted({i for m in missing.values() for i in m})
            raise PhaseError(
                f"the weave driver needs Weave's images on every host; {', '.join(shown)} missing on "
                f"{', '.join(sorted(missing))}: load them there (docker load) first, or use driver overlay or routed"
            )
        hosts = [WeaveHost(h.name, addresses[h.name]) for h in ctx.cluster.spec.hosts if h.name in addresses]
        facts = {
            name: WeaveHostFacts(
                script_version=f.network.weave_script_version,
                router=f.network.weave_router,
                images=f.network.weave_images,
                targets=f.network.weave_targets,
                ipalloc_range=f.network.weave_ipalloc_range,
                networks=f.network.networks,
                bridge_addresses=tuple(
                    a.interface for a in f.addresses if a.ifname == weave.BRIDGE and isinstance(a.interface, ipaddress.IPv4Interface)
                ),
                password_sha256=f.managed_files.get(weave.PASSWORD_FILE),
            )
            for name, f in ctx.facts.items()
        }
        settings = WeaveSettings(
            cluster=ctx.cluster.name,
            network=net.name,
            cidr=cidr,
            version=net.weave_version,
            password=ctx.inputs.weave_password,
            expose=net.expose,
        )
        try:
            plan = plan_weave(hosts, facts, settings)
        except UserError as exc:
            raise PhaseError(str(exc)) from None
        return NetworkPlan(cidr, {n: list(c) for n, c in plan.cmds.items()}, dict(plan.errors))

    def teardown(self, ctx: Context, facts: HostFacts) -> list[Cmd]:
        """Its network and `weave reset`, only when this cluster's weavemesh network is here."""
        ours = any(n.driver == weave.MESH_DRIVER and n.labels.get(LABEL_CLUSTER) == ctx.cluster.name for n in facts.network.networks)
        return [weave.remove(check_name(ctx.cluster.name))] if facts.docker.running and ours else []
