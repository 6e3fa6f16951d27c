"""Assemble the filebox image: runtime binaries and their libraries under one root, with a manifest.

Microcontainers hold no runtime of their own; they reach this one through symlinks planned from
the manifest (symlink_plan), so the filebox and every base built from it agree on the layout.
The filebox's version is the digest of its one layer: same binaries, same version.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clusterctl.config.models import FILEBOX_ROOT, check_file_dest, split_file_spec
from clusterctl.errors import UserError
from clusterctl.filebox.closure import Closure, resolve_closure
from clusterctl.images.archive import (
    Dir,
    Entry,
    File,
    ImageConfig,
    ImageSpec,
    Layer,
    Symlink,
    norm_path,
    read_archive,
    read_layer_file,
)

if TYPE_CHECKING:
    from clusterctl.images.cache import BuildCache

ROOT = FILEBOX_ROOT
BIN_DIR = f"{ROOT}/bin"
LIB_DIR = f"{ROOT}/lib"
EXTRA_DIR = f"{ROOT}/extra"
MANIFEST_PATH = f"{ROOT}/manifest.json"
MANIFEST_SCHEMA = 1
REPO = "clusterctl/filebox"
ROLE_LABEL = "clusterctl.role"
VERSION_LABEL = "clusterctl.filebox.version"
# Where a binary is linked in a microcontainer (on the default PATH).
LINK_BIN_DIR = "/usr/bin"


@dataclass(frozen=True)
class ExtraFile:
    source: str  # absolute path on this machine (a file or a directory)
    dest: str  # absolute path in a microcontainer, linked to its copy under /opt/files/extra


def parse_file_spec(text: str, base_dir: Path | None = None) -> ExtraFile:
    """'SRC' or 'SRC:DEST'. SRC relative to base_dir (the cluster file's folder); DEST defaults to SRC."""
    try:
        src, dest = split_file_spec(text)
        p = Path(os.path.expanduser(src))
        if not p.is_absolute():
            p = (base_dir or Path.cwd()) / p
        source = os.path.abspath(p)
        return ExtraFile(source, check_file_dest(dest or source))
    except ValueError as exc:
        raise UserError(f"filebox file {text!r}: {exc}") from None


@dataclass(frozen=True)
class Filebox:
    image: ImageSpec
    manifest: dict

    @property
    def version(self) -> str:
        """The hex digest of the filebox layer (its label clusterctl.filebox.version)."""
        return self.image.layers[0].diff_id.split(":", 1)[1]

    @property
    def tag(self) -> str:
        assert self.image.tag
        return self.image.tag


def symlink_plan(manifest: Mapping) -> tuple[tuple[str, str], ...]:
    """(path, target) links a microcontainer needs to reach the filebox's content. Pure.

    A binary at /usr/bin/<name>; each library at the path ldd found it (the loader at the
    binary's PT_INTERP, which the kernel opens by that exact path); extra files at their DEST.
    """
    links: dict[str, str] = {}

    def add(path: str, target: str) -> None:
        path = "/" + norm_path(path)
        if path == ROOT or path.startswith(ROOT + "/"):
            raise ValueError(f"a link may not sit inside {ROOT}: {path}")
        if links.get(path, target) != target:
            raise ValueError(f"{path}: linked to both {links[path]} and {target}")
        links[path] = target

    for b in manifest.get("binaries", ()):
        add(f"{LINK_BIN_DIR}/{b['name']}", b["path"])
    for lib in manifest.get("libs", ()):
        for original in lib["links"]:
            add(original, lib["path"])
    for f in manifest.get("files", ()):
        add(f["dest"], f["path"])
    # A link inside another link's path would be shadowed (e.g. /usr/lib linked, /usr/lib/x too).
    for path in links:
        parent = posixpath.dirname(path)
        while parent != "/":
            if parent in links:
                raise ValueError(f"{path}: inside {parent}, which is itself a link")
            parent = posixpath.dirname(parent)
    return tuple(sorted(links.items()))


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if sa.st_size != sb.st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def filebox_manifest(closures: Sequence[Closure], extras: Sequence[ExtraFile] = ()) -> dict:
    """The manifest (without its symlinks) for these closures; checks names and architectures."""
    if not closures:
        raise UserError("the filebox needs at least one binary")
    arches = {c.arch for c in closures}
    if len(arches) > 1:
        found = ", ".join(f"{c.given} ({c.arch})" for c in closures)
        raise UserError(f"filebox binaries for different architectures: {found}")
    binaries: list[dict] = []
    names: dict[str, str] = {}
    libs: dict[str, dict] = {}
    lib_owner: dict[str, str] = {}
    for c in closures:
        if c.name in names:
            raise UserError(f"two filebox binaries named {c.name}: {names[c.name]} and {c.given}")
        names[c.name] = c.given
        binaries.append({
            "name": c.name,
            "given": c.given,
            "source": c.path,
            "real_source": c.real_path,
            "path": f"{BIN_DIR}/{c.name}",
            "interpreter": c.interpreter,
            "needs": [lib.soname for lib in c.libs],
        })  # fmt: skip
        for lib in c.libs:
            have = libs.get(lib.soname)
            if have is None:
                libs[lib.soname] = {
                    "soname": lib.soname,
                    "path": f"{LIB_DIR}/{lib.soname}",
                    "source": lib.path,
                    "real_source": lib.real_path,
                    "loader": lib.loader,
                    "links": [lib.path],
                }
                lib_owner[lib.soname] = c.given
                continue
            if not _same_file(have["real_source"], lib.real_path):
                raise UserError(
                    f"{lib.soname}: {lib_owner[lib.soname]} uses {have['real_source']} but {c.given} uses {lib.real_path};"
                    " one filebox holds one copy of each library"
                )
            if lib.path not in have["links"]:
                have["links"] = sorted([*have["links"], lib.path])
            have["loader"] = have["loader"] or lib.loader
    files = []
    for x in extras:
        files.append({"source": x.source, "dest": x.dest, "path": f"{EXTRA_DIR}{x.dest}"})
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "root": ROOT,
        "arch": closures[0].arch,
        "binaries": binaries,
        "libs": [libs[k] for k in sorted(libs)],
        "files": sorted(files, key=lambda f: f["dest"]),
    }
    try:
        links = symlink_plan(manifest)
    except ValueError as exc:
        raise UserError(f"filebox: {exc}") from None
    manifest["symlinks"] = [{"path": p, "target": t} for p, t in links]
    return manifest


def _extra_entries(x: ExtraFile) -> list[Entry]:
    where = f"{EXTRA_DIR}{x.dest}"
    try:
        st = os.stat(x.source)
    except OSError as exc:
        raise UserError(f"filebox file {x.source}: {exc.strerror or exc}") from None
    if stat.S_ISREG(st.st_mode):
        return [File.from_source(where, x.source)]
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"filebox file {x.source}: not a file or directory")
    out: list[Entry] = [Dir(where)]
    for root, dirs, files in os.walk(x.source):
        dirs.sort()
        rel_root = os.path.relpath(root, x.source)
        for name in sorted(dirs + files):
            src = os.path.join(root, name)
            dest = posixpath.normpath(posixpath.join(where, rel_root, name))
            if os.path.islink(src):
                out.append(Symlink(dest, os.readlink(src)))
                if name in dirs:
                    dirs.remove(name)  # os.walk does not follow it anyway
            elif os.path.isdir(src):
                out.append(Dir(dest))
            elif os.path.isfile(src):
                out.append(File.from_source(dest, src))
            else:
                raise UserError(f"filebox file {src}: not a file, directory or symlink")
    return out


def manifest_bytes(manifest: Mapping) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def filebox_image(closures: Sequence[Closure], extras: Sequence[ExtraFile] = (), cache: BuildCache | None = None) -> Filebox:
    """The filebox image for resolved closures: one layer under /opt/files, VOLUME /opt/files
    (its digest from the build cache when it holds one for exactly these files)."""
    manifest = filebox_manifest(closures, extras)
    entries: list[Entry] = [Dir(ROOT), Dir(BIN_DIR), Dir(LIB_DIR)]
    for c, b in zip(closures, manifest["binaries"]):
        entries.append(File.from_source(b["path"], c.real_path, 0o755))
    for lib in manifest["libs"]:
        entries.append(File.from_source(lib["path"], lib["real_source"]))
    for x in extras:
        entries.extend(_extra_entries(x))
    entries.append(File.from_bytes(MANIFEST_PATH, manifest_bytes(manifest)))
    layer = Layer(entries, comment=f"clusterctl filebox: {', '.join(b['name'] for b in manifest['binaries'])}", cache=cache)
    version = layer.diff_id.split(":", 1)[1]
    first = manifest["binaries"][0]
    loader = next((lib["path"] for lib in manifest["libs"] if lib["loader"]), None)
    # `docker create` needs a command; this one is a self-check (`docker run --rm <filebox>`
    # prints the first binary's version), run through the filebox's own loader.
    cmd: tuple[str, ...] = (first["path"], "--version")
    if first["interpreter"] and loader:
        cmd = (loader, "--library-path", LIB_DIR, *cmd)
    config = ImageConfig(
        cmd=cmd,
        volumes=(ROOT,),
        labels={
            ROLE_LABEL: "filebox",
            VERSION_LABEL: version,
            "clusterctl.filebox.binaries": ",".join(b["name"] for b in manifest["binaries"]),
        },
    )
    image = ImageSpec((layer,), config, tag=f"{REPO}:{version[:12]}", architecture=manifest["arch"])
    return Filebox(image, manifest)


def build_filebox(
    binaries: Sequence[str], files: Sequence[str] = (), *, base_dir: Path | None = None, cache: BuildCache | None = None
) -> Filebox:
    """Resolve each binary's ldd closure and assemble the filebox.

    A binary with a '/' is a path (relative to base_dir); a bare name is looked up on PATH.
    With a build cache (images/cache.py), ldd's answers and the layer's digest are reused
    while none of the files they came from changed.
    """
    if not binaries:
        raise UserError("the filebox needs at least one binary (filebox.binaries)")
    closures = []
    for b in binaries:
        if "/" in b and not os.path.isabs(os.path.expanduser(b)) and base_dir is not None:
            b = str(base_dir / b)
        closures.append(resolve_closure(b, cache=cache))
    extras = [parse_file_spec(f, base_dir) for f in files]
    return filebox_image(closures, extras, cache)


@dataclass(frozen=True)
class FileboxInfo:
    """A filebox read back from an archive: enough to build a base on it."""

    tag: str | None
    version: str
    arch: str
    manifest: dict


def read_filebox(archive: Path) -> FileboxInfo:
    """The filebox in a docker-archive written by `clusterctl filebox build`."""
    images = [i for i in read_archive(archive) if i.labels.get(ROLE_LABEL) == "filebox"]
    if len(images) != 1:
        raise UserError(f"{archive}: holds {len(images)} filebox images, want exactly 1 (label {ROLE_LABEL}=filebox)")
    img = images[0]
    data = read_layer_file(archive, img.layer_members[-1], MANIFEST_PATH)
    if data is None:
        raise UserError(f"{archive}: the filebox layer or its {MANIFEST_PATH} is not in the archive")
    try:
        manifest = json.loads(data)
    except ValueError:
        raise UserError(f"{archive}: {MANIFEST_PATH} is not JSON") from None
    if manifest.get("schema") != MANIFEST_SCHEMA:
        schema = manifest.get("schema")
        raise UserError(f"{archive}: filebox manifest schema {schema!r}, this clusterctl reads {MANIFEST_SCHEMA}")
    tag = img.tags[0] if img.tags else None
    return FileboxInfo(tag, img.labels.get(VERSION_LABEL, ""), img.config.get("architecture", ""), manifest)
