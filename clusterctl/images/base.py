"""The microcontainer base: static BusyBox plus the symlinks into a filebox, about 2 MB.

Two layers on purpose: BusyBox changes rarely and is shared by every base; the symlink layer
follows the filebox. The entrypoint refuses to start without the filebox volume, with a message
that says how to run it, instead of a bare "not found" from a dangling symlink.
"""

from __future__ import annotations

import os
import posixpath
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from clusterctl.errors import UserError
from clusterctl.filebox.build import MANIFEST_PATH, ROLE_LABEL, VERSION_LABEL, symlink_plan
from clusterctl.filebox.closure import resolve_closure
from clusterctl.images.archive import Dir, Entry, File, ImageConfig, ImageSpec, Layer, Symlink

if TYPE_CHECKING:
    from clusterctl.images.cache import BuildCache

BUSYBOX = "/bin/busybox"
ENTRYPOINT = "/bin/clusterctl-entrypoint"
REPO = "clusterctl/base"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXIT_NO_FILEBOX = 127

PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"
NSSWITCH = b"hosts: files dns\n"


def entrypoint_script() -> bytes:
    return (
        "#!/bin/sh\n"
        "# clusterctl microcontainer: the runtime lives in the filebox volume.\n"
        f"if [ ! -e {MANIFEST_PATH} ]; then\n"
        '\techo "clusterctl: this microcontainer needs its filebox: run it with'
        f' --volumes-from <filebox container> (no {MANIFEST_PATH})" >&2\n'
        f"\texit {EXIT_NO_FILEBOX}\n"
        "fi\n"
        'exec "$@"\n'
    ).encode()


def list_applets(busybox: str = BUSYBOX, cache: BuildCache | None = None) -> tuple[str, ...]:
    """`busybox --list-full`: applet paths such as usr/bin/wget (from the build cache while the
    binary is the same file)."""
    key = None
    if cache is not None and (stamp := cache.stamp(busybox)) is not None:
        key = cache.key("applets", [busybox, stamp])
        found = cache.get("applets", key)
        if isinstance(found, list) and found and all(isinstance(a, str) for a in found):
            cache.hits += 1
            return tuple(found)
        cache.misses += 1
    try:
        out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise UserError(f"{busybox}: cannot list its applets ({exc})") from None
    applets = tuple(line.strip() for line in out.splitlines() if line.strip())
    if cache is not None and key is not None and applets:
        cache.put("applets", key, list(applets))
    return applets


def check_busybox(busybox: str = BUSYBOX, cache: BuildCache | None = None) -> str:
    """The busybox binary's architecture; it must be static (nothing else is in the base)."""
    if not os.path.exists(busybox):
        raise UserError(f"{busybox} not found: apt-get install -y busybox-static (scripts/setup.sh installs it)")
    closure = resolve_closure(busybox, cache=cache)
    if not closure.static:
        raise UserError(f"{busybox} is dynamically linked; the base needs a static one: apt-get install -y busybox-static")
    return closure.arch


def busybox_layer(busybox: str, applets: Iterable[str], cache: BuildCache | None = None) -> Layer:
    """BusyBox, one absolute symlink per applet, a minimal /etc, /tmp, and the entrypoint."""
    home = "/" + BUSYBOX.lstrip("/")
    entries: list[Entry] = [
        File.from_source(home, busybox, 0o755),
        File.from_bytes(ENTRYPOINT, entrypoint_script(), 0o755),
        File.from_bytes("/etc/passwd", PASSWD),
        File.from_bytes("/etc/group", GROUP),
        File.from_bytes("/etc/nsswitch.conf", NSSWITCH),
        Dir("/tmp", 0o1777),
        Dir("/root", 0o700),
    ]
    for applet in applets:
        path = "/" + applet.strip("/")
        # Skip the binary itself and root-level oddities such as linuxrc.
        if path == home or posixpath.dirname(path) == "/":
            continue
        entries.append(Symlink(path, home))
    return Layer(entries, comment="clusterctl base: busybox", cache=cache)


def links_layer(plan: Sequence[tuple[str, str]]) -> Layer:
    return Layer([Symlink(path, target) for path, target in plan], comment="clusterctl base: filebox links")


@dataclass(frozen=True)
class Base:
    image: ImageSpec
    filebox_version: str
    # Names a command may use bare: BusyBox applets and the filebox's binaries.
    commands: frozenset[str]
    # The filebox's binaries by name (for messages).
    binaries: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        assert self.image.tag
        return self.image.tag


def base_image(
    manifest: Mapping,
    filebox_version: str,
    *,
    busybox: str = BUSYBOX,
    applets: Sequence[str] | None = None,
    cache: BuildCache | None = None,
) -> Base:
    """The base for microcontainers of this filebox (reads busybox from this machine, or what
    the build cache kept of it while it is the same file)."""
    arch = check_busybox(busybox, cache)
    if manifest.get("arch") and manifest["arch"] != arch:
        raise UserError(f"{busybox} is {arch} but the filebox is {manifest['arch']}")
    if applets is None:
        applets = list_applets(busybox, cache)
    try:
        plan = symlink_plan(manifest)
    except ValueError as exc:
        raise UserError(f"filebox manifest: {exc}") from None
    layers = (busybox_layer(busybox, applets, cache), links_layer(plan))
    config = ImageConfig(
        entrypoint=(ENTRYPOINT,),
        cmd=("sh",),
        env=(PATH_ENV,),
        labels={ROLE_LABEL: "base", VERSION_LABEL: filebox_version},
    )
    untagged = ImageSpec(layers, config, architecture=arch)
    image = replace(untagged, tag=f"{REPO}:{untagged.image_id.split(':')[1][:12]}")
    commands = frozenset(posixpath.basename(a) for a in applets)
    binaries = tuple(b["name"] for b in manifest.get("binaries", ()))
    return Base(image, filebox_version, commands | frozenset(binaries), binaries)
