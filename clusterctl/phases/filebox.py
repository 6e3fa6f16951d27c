"""The filebox phase: ship the filebox and base images, then create the filebox container.

Images travel as docker-archives streamed through the SSH exec channel into `docker load`, and
only the layers a host lacks cross the wire: a layer whose chain ID the host already holds is
listed in the archive's manifest but its layer.tar is left out (moby's loader skips it). The
filebox container is created, never started; microcontainers mount it with --volumes-from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts
from clusterctl.images.archive import ImageSpec, chain_ids, layers_to_omit, write_archive
from clusterctl.phases.base import Context

FILEBOX_CONTAINER_PREFIX = "clusterctl-filebox-"


def filebox_container_name(version: str) -> str:
    return FILEBOX_CONTAINER_PREFIX + version[:12]


@dataclass(frozen=True)
class ArchiveStream:
    """A docker-archive written straight into `docker load`'s stdin (Cmd.stdin)."""

    images: tuple[ImageSpec, ...]
    omit: frozenset[str]

    @property
    def bytes_to_send(self) -> int:
        omit = {d for d in self.omit}
        seen, total = set(), 0
        for img in self.images:
            for layer in img.layers:
                if layer.diff_id not in seen and layer.diff_id not in omit:
                    seen.add(layer.diff_id)
                    total += layer.tar_size
        return total

    def describe(self) -> str:
        tags = ", ".join(i.tag or i.image_id[:19] for i in self.images)
        return f"docker-archive of {tags}: {self.bytes_to_send / 1e6:.1f} MB of layers, {len(self.omit)} layers already on the host"

    def write_to(self, write) -> None:  # noqa: ANN001 - a bytes sink
        class Sink:
            def write(self, data: bytes) -> None:
                write(bytes(data))

        write_archive(list(self.images), Sink(), self.omit)  # type: ignore[arg-type]


def present_chain_ids(facts: HostFacts) -> set[str]:
    present: set[str] = set()
    for image in facts.docker.images:
        present.update(chain_ids(image.layers))
    return present


def missing_images(images: tuple[ImageSpec, ...], facts: HostFacts) -> tuple[ImageSpec, ...]:
    have = {i.id for i in facts.docker.images}
    return tuple(i for i in images if i.image_id not in have)


def load_missing_images(images: tuple[ImageSpec, ...], facts: HostFacts) -> Cmd | None:
    missing = missing_images(images, facts)
    if not missing:
        return None
    stream = ArchiveStream(missing, layers_to_omit(missing, present_chain_ids(facts)))
    return Cmd(("docker", "load", "-q"), f"load {len(missing)} image(s), {stream.bytes_to_send / 1e6:.1f} MB", stdin=stream)


# --- the relay: the operator's uplink carries a big image once ------------------------------
RELAY_CONTAINER = "clusterctl-relay"
RELAY_DIR = "/var/lib/clusterctl/relay"
# Smaller images (the 2 MB base) go to every host over SSH; the relay is for the filebox.
RELAY_MIN_BYTES = 10_000_000


@dataclass(frozen=True)
class Relay:
    """The first host that lacks the big images gets them over SSH, keeps the archive and
    serves it (BusyBox httpd on its cluster address); the others fetch it from there."""

    seed: str
    images: tuple[ImageSpec, ...]
    omit: frozenset[str]
    archive: str
    url: str
    running: bool

    @property
    def ids(self) -> str:
        return ",".join(i.image_id.split(":")[1][:12] for i in self.images)


def _big(ctx: Context) -> tuple[ImageSpec, ...]:
    return tuple(i for i in ctx.inputs.images if i.tar_bytes >= RELAY_MIN_BYTES)


def _address(ctx: Context, name: str) -> str | None:
    host = ctx.cluster.spec.host(name)
    facts = ctx.facts.get(name)
    return host.cluster_address or (facts.cluster_address() if facts else None)


def relay_plan(ctx: Context) -> Relay | None:
    """The relay this run uses, from the facts alone: one already serving these images, or one
    to start when two or more hosts lack them. None: every host gets everything over SSH."""
    spec = ctx.cluster.spec.filebox
    big = _big(ctx)
    if not spec.relay or not big or not ctx.inputs.base_image:
        return None
    want_ids = ",".join(i.image_id.split(":")[1][:12] for i in big)
    for name, facts in ctx.facts.items():
        c = facts.container(RELAY_CONTAINER)
        if c is not None and c.running and c.labels.get("clusterctl.relay.images") == want_ids:
            addr = _address(ctx, name)
            archive = c.labels.get("clusterctl.relay.archive", "")
            return Relay(name, big, frozenset(), archive, f"http://{addr}:{spec.relay_port}/{archive}", True)
    lacking = [h.name for h in ctx.cluster.spec.hosts if h.name in ctx.facts and missing_images(big, ctx.facts[h.name])]
    if len(lacking) < 2:
        return None
    seed = lacking[0]
    addr = _address(ctx, seed)
    if addr is None:
        return None
    # Leave out only layers every one of these hosts already holds.
    common = set.intersection(*(present_chain_ids(ctx.facts[n]) for n in lacking))
    images = tuple(i for i in big if any(i in missing_images(big, ctx.facts[n]) for n in lacking))
    omit = layers_to_omit(images, common)
    digest = hashlib.sha256(json.dumps([[i.image_id for i in images], sorted(omit)]).encode()).hexdigest()[:16]
    archive = f"{digest}.tar"
    return Relay(seed, images, omit, archive, f"http://{addr}:{spec.relay_port}/{archive}", False)


def relay_seed_cmds(ctx: Context, relay: Relay, addr_port: str, extra: tuple[ImageSpec, ...] = ()) -> list[Cmd]:
    """`extra`: the small images the seed lacks too, in the same stream (one stdin a script)."""
    stream = ArchiveStream(extra + relay.images, relay.omit)
    return [
        Cmd(
            ("sh", "-c", 'mkdir -p "$1" && tee "$1/$2.partial" | docker load -q && mv -f "$1/$2.partial" "$1/$2"',
             "sh", RELAY_DIR, relay.archive),
            f"load {len(stream.images)} image(s), {stream.bytes_to_send / 1e6:.1f} MB, keeping the archive to relay",
            stdin=stream,
        ),
        Cmd(
            ("docker", "run", "-d", "--name", RELAY_CONTAINER, "--net", "host",
             "--label", f"clusterctl.cluster={ctx.cluster.name}", "--label", "clusterctl.role=relay",
             "--label", f"clusterctl.relay.archive={relay.archive}", "--label", f"clusterctl.relay.images={relay.ids}",
             "-v", f"{RELAY_DIR}:/www:ro", "--entrypoint", "busybox", ctx.inputs.base_image,
             "httpd", "-f", "-p", addr_port, "-h", "/www"),
            f"serve it to the other hosts on {addr_port}",
        ),
    ]  # fmt: skip


def relay_fetch_cmd(ctx: Context, relay: Relay) -> Cmd:
    return Cmd(
        ("sh", "-c", 'docker run --rm --net host --entrypoint busybox "$1" wget -qO- "$2" | docker load -q',
         "sh", ctx.inputs.base_image, relay.url),
        f"fetch {len(relay.images)} image(s) from {relay.seed} over the cluster network",
    )  # fmt: skip


def relay_cleanup_cmds() -> list[Cmd]:
    return [
        Cmd(("docker", "rm", "-f", RELAY_CONTAINER), "stop the relay", check=False),
        Cmd(("rm", "-rf", RELAY_DIR), "remove the relayed archive"),
    ]


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
                cmds += relay_seed_cmds(ctx, relay, relay.url.split("/")[2], direct)
            else:
                if direct:
                    cmds.append(load_missing_images(direct, facts))  # type: ignore[arg-type]
                cmds.append(relay_fetch_cmd(ctx, relay))
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
