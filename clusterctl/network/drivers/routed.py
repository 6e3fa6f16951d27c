"""The routed driver: a bridge subnet per host, plain routes between the hosts (one L2 segment).

The planner and its builders are in commands/routed.py.
"""

from __future__ import annotations

from ipaddress import IPv4Network

from clusterctl.commands.base import Cmd
from clusterctl.errors import UserError
from clusterctl.facts.parser import HostFacts
from clusterctl.network.drivers.base import NetworkPlan
from clusterctl.phases.base import Context, PhaseError
from clusterctl.commands import routed


class RoutedDriver:
    name = "routed"
    independent_hosts = True

    def interfaces(self, network: str) -> tuple[str, ...]:
        return (routed.bridge_name(network),)

    def plan(self, ctx: Context, addresses: dict[str, str], cidr: IPv4Network) -> NetworkPlan:
        net = ctx.cluster.spec.network
        hosts = [routed.RoutedHost(h.name, addresses[h.name]) for h in ctx.cluster.spec.hosts if h.name in addresses]
        facts = {
            name: routed.RoutedHostFacts(
                addresses=f.addresses,
                routes=f.network.routes,
                networks=f.network.networks,
                docker_version=f.docker.server_version,
                docker_user_rules=f.network.docker_user_rules,
                nat_postrouting_rules=f.network.nat_postrouting_rules,
            )
            for name, f in ctx.facts.items()
        }
        settings = routed.RoutedSettings(ctx.cluster.name, net.name, cidr=cidr, host_prefix=net.host_prefix)
        try:
            plan = routed.plan_routed(hosts, facts, settings)
        except UserError as exc:
            raise PhaseError(str(exc)) from None
        return NetworkPlan(cidr, {n: list(c) for n, c in plan.cmds.items()}, dict(plan.errors))

    def teardown(self, ctx: Context, facts: HostFacts) -> list[Cmd]:
        return []
