"""A BusyBox image for lab hosts without a registry: a rootfs tar for `docker import`.

Static /bin/busybox (Debian's busybox-static), a symlink per applet, /etc/passwd and /etc/group,
and /www for `httpd -h /www`. Tests and benches stream it into each lab host's engine.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Mapping

BUSYBOX = "/bin/busybox"
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"


def rootfs_tar(files: Mapping[str, bytes] | None = None, busybox: str = BUSYBOX) -> bytes:
    """The rootfs as an uncompressed tar; `files` adds more (path -> content, e.g. www/index.html)."""
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    with open(busybox, "rb") as f:
        binary = f.read()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add_dir(path: str) -> None:
            info = tarfile.TarInfo(path)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)

        def add_file(path: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        dirs = {"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "tmp", "www", "root"}
        extra = dict(files or {})
        for path in [*applets, *extra]:
            parts = path.split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        for d in sorted(dirs):
            add_dir(d)
        add_file("bin/busybox", binary, 0o755)
        for applet in sorted(set(applets) - {"bin/busybox"}):
            info = tarfile.TarInfo(applet)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "/bin/busybox", 0o777
            tar.addfile(info)
        add_file("etc/passwd", PASSWD)
        add_file("etc/group", GROUP)
        for path, data in sorted(extra.items()):
            add_file(path, data)
    return out.getvalue()
