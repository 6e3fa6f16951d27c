"""Which images a host lacks, the archive that carries only their missing layers, and the load
command that judges a load by what the engine then holds, not by `docker load`'s exit code
(Docker 28 on the containerd store can print "Error unpacking image" and still exit 0)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from clusterctl.commands.base import Cmd
from clusterctl.facts.parser import HostFacts
from clusterctl.images.archive import ImageSpec, chain_ids, layers_to_omit, write_archive
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


def load_missing_images(images: tuple[ImageSpec, ...], facts: HostFacts) -> Cmd | None:
    missing = missing_images(images, facts)
    if not missing:
        return None
    stream = ArchiveStream(missing, layers_to_omit(missing, present_chain_ids(facts)))
    return load_cmd(missing, facts, f"load {len(missing)} image(s), {stream.bytes_to_send / 1e6:.1f} MB", stdin=stream)
