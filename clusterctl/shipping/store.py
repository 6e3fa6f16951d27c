"""How a host's image store names and holds images: the part of shipping that differs by store.

Docker has two image stores. The classic one (graph drivers such as overlay2; every Docker
before 29 by default) names an image by the digest of its config. The containerd image store
(`"features": {"containerd-snapshotter": true}`, Docker 29's default on fresh installs) names it
by the digest of its manifest. Both skip a layer whose chain ID they already hold, which is what
lets an archive leave such layers out. The probe tells which store a host runs (`docker info`).
"""

from __future__ import annotations

from typing import Protocol

from clusterctl.facts.parser import HostFacts
from clusterctl.images.archive import ImageSpec


class ImageStore(Protocol):
    name: str

    def image_id(self, image: ImageSpec) -> str:
        """The ID this store gives `image` once loaded (`docker images --no-trunc`, `.Id`)."""
        ...


def store_of(facts: HostFacts) -> ImageStore:
    from clusterctl.shipping import classic, containerd

    return containerd.STORE if facts.docker.image_store == containerd.STORE.name else classic.STORE


def image_ref(image: ImageSpec, facts: HostFacts) -> str:
    """How a host's containers name an image clusterctl shipped: by its ID, which is its
    content, never by a tag that a later load could point elsewhere."""
    return store_of(facts).image_id(image)
