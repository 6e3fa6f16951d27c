"""The filebox phase: ship the filebox and base images, then create the filebox container.

Images travel as docker-archives streamed through the SSH exec channel into `docker load`, and
only the layers a host lacks cross the wire: a layer whose chain ID the host already holds is
listed in the archive's manifest but its layer.tar is left out (moby's loader skips it). The
filebox container is created, never started; microcontainers mount it with --volumes-from.
"""

from __future__ import annotations

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


def load_missing_images(images: tuple[ImageSpec, ...], facts: HostFacts) -> Cmd | None:
    have = {i.id for i in facts.docker.images}
    missing = tuple(i for i in images if i.image_id not in have)
    if not missing:
        return None
    stream = ArchiveStream(missing, layers_to_omit(missing, present_chain_ids(facts)))
    return Cmd(("docker", "load", "-q"), f"load {len(missing)} image(s), {stream.bytes_to_send / 1e6:.1f} MB", stdin=stream)


class FileboxPhase:
    name = "filebox"
    title = "Filebox and microcontainer base shipped; filebox container created"

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        inputs = ctx.inputs
        if not inputs.images:
            return []
        cmds: list[Cmd] = []
        load = load_missing_images(inputs.images, facts)
        if load:
            cmds.append(load)
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
