"""Which images a host lacks, the archive that carries only their missing layers, and the load
command that judges a load by what the engine then holds, not by `docker load`'s exit code
(Docker 28 on the containerd store can print "Error unpacking image" and still exit 0)."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass

from clusterctl.commands.base import Cmd
from clusterctl.facts.parser import HostFacts
from clusterctl.images.archive import ImageSpec, archive_size, chain_ids, layers_to_omit, write_archive
from clusterctl.shipping.store import store_of


@dataclass(frozen=True)
class ArchiveStream:
    """An image archive written straight into a command's stdin (Cmd.stdin)."""

    images: tuple[ImageSpec, ...]
    omit: frozenset[str]

    @property
    def bytes_to_send(self) -> int:
        seen, total = set(), 0
        for img in self.images:
            for layer in img.layers:
                if layer.diff_id not in seen and layer.diff_id not in self.omit:
                    seen.add(layer.diff_id)
                    total += layer.tar_size
        return total

    def describe(self) -> str:
        tags = ", ".join(i.tag or i.image_id[:19] for i in self.images)
        return f"image archive of {tags}: {self.bytes_to_send / 1e6:.1f} MB of layers, {len(self.omit)} layers already on the host"

    @property
    def spool_name(self) -> str:
        """The file this archive is kept in on a host that received it ahead of its load: named
        by what it holds (the images and the layers left out), so a later run's plan finds it."""
        doc = {"images": [[i.tag, i.image_id] for i in self.images], "omit": sorted(self.omit)}
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16] + ".tar"

    def size(self) -> int:
        return archive_size(self.images, self.omit)

    def write_to(self, write) -> None:  # noqa: ANN001 - a bytes sink
        class Sink:
            def write(self, data: bytes) -> None:
                write(bytes(data))

        write_archive(list(self.images), Sink(), self.omit)  # type: ignore[arg-type]


def present_chain_ids(facts: HostFacts) -> set[str]:
    """Layer chains the host holds, from its clusterctl images (an image whose layers the
    engine does not report contributes none: its layers are sent again)."""
    present: set[str] = set()
    for image in facts.docker.images:
        present.update(chain_ids(image.layers))
    return present


def has_image(image: ImageSpec, facts: HostFacts) -> bool:
    want = store_of(facts).image_id(image)
    return any(i.id == want for i in facts.docker.images)


def missing_images(images: tuple[ImageSpec, ...], facts: HostFacts) -> tuple[ImageSpec, ...]:
    return tuple(i for i in images if not has_image(i, facts))


# $1: the command that writes the archive to stdout ("-": this script's own stdin); then pairs
# REF=WANT, WANT being `ID LAYERS` as `docker image inspect` prints them for a good load. A load
# that printed an error, or left any image other than expected, fails, and its images are
# removed so that the next run loads them again instead of trusting a broken record.
LOAD_SCRIPT = r"""src=$1; shift
if [ "$src" = - ]; then out=$(docker load -q 2>&1); rc=$?; else out=$(sh -c "$src" | docker load -q 2>&1); rc=$?; fi
printf '%s\n' "$out"
case "$out" in *rror*) rc=1 ;; esac
# Every image in one `docker image inspect` (a docker process each costs ~0.1 s on a busy host);
# image by image only to say which one did not load whole.
fmt='{{.Id}} {{json .RootFS.Layers}}'
if [ "$rc" = 0 ] && [ "$#" -gt 0 ]; then
	want=$(for pair; do printf '%s\n' "${pair#*=}"; done)
	got=$(for pair; do printf '%s\n' "${pair%%=*}"; done | xargs docker image inspect --format "$fmt" 2>/dev/null) || got=""
	if [ "$got" != "$want" ]; then
		for pair; do
			ref=${pair%%=*} want=${pair#*=}
			got=$(docker image inspect --format "$fmt" "$ref" 2>/dev/null) || got=""
			if [ "$got" != "$want" ]; then echo "clusterctl: $ref did not load whole (engine has: ${got:-nothing})" >&2; rc=1; fi
		done
	fi
fi
if [ "$rc" != 0 ]; then for pair; do docker image rm -f "${pair%%=*}" >/dev/null 2>&1; done; fi
exit "$rc"
"""


def expectations(images: tuple[ImageSpec, ...], facts: HostFacts) -> tuple[str, ...]:
    store = store_of(facts)
    return tuple(
        f"{i.tag or store.image_id(i)}={store.image_id(i)} {json.dumps(list(i.diff_ids), separators=(',', ':'))}" for i in images
    )


def load_cmd(images: tuple[ImageSpec, ...], facts: HostFacts, description: str, source: str = "-", stdin: object = None) -> Cmd:
    """Load an archive (stdin, or what `source` prints: a fixed command with its values quoted)
    and check that every image in it is there, whole, under the ID this host's store gives it."""
    return Cmd(("sh", "-c", LOAD_SCRIPT, "sh", source, *expectations(images, facts)), description, stdin=stdin)


def missing_stream(images: tuple[ImageSpec, ...], facts: HostFacts) -> ArchiveStream | None:
    """The archive of what the host lacks of these images (None: it has them all)."""
    missing = missing_images(images, facts)
    if not missing:
        return None
    return ArchiveStream(missing, layers_to_omit(missing, present_chain_ids(facts)))


def load_missing_images(images: tuple[ImageSpec, ...], facts: HostFacts) -> Cmd | None:
    """The load of what the host lacks: from the archive it received ahead (spooled), else
    streamed from here."""
    stream = missing_stream(images, facts)
    if stream is None:
        return None
    what = f"load {len(stream.images)} image(s), {stream.bytes_to_send / 1e6:.1f} MB"
    if stream.spool_name in facts.spooled:
        path = f"{SPOOL_DIR}/{stream.spool_name}"
        # Removed once read whole: a load that then fails loads over SSH next time.
        source = shlex.join(["sh", "-c", 'cat -- "$1" && rm -f -- "$1"', "sh", path])
        return load_cmd(stream.images, facts, f"{what}, received ahead into {path}", source=source)
    return load_cmd(stream.images, facts, what, stdin=stream)


def stale_spools(facts: HostFacts, keep: str | None) -> Cmd | None:
    """Removes the archives received ahead but `keep` (an earlier run's, for images rebuilt
    since, or for a load that then went another way)."""
    stale = sorted(n for n in facts.spooled if n != keep)
    if not stale:
        return None
    return Cmd(("rm", "-f", "--", *(f"{SPOOL_DIR}/{n}" for n in stale)), f"remove {len(stale)} image archive(s) received ahead and not used")


# Where a host keeps an image archive it received ahead of its load (while its engine restarts).
SPOOL_DIR = "/var/lib/clusterctl/spool"
# $1 the spool directory, $2 the archive's file name, $3 its exact size; then the command to run
# meanwhile (the engine's restart). stdin, the archive, goes to a file that gets its name only
# when whole; whatever goes wrong with the file, stdin is still read to its end (the sender
# never blocks) and the load goes over SSH as before. The exit status is the command's.
RECEIVE_WHILE = r"""dir=$1 name=$2 size=$3; shift 3
"$@" & pid=$!
ok=""
if (umask 077 && mkdir -p "$dir") && rm -f "$dir"/* && cat >"$dir/$name.part"; then
	got=$(wc -c <"$dir/$name.part") && [ "$got" -eq "$size" ] && mv -f "$dir/$name.part" "$dir/$name" && ok=1
fi
[ -n "$ok" ] || { rm -f "$dir/$name.part"; cat >/dev/null; }
wait "$pid"
"""


def receiving_meanwhile(cmd: Cmd, load: Cmd) -> Cmd:
    """`cmd` (no stdin of its own) run while the host receives `load`'s streamed archive into
    SPOOL_DIR: the transfer then costs no time of its own where `cmd` is a wait (the engine's
    restart), and `load` reads the file instead (load_missing_images, from the facts)."""
    stream = load.stdin
    if not isinstance(stream, ArchiveStream) or cmd.stdin is not None:
        raise ValueError("receiving_meanwhile takes a command without stdin and a streamed load")
    return Cmd(
        ("sh", "-c", RECEIVE_WHILE, "sh", SPOOL_DIR, stream.spool_name, str(stream.size()), *cmd.argv),
        f"{cmd.description}, receiving {len(stream.images)} image(s) ({stream.bytes_to_send / 1e6:.1f} MB) for the filebox phase meanwhile",
        stdin=stream,
    )
