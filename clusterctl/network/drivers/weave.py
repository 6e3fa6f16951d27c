"""The weave driver: Weave Net routers and a weavemesh network, encrypted with a password.

Built from Weave's documented CLI; tested as command plans only (its images cannot be had here).
"""

from __future__ import annotations

from ipaddress import IPv4Network

from clusterctl.commands.base import Cmd
from clusterctl.errors import UserError
from clusterctl.facts.parser import HostFacts
from clusterctl.network.drivers.base import NetworkPlan
from clusterctl.phases.base import Context, PhaseError
import ipaddress

from clusterctl.commands import weave


class WeaveDriver:
    name = "weave"
    independent_hosts = False

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
        hosts = [weave.WeaveHost(h.name, addresses[h.name]) for h in ctx.cluster.spec.hosts if h.name in addresses]
        facts = {
            name: weave.WeaveHostFacts(
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
        settings = weave.WeaveSettings(
            cluster=ctx.cluster.name,
            network=net.name,
            cidr=cidr,
            version=net.weave_version,
            password=ctx.inputs.weave_password,
            expose=net.expose,
        )
        try:
            plan = weave.plan_weave(hosts, facts, settings)
        except UserError as exc:
            raise PhaseError(str(exc)) from None
        return NetworkPlan(cidr, {n: list(c) for n, c in plan.cmds.items()}, dict(plan.errors))



    def teardown(self, ctx: Context, facts: HostFacts) -> list[Cmd]:
        return []
