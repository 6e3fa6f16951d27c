"""The overlay driver: Docker swarm mode (the Consul server hosts are managers) and one attachable
overlay network.

It comes in passes (see commands/swarm.py): `swarm init` and the network on the leader; then the
joins, their tokens read on the leader just before (a lookup: they travel on stdin and are never
printed); then the labels of the nodes that just joined; a converged swarm plans nothing. A dry
run shows the init and the joins, with `<worker token of node1>` placeholders.
"""

from __future__ import annotations

from ipaddress import IPv4Network

from clusterctl.commands.base import Cmd
from clusterctl.errors import UserError
from clusterctl.facts.parser import HostFacts
from clusterctl.network.drivers.base import NetworkPlan
from clusterctl.phases.base import Context, PhaseError
from clusterctl.commands import swarm
from clusterctl.commands.docker import as_root
from clusterctl.phases.consul import chosen_servers


class OverlayDriver:
    name = "overlay"
    independent_hosts = False

    def interfaces(self, network: str) -> tuple[str, ...]:
        return ()

    def plan(self, ctx: Context, addresses: dict[str, str], cidr: IPv4Network) -> NetworkPlan:
        spec = ctx.cluster.spec
        choice = chosen_servers(ctx)  # swarm managers are the Consul server hosts
        hosts = [swarm.SwarmHost(h.name, addresses[h.name], choice.is_server(h.name), h.labels) for h in spec.hosts if h.name in addresses]
        facts = {}
        for name, f in ctx.facts.items():
            nodes = f.network.swarm_nodes
            facts[name] = swarm.SwarmHostFacts(
                swarm=swarm.SwarmState.from_info(f.docker.info),
                nodes=None if nodes is None else tuple(swarm.SwarmNode.from_inspect(n) for n in nodes),
                networks=f.network.networks,
            )
        settings = swarm.SwarmSettings(
            cluster=ctx.cluster.name,
            network=spec.network.name,
            subnet=cidr,
            default_addr_pool=spec.network.default_addr_pool,
            default_addr_pool_mask_length=spec.network.default_addr_pool_mask_length,
        )
        try:
            plan = swarm.plan_swarm(hosts, facts, settings)
            leader = plan.leader or ""
            if leader in ctx.lookups:
                plan = swarm.plan_swarm(hosts, facts, settings, swarm.parse_join_tokens(ctx.lookups[leader]))
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
            out.lookups[leader] = as_root(swarm.read_join_tokens(), ctx.facts[leader].sudo)
        return out

    def teardown(self, ctx: Context, facts: HostFacts) -> list[Cmd]:
        return []
