"""The relay: the operator's uplink carries a big image once. The first host that lacks the big
images gets them over SSH, keeps the archive and serves it (BusyBox httpd on its cluster
address); the others fetch it from there over the cluster network.

Nothing fetched is trusted: the archive is deterministic, so the operator knows its sha256
before any host serves it. A fetching host writes it into a private temp dir, checks it, and
only then loads it; a relay whose port is taken (or that serves other bytes) is a failed relay,
and the hosts that lack the images load them over SSH in the next pass. The phase's passes:
0 the seed loads and serves (a relay found running is from an earlier run: removed); 1 the
others fetch from a relay started in pass 0 and checked; 2 whoever still lacks an image gets it
over SSH, and the relay is removed. FileboxPhase.finish removes it also after a failed run.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

from clusterctl.commands.base import Cmd
from clusterctl.facts.parser import HostFacts
from clusterctl.images.archive import ImageSpec, layers_to_omit
from clusterctl.network.addresses import NoMeshAddress, talk_address
from clusterctl.phases.base import Context, ContextMemo
from clusterctl.shipping.store import image_ref
from clusterctl.shipping.stream import ArchiveStream, load_cmd, missing_images, present_chain_ids

RELAY_CONTAINER = "clusterctl-relay"
RELAY_DIR = "/var/lib/clusterctl/relay"
# Smaller images (the 2 MB base) go to every host over SSH; the relay is for the filebox.
RELAY_MIN_BYTES = 10_000_000
SEED_PASS, FETCH_PASS = 0, 1


@dataclass(frozen=True)
class Relay:
    seed: str
    # The images the other hosts fetch (the big ones), and every image in the archive (the
    # seed's stream: the big ones plus the small ones the seed lacked too).
    images: tuple[ImageSpec, ...]
    carried: tuple[ImageSpec, ...]
    omit: frozenset[str]
    sha256: str
    url: str
    running: bool

    @property
    def archive(self) -> str:
        return f"{self.sha256}.tar"

    @property
    def labels(self) -> dict[str, str]:
        """What the relay container carries so that the next pass can rebuild this plan (and its
        sha256) from the operator's own images: a label naming anything else is not trusted.
        Lists are "+"-joined: the probe reads a container's labels as one comma-joined string."""
        return {
            "clusterctl.relay.archive": self.archive,
            "clusterctl.relay.images": "+".join(_short(i.image_id) for i in self.carried),
            "clusterctl.relay.omit": "+".join(sorted(_short(d) for d in self.omit)),
        }


def _short(digest: str) -> str:
    return digest.split(":")[-1][:16]


def _big(ctx: Context) -> tuple[ImageSpec, ...]:
    return tuple(i for i in ctx.inputs.images if i.tar_bytes >= RELAY_MIN_BYTES)


def _address(ctx: Context, name: str) -> str | None:
    """Where the seed serves: the address the cluster talks on (the mesh's across providers)."""
    try:
        return talk_address(ctx.cluster, ctx.cluster.spec.host(name), ctx.facts.get(name))
    except NoMeshAddress:
        return None


def archive_sha256(images: tuple[ImageSpec, ...], omit: frozenset[str]) -> str:
    """The sha256 of the archive the seed receives and serves: the same bytes every time."""
    digest = hashlib.sha256()
    ArchiveStream(images, omit).write_to(digest.update)
    return digest.hexdigest()


def _make(ctx: Context, seed: str, carried: tuple[ImageSpec, ...], omit: frozenset[str], running: bool) -> Relay | None:
    addr = _address(ctx, seed)
    if addr is None:
        return None
    big = {i.image_id for i in _big(ctx)}
    sha = archive_sha256(carried, omit)
    port = ctx.cluster.spec.filebox.relay_port
    images = tuple(i for i in carried if i.image_id in big)
    return Relay(seed, images, carried, omit, sha, f"http://{addr}:{port}/{sha}.tar", running)


def _started(ctx: Context) -> Relay | None:
    """A relay serving this cluster's images, rebuilt from its labels and the operator's own
    images (so its sha256 is the operator's, never the host's)."""
    mine = {_short(i.image_id): i for i in ctx.inputs.images}
    for name, facts in ctx.facts.items():
        c = facts.container(RELAY_CONTAINER)
        if c is None or not c.running or c.labels.get("clusterctl.cluster") != ctx.cluster.name:
            continue
        ids = [x for x in c.labels.get("clusterctl.relay.images", "").split("+") if x]
        if not ids or any(x not in mine for x in ids):
            continue
        carried = tuple(mine[x] for x in ids)
        layers = {_short(d): d for i in carried for d in i.diff_ids}
        omitted = [x for x in c.labels.get("clusterctl.relay.omit", "").split("+") if x]
        if any(x not in layers for x in omitted):
            continue
        relay = _make(ctx, name, carried, frozenset(layers[x] for x in omitted), running=True)
        if relay is not None and relay.images and c.labels.get("clusterctl.relay.archive") == relay.archive:
            return relay
    return None


def _relay_plan(ctx: Context) -> Relay | None:
    spec = ctx.cluster.spec.filebox
    big = _big(ctx)
    if not spec.relay or not big or not ctx.inputs.base_image:
        return None
    if ctx.pass_index == FETCH_PASS:
        return _started(ctx)
    if ctx.pass_index != SEED_PASS:
        return None
    lacking = [h.name for h in ctx.cluster.spec.hosts if h.name in ctx.facts and missing_images(big, ctx.facts[h.name])]
    if len(lacking) < 2:
        return None
    if spec.relay == "auto" and all(operator_is_near(ctx, n) for n in lacking):
        return None  # each host's copy over SSH costs no uplink here, and is faster
    seed = lacking[0]
    # Leave out only layers every one of these hosts already holds.
    common = set.intersection(*(present_chain_ids(ctx.facts[n]) for n in lacking))
    images = tuple(i for i in big if any(i in missing_images(big, ctx.facts[n]) for n in lacking))
    extra = tuple(i for i in missing_images(ctx.inputs.images, ctx.facts[seed]) if i not in images)
    carried = extra + images
    return _make(ctx, seed, carried, frozenset(layers_to_omit(carried, common)), running=False)


def operator_is_near(ctx: Context, name: str) -> bool:
    """The operator reaches the host directly (no bastion, no ProxyCommand: ctx.inputs.direct_ssh)
    and its SSH client address is on one of the host's own networks: the same LAN (or machine)."""
    facts = ctx.facts.get(name)
    return name in ctx.inputs.direct_ssh and facts is not None and facts.on_a_network_of_mine(facts.ssh_client_address)


# Per Context: every host's plan (and wave) reads the same relay, its archive hashed once.
relay_plan = ContextMemo(_relay_plan)


# $1 the relay's address:port, $2 the archive's URL, $3 its sha256, $4 the image to check with.
# The relay serves only once it answers with the operator's bytes: httpd exits at once when its
# port is taken, and whoever holds the port instead does not have them.
SERVE_CHECK = r"""i=0
while [ "$i" -lt 20 ]; do
	got=$(docker exec clusterctl-relay busybox sh -c 'busybox wget -qO- "$1" | busybox sha256sum' sh "$2" 2>/dev/null) || got=""
	[ "${got%% *}" = "$3" ] && exit 0
	docker inspect -f '{{.State.Running}}' clusterctl-relay 2>/dev/null | grep -q true || break
	i=$((i + 1)); sleep 0.2
done
echo "clusterctl: the relay could not serve on $1 (port taken?); the other hosts load over SSH" >&2
docker rm -f clusterctl-relay >/dev/null 2>&1
exit 0
"""


def relay_seed_cmds(ctx: Context, relay: Relay, facts: HostFacts) -> list[Cmd]:
    stream = ArchiveStream(relay.carried, relay.omit)
    partial = f"{RELAY_DIR}/{relay.archive}.partial"
    keep = shlex.join(("sh", "-c", 'mkdir -p -m 0755 "$1" && exec tee "$2"', "sh", RELAY_DIR, partial))
    addr_port = relay.url.split("/")[2]
    labels = [x for k, v in relay.labels.items() for x in ("--label", f"{k}={v}")]
    base = image_ref(ctx.inputs.base_image, facts)
    return [
        load_cmd(
            stream.images, facts,
            f"load {len(stream.images)} image(s), {stream.bytes_to_send / 1e6:.1f} MB, keeping the archive to relay",
            source=keep, stdin=stream,
        ),
        Cmd(("mv", "-f", partial, f"{RELAY_DIR}/{relay.archive}"), "keep the archive whole for the others"),
        Cmd(
            ("docker", "run", "-d", "--name", RELAY_CONTAINER, "--net", "host",
             "--label", f"clusterctl.cluster={ctx.cluster.name}", "--label", "clusterctl.role=relay", *labels,
             "-v", f"{RELAY_DIR}:/www:ro", "--entrypoint", "busybox", base,
             "httpd", "-f", "-p", addr_port, "-h", "/www"),
            f"serve it to the other hosts on {addr_port}",
        ),
        Cmd(("sh", "-c", SERVE_CHECK, "sh", addr_port, relay.url, relay.sha256), "check that the relay serves these very bytes"),
    ]  # fmt: skip


# $1 the URL, $2 its sha256, $3 the image to fetch with. Writes the archive into a private dir
# beside the engine's data (not a tmpfs /tmp), checks it, then prints it for the load; a
# mismatch prints nothing, so the load fails and loads nothing.
FETCH = r"""umask 077; mkdir -p /var/lib/clusterctl
d=$(mktemp -d /var/lib/clusterctl/fetch.XXXXXX) || exit 1
trap 'rm -rf "$d"' EXIT
docker run --rm --net host --entrypoint busybox "$3" wget -qO- "$1" > "$d/archive" || { echo "clusterctl: could not fetch $1" >&2; exit 1; }
echo "$2  $d/archive" | sha256sum -c --status || { echo "clusterctl: $1 is not the archive the operator sent (sha256 differs); not loaded" >&2; exit 1; }
cat "$d/archive"
"""


def relay_fetch_cmd(ctx: Context, relay: Relay, facts: HostFacts) -> Cmd:
    """Fetch, check, load. Failure is tolerated: the images are then missing in the next pass,
    which loads them over SSH."""
    base = image_ref(ctx.inputs.base_image, facts)
    fetch = shlex.join(("sh", "-c", FETCH, "sh", relay.url, relay.sha256, base))
    load = load_cmd(
        relay.images, facts,
        f"fetch {len(relay.images)} image(s) from {relay.seed} over the cluster network, checked (sha256)", source=fetch,
    )
    return Cmd(load.argv, load.description, check=False)


def relay_cleanup_cmds() -> list[Cmd]:
    return [
        Cmd(("docker", "rm", "-f", RELAY_CONTAINER), "stop the relay", check=False),
        Cmd(("rm", "-rf", RELAY_DIR), "remove the relayed archive"),
    ]
