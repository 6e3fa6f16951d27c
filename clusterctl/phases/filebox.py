"""The filebox phase: ship the filebox and base images (clusterctl/shipping: only the layers a
host lacks cross the wire; big images through the relay), then create the filebox container,
never started: microcontainers mount it with --volumes-from.

The app images of the replicas placed on a host ride in the same `docker load` as the filebox
where it goes over SSH: a few kB more in a load already running, instead of a second load
(a round of docker processes) in the services phase, which then finds them there. Placement
is the services phase's own (phases/services.py), from the same facts; should it place a
replica elsewhere after all, the services phase loads what it lacks, as before.

Where the docker phase installs or starts the engine, or the engine phase restarts it, the host
receives this phase's archive meanwhile (`load_ahead`, shipping/stream.py's RECEIVE_WHILE): this
phase then loads it from that file.
"""

from __future__ import annotations

from collections.abc import Mapping

from clusterctl.commands.base import Cmd, sh_args
from clusterctl.commands.docker import as_root
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts
from clusterctl.network.addresses import over_mesh
from clusterctl.images.archive import ImageSpec
from clusterctl.phases.base import Context, ContextMemo, PhaseError
from clusterctl.shipping.relay import RELAY_CONTAINER, relay_cleanup_cmds, relay_fetch_cmd, relay_plan, relay_seed_cmds
from clusterctl.shipping.store import image_ref
from clusterctl.shipping.stream import load_missing_images, missing_images, missing_stream, stale_spools

FILEBOX_CONTAINER_PREFIX = "clusterctl-filebox-"
# $1 the relay container: removed once more a second later (`docker rm -f` succeeds whether or
# not it exists, so there is nothing to watch for).
RELAY_LATE = 'sleep 1; docker rm -f "$1" >/dev/null 2>&1; exit 0'


def filebox_container_name(version: str) -> str:
    return FILEBOX_CONTAINER_PREFIX + version[:12]


class FileboxPhase:
    name = "filebox"
    title = "Filebox, microcontainer base and app images shipped; filebox container created"
    # The relay's passes (shipping/relay.py): the seed loads and serves; the others fetch;
    # whoever still lacks an image loads it over SSH and the seed stops serving.
    passes = 3
    # A host's load, relay or fetch changes only what its own probe shows.
    own_facts_suffice = True

    def beside(self, ctx: Context) -> tuple[str, ...]:
        # Images go over SSH, or through a relay on the hosts' cluster addresses: nothing of the
        # network phase is needed, unless the hosts talk over the WireGuard mesh it makes.
        return () if over_mesh(ctx.cluster) else ("network",)

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
        keep: list[str] = []  # the archive received ahead that this plan loads, if any

        def load(images: tuple[ImageSpec, ...]) -> None:
            stream = missing_stream(images, facts)
            if stream is not None:
                if stream.spool_name in facts.spooled:
                    keep.append(stream.spool_name)
                cmds.append(load_missing_images(images, facts))  # type: ignore[arg-type]

        relay = relay_plan(ctx)
        serving = relay is not None and relay.seed == host.name
        if facts.container(RELAY_CONTAINER) is not None and not (serving and relay.running):  # type: ignore[union-attr]
            cmds += relay_cleanup_cmds()  # from an earlier run, or its work is done
        if relay is not None and serving and not relay.running:
            cmds += relay_seed_cmds(ctx, relay, facts)
        elif relay is not None and not serving and missing_images(relay.images, facts):
            load(tuple(i for i in inputs.images if i not in relay.images) + apps_here(ctx, host))
            cmds.append(relay_fetch_cmd(ctx, relay, facts))
        else:
            load(inputs.images + apps_here(ctx, host))
            if serving and not any(missing_images(relay.images, f) for f in ctx.facts.values()):  # type: ignore[union-attr]
                cmds += relay_cleanup_cmds()
        stale = stale_spools(facts, keep[0] if keep else None)
        if stale is not None:
            cmds.insert(0, stale)
        name = inputs.filebox_container
        if name and facts.container(name) is None:
            cmds.append(
                Cmd(
                    ("docker", "create", "--name", name,
                     "--label", f"clusterctl.cluster={ctx.cluster.name}",
                     "--label", "clusterctl.role=filebox",
                     "--label", f"clusterctl.filebox.version={inputs.filebox_version}",
                     image_ref(inputs.filebox_image, facts)),
                    f"create the filebox container {name}",
                )  # fmt: skip
            )
        return [as_root(c, facts.sudo) for c in cmds]

    def finish(self, ctx: Context, ran: Mapping[str, list[Cmd]]) -> dict[str, list[Cmd]]:
        """The relay never outlives the run: removed wherever this run started one and did not
        remove it (a failed or stopped run), or one is still seen."""
        out: dict[str, list[Cmd]] = {}
        for name, cmds in ran.items():
            started = [i for i, c in enumerate(cmds) if RELAY_CONTAINER in c.argv and "run" in c.argv]
            removed = [i for i, c in enumerate(cmds) if RELAY_CONTAINER in c.argv and "rm" in c.argv]
            facts = ctx.facts.get(name)
            seen = facts is not None and facts.container(RELAY_CONTAINER) is not None
            if (started and (not removed or removed[-1] < started[-1])) or seen:
                # Once more a second later: a `docker run` of the relay ended mid-way (a stopped
                # run ends its remote commands) may still land in a busy engine after the first.
                again = sh_args(RELAY_LATE, RELAY_CONTAINER, description="stop the relay once more, should it have started late")
                out[name] = [as_root(c, facts.sudo if facts else "") for c in (*relay_cleanup_cmds(), again)]
        return out


def load_ahead(ctx: Context, host: Host, facts: HostFacts) -> Cmd | None:
    """The streamed load this phase would run on this host over SSH, for the docker and engine
    phases to receive ahead while the engine installs, starts or restarts (None where the images
    go through the relay, or the host has them)."""
    if not ctx.inputs.images or relay_plan(ctx) is not None:
        return None
    load = load_missing_images(ctx.inputs.images + apps_here(ctx, host), facts)
    return load if load is not None and load.stdin is not None else None


def apps_here(ctx: Context, host: Host) -> tuple[ImageSpec, ...]:
    """The app images of the replicas placed on this host (none when placement refuses: the
    services phase says why)."""
    try:
        return _apps_placed(ctx).get(host.name, ())
    except PhaseError:
        return ()


def apps_by_host(ctx: Context) -> dict[str, tuple[ImageSpec, ...]]:
    """Host name -> the app images (built by this run) of the replicas placed there."""
    if not ctx.inputs.apps:
        return {}
    from clusterctl.phases.services import placement  # the services phase's own placement

    out: dict[str, dict[object, ImageSpec]] = {}
    for service, hosts in placement(ctx).hosts_of.items():
        app = ctx.inputs.apps.get(service)
        if app is None:
            continue
        for name in hosts:
            out.setdefault(name, {})[app.tag or app.diff_ids] = app
    return {name: tuple(images.values()) for name, images in out.items()}


# Per Context: the filebox and engine phases (load_ahead) read the same placement.
_apps_placed = ContextMemo(apps_by_host)
