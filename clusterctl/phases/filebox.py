"""The filebox phase: ship the filebox and base images (clusterctl/shipping: only the layers a
host lacks cross the wire; big images through the relay), then create the filebox container,
never started: microcontainers mount it with --volumes-from.
"""

from __future__ import annotations

from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts
from clusterctl.phases.base import Context
from clusterctl.shipping.relay import RELAY_CONTAINER, relay_cleanup_cmds, relay_fetch_cmd, relay_plan, relay_seed_cmds
from clusterctl.shipping.stream import load_missing_images, missing_images

FILEBOX_CONTAINER_PREFIX = "clusterctl-filebox-"


def filebox_container_name(version: str) -> str:
    return FILEBOX_CONTAINER_PREFIX + version[:12]


class FileboxPhase:
    name = "filebox"
    title = "Filebox and microcontainer base shipped; filebox container created"
    # seed loads and serves; the others fetch; the seed stops serving.
    passes = 3

    def wave(self, ctx: Context, host: Host, facts: HostFacts) -> int:
        relay = relay_plan(ctx)
        if relay is not None and not relay.running and host.name != relay.seed and missing_images(relay.images, facts):
            return 1  # after the seed serves
        return 0

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        inputs = ctx.inputs
        if not inputs.images:
            return []
        cmds: list[Cmd] = []
        relay = relay_plan(ctx)
        own_relay = facts.container(RELAY_CONTAINER)
        if own_relay is not None and (relay is None or relay.seed != host.name or not relay.running):
            cmds += relay_cleanup_cmds()  # stale, or its work is done
        if relay is not None and missing_images(relay.images, facts) or (relay and relay.seed == host.name and not relay.running):
            direct = tuple(i for i in missing_images(inputs.images, facts) if i not in relay.images)
            if host.name == relay.seed and not relay.running:
                cmds += relay_seed_cmds(ctx, relay, relay.url.split("/")[2], facts, direct)
            else:
                if direct:
                    cmds.append(load_missing_images(direct, facts))  # type: ignore[arg-type]
                cmds.append(relay_fetch_cmd(ctx, relay, facts))
        else:
            load = load_missing_images(inputs.images, facts)
            if load:
                cmds.append(load)
            if relay is not None and relay.running and relay.seed == host.name and not any(
                missing_images(relay.images, f) for f in ctx.facts.values()
            ):
                cmds += relay_cleanup_cmds()
        name = inputs.filebox_container
        if name and facts.container(name) is None:
            cmds.append(
                Cmd(
                    ("docker", "create", "--name", name,
                     "--label", f"clusterctl.cluster={ctx.cluster.name}",
                     "--label", "clusterctl.role=filebox",
                     "--label", f"clusterctl.filebox.version={inputs.filebox_version}",
                     inputs.filebox_tag),
                    f"create the filebox container {name}",
                )  # fmt: skip
            )
        return [as_root(c, facts.sudo) for c in cmds]
