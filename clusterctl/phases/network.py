"""The network phase: one container network across all hosts, with the driver the file names.

The drivers are clusterctl/network/drivers/ (overlay, routed, weave, wireguard), one module
each; this phase picks one, finds the cluster CIDR and checks what every driver shares.

Cluster-wide, before anything runs (`check`, a PhaseError): the cluster CIDR (network.subnet,
else the one our network is labelled with, else a free /16) must not overlap any network the
hosts use; the overlay needs a server and one swarm; weave needs its images on every host.
Per host, the planners' errors become that host's PlanError.

Pure: every method reads the Context only; planning is memoised per Context object.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.config.loader import Cluster
from clusterctl.config.models import Host
from clusterctl.errors import UserError
from clusterctl.facts.parser import HostFacts
# The module, not its names: the drivers read phases.base, so either side may be imported first.
from clusterctl.network import drivers
from clusterctl.network.drivers import overlay as overlay_driver
from clusterctl.network.drivers.base import NetworkPlan
from clusterctl.network.facts import LABEL_CIDR, LABEL_CLUSTER, DockerNetwork, find_network, interface_networks
from clusterctl.network.subnets import as_network, check_cluster_cidr, default_cluster_cidr
from clusterctl.phases.base import Context, ContextMemo, Inputs, PhaseError, PlanError

PASSWORD_FILE_NAME = "weave.password"


def cluster_addresses(ctx: Context) -> dict[str, str]:
    """Each host's cluster address: from the file, else its facts, else its SSH address if an IP."""
    out: dict[str, str] = {}
    for h in ctx.cluster.spec.hosts:
        f = ctx.facts.get(h.name)
        addr = h.cluster_address or (f.cluster_address() if f else None)
        if addr is None:
            try:
                addr = str(ipaddress.ip_address(h.address))
            except ValueError:
                continue
        out[h.name] = addr
    return out


def cluster_cidr(ctx: Context, addresses: dict[str, str]) -> IPv4Network:
    """The cluster CIDR, checked against every network the answering hosts use.

    Left out of that check: the cluster network's own bridges and routes (to cluster hosts, or
    inside the CIDR our network is labelled with), so a cluster never clashes with itself.
    """
    net = ctx.cluster.spec.network
    # Every driver's, not only this one's: a cluster switching drivers does not clash with itself.
    own_ifnames = tuple(i for d in drivers.DRIVERS.values() for i in d.interfaces(net.name))
    vias = {ip for a in addresses.values() if isinstance(ip := ipaddress.ip_address(a), IPv4Address)}
    labelled: IPv4Network | None = None
    for f in ctx.facts.values():
        for d in f.network.networks:
            if d.name == net.name and LABEL_CIDR in d.labels and labelled is None:
                try:
                    labelled = as_network(d.labels[LABEL_CIDR])
                except UserError:
                    pass
    avoid: set[IPv4Network] = set()
    for f in ctx.facts.values():
        avoid.update(interface_networks(f.addresses, own_ifnames))
        for r in f.network.routes:
            if r.dest is None or r.dest.prefixlen == 0 or r.dev in own_ifnames:
                continue
            if (r.via is not None and r.via in vias) or (labelled is not None and r.dest.subnet_of(labelled)):
                continue
            avoid.add(r.dest)
        for d in f.network.networks:
            if d.name != net.name:
                avoid.update(d.subnets)
    try:
        cidr = as_network(net.subnet) if net.subnet else default_cluster_cidr(sorted(avoid), labelled)
        check_cluster_cidr(cidr, avoid)
    except UserError as exc:
        raise PhaseError(str(exc)) from None
    return cidr


def plan_network(ctx: Context) -> NetworkPlan:
    """The cluster's network plan for this pass; PhaseError when the cluster cannot have it."""
    driver = ctx.cluster.spec.network.driver
    if driver not in drivers.DRIVERS:  # the config allows only these; kept as a guard
        raise PhaseError(f"unknown network driver {driver!r}")
    addresses = cluster_addresses(ctx)
    cidr = cluster_cidr(ctx, addresses)
    plan = drivers.DRIVERS[driver].plan(ctx, addresses, cidr)
    name_ = ctx.cluster.spec.network.name
    for name, f in ctx.facts.items():
        if name in plan.errors:
            continue
        if name not in addresses:
            plan.errors[name] = "no cluster address: none in the file and none found in the host's facts"
            continue
        found = find_network(f.network.networks, name_)
        if found is not None and found.labels.get(LABEL_CLUSTER) != ctx.cluster.name:
            # Never remove or reuse a network clusterctl did not make for this cluster.
            owner = found.labels.get(LABEL_CLUSTER)
            plan.errors[name] = (
                f"a {found.driver} network named {name_!r} exists here that "
                + (f"belongs to cluster {owner!r}" if owner else "clusterctl did not create")
                + "; remove it (docker network rm) or set network.name"
            )
            plan.cmds.pop(name, None)
            continue
        _switch_from_other_drivers(ctx, plan, name, f, found)
    return plan


def _switch_from_other_drivers(ctx: Context, plan: NetworkPlan, name: str, facts: HostFacts, found: DockerNetwork | None) -> None:
    """A cluster that changed network.driver: what the other drivers left on the host (its swarm,
    its Weave router, its tunnel) goes first, in this pass, before the new network is made; a
    swarm's leader in a later wave than the other members. Never under running containers."""
    driver = ctx.cluster.spec.network.driver
    leaving = [c for d in drivers.DRIVERS.values() if d.name != driver for c in d.teardown(ctx, facts)]
    if not leaving:
        return
    mine = drivers.DRIVERS[driver].docker_driver
    if found is not None and found.containers and found.driver != mine:
        plan.errors[name] = (
            f"network.driver is {driver} now, but {found.containers} container(s) here use the {found.driver} "
            f"network {found.name!r}; stop them (or `clusterctl down`) before switching drivers"
        )
        plan.cmds.pop(name, None)
        return
    # The old driver's teardown removes its own network; no separate `docker network rm` then.
    gone = found is not None and found.driver != mine
    own = [c for c in plan.cmds.get(name, []) if not (gone and c.argv[:3] == ("docker", "network", "rm"))]
    plan.cmds[name] = leaving + own
    if overlay_driver.is_swarm_leader(facts):
        plan.waves[name] = 1


class NetworkPhase:
    name = "network"
    title = "One container network across hosts"
    # A fresh swarm: init; joins; labels of the new nodes; then an empty plan. One to spare.
    passes = 5

    def __init__(self) -> None:
        self._plan = ContextMemo(plan_network)

    def check(self, ctx: Context) -> None:
        self._plan(ctx)

    def independent_hosts(self, ctx: Context) -> bool:
        return drivers.DRIVERS[ctx.cluster.spec.network.driver].independent_hosts

    def lookups(self, ctx: Context) -> dict[str, Cmd]:
        return dict(self._plan(ctx).lookups)

    def watchers(self, ctx: Context, changed) -> frozenset[str] | None:  # noqa: ANN001 - host names
        """The driver's (see phases/base.py); None when it does not say: every host is read again."""
        fn = getattr(drivers.DRIVERS[ctx.cluster.spec.network.driver], "watchers", None)
        return fn(ctx, changed) if fn is not None else None

    def wave(self, ctx: Context, host: Host, facts: HostFacts) -> int:
        return self._plan(ctx).waves.get(host.name, 0)

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        plan = self._plan(ctx)
        if host.name in plan.errors:
            raise PlanError(plan.errors[host.name])
        return [as_root(c, facts.sudo) for c in plan.cmds.get(host.name, [])]


def network_inputs(cluster: Cluster, inputs: Inputs, dry_run: bool) -> Inputs:
    """The weave password for this run: from $network.weave_password_env, else the state dir.

    A dry run creates nothing: without a stored password it plans with a placeholder.
    """
    net = cluster.spec.network
    if net.driver != "weave":
        return inputs
    if net.weave_password_env:
        value = os.environ.get(net.weave_password_env, "")
        if not value:
            raise UserError(f"{cluster.path}: network.weave_password_env: ${net.weave_password_env} is not set or empty")
        return replace(inputs, weave_password=value.encode())
    from clusterctl.secrets import weave_password
    from clusterctl.state import cluster_dir

    directory = cluster_dir(cluster.name, cluster.path)
    if dry_run and not (directory / PASSWORD_FILE_NAME).exists():
        return replace(inputs, weave_password=b"<generated on first up>")
    return replace(inputs, weave_password=weave_password(directory))
