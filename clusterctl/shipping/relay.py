"""The relay: the operator's uplink carries a big image once. The first host that lacks the big
images gets them over SSH, keeps the archive and serves it (BusyBox httpd on its cluster
address); the others fetch it from there over the cluster network."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass

from clusterctl.commands.base import Cmd
from clusterctl.facts.parser import HostFacts
from clusterctl.images.archive import ImageSpec, layers_to_omit
from clusterctl.phases.base import Context
from clusterctl.shipping.stream import ArchiveStream, load_cmd, missing_images, present_chain_ids

RELAY_CONTAINER = "clusterctl-relay"
RELAY_DIR = "/var/lib/clusterctl/relay"
# Smaller images (the 2 MB base) go to every host over SSH; the relay is for the filebox.
RELAY_MIN_BYTES = 10_000_000


@dataclass(frozen=True)
class Relay:
    seed: str
    images: tuple[ImageSpec, ...]
    omit: frozenset[str]
    archive: str
    url: str
    running: bool

    @property
    def ids(self) -> str:
        # The config digests: the same whichever store the seed runs.
        return ",".join(i.image_id.split(":")[1][:12] for i in self.images)


def _big(ctx: Context) -> tuple[ImageSpec, ...]:
    return tuple(i for i in ctx.inputs.images if i.tar_bytes >= RELAY_MIN_BYTES)


def _address(ctx: Context, name: str) -> str | None:
    host = ctx.cluster.spec.host(name)
    facts = ctx.facts.get(name)
    return host.cluster_address or (facts.cluster_address() if facts else None)


def relay_plan(ctx: Context) -> Relay | None:
    """The relay this run uses, from the facts alone: one already serving these images, or one
    to start when two or more hosts lack them. None: every host gets everything over SSH.

    The archive is the same bytes for every store (both layouts), so hosts of different stores
    share one relay."""
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


def relay_seed_cmds(ctx: Context, relay: Relay, addr_port: str, facts: HostFacts, extra: tuple[ImageSpec, ...] = ()) -> list[Cmd]:
    """`extra`: the small images the seed lacks too, in the same stream (one stdin a script)."""
    stream = ArchiveStream(extra + relay.images, relay.omit)
    partial = f"{RELAY_DIR}/{relay.archive}.partial"
    keep = shlex.join(("sh", "-c", 'mkdir -p "$1" && exec tee "$2"', "sh", RELAY_DIR, partial))
    return [
        load_cmd(
            stream.images, facts,
            f"load {len(stream.images)} image(s), {stream.bytes_to_send / 1e6:.1f} MB, keeping the archive to relay",
            source=keep, stdin=stream,
        ),
        Cmd(("mv", "-f", partial, f"{RELAY_DIR}/{relay.archive}"), "keep the archive whole for the others"),
        Cmd(
            ("docker", "run", "-d", "--name", RELAY_CONTAINER, "--net", "host",
             "--label", f"clusterctl.cluster={ctx.cluster.name}", "--label", "clusterctl.role=relay",
             "--label", f"clusterctl.relay.archive={relay.archive}", "--label", f"clusterctl.relay.images={relay.ids}",
             "-v", f"{RELAY_DIR}:/www:ro", "--entrypoint", "busybox", ctx.inputs.base_image,
             "httpd", "-f", "-p", addr_port, "-h", "/www"),
            f"serve it to the other hosts on {addr_port}",
        ),
    ]  # fmt: skip


def relay_fetch_cmd(ctx: Context, relay: Relay, facts: HostFacts) -> Cmd:
    fetch = shlex.join(("docker", "run", "--rm", "--net", "host", "--entrypoint", "busybox", ctx.inputs.base_image, "wget", "-qO-", relay.url))
    return load_cmd(
        relay.images, facts,
        f"fetch {len(relay.images)} image(s) from {relay.seed} over the cluster network", source=fetch,
    )


def relay_cleanup_cmds() -> list[Cmd]:
    return [
        Cmd(("docker", "rm", "-f", RELAY_CONTAINER), "stop the relay", check=False),
        Cmd(("rm", "-rf", RELAY_DIR), "remove the relayed archive"),
    ]
