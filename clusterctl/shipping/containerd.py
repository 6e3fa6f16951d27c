"""The containerd image store (Docker 24+ with the containerd snapshotter; Docker 29's default):
an image is the digest of its manifest, which clusterctl writes deterministically too."""

from __future__ import annotations

from dataclasses import dataclass

from clusterctl.images.archive import ImageSpec

# What `docker info` shows in DriverStatus on this store.
DRIVER_TYPE = "io.containerd.snapshotter.v1"


@dataclass(frozen=True)
class ContainerdStore:
    name: str = "containerd"

    def image_id(self, image: ImageSpec) -> str:
        return image.manifest_digest


STORE = ContainerdStore()
