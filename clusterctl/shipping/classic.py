"""The classic image store (graph drivers: overlay2 and the like): an image is its config digest."""

from __future__ import annotations

from dataclasses import dataclass

from clusterctl.images.archive import ImageSpec


@dataclass(frozen=True)
class ClassicStore:
    name: str = "classic"

    def image_id(self, image: ImageSpec) -> str:
        return image.image_id


STORE = ClassicStore()
