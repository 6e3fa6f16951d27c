"""Docker images as deterministic docker-archive tarballs (the `docker save` format), no engine needed.

Same content, same bytes: entries sorted, mtime 0, uid/gid 0, fixed modes, plain ustar headers.
So an unchanged layer keeps its diff_id across builds and machines, and shipping can leave out
the layer files a host already holds: moby's `docker load` (image/tarexport/load.go) looks up
each layer's chain ID first and opens the layer file only when that chain ID is missing.
Large files stream from disk in chunks; nothing is held in memory whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Union

from clusterctl.errors import UserError

if TYPE_CHECKING:
    from clusterctl.images.cache import BuildCache

BLOCK = 512
CHUNK = 1 << 20
EPOCH = "1970-01-01T00:00:00Z"
# docker reference grammar (distribution/reference), enough to refuse what `docker load` refuses.
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")


def norm_path(path: str) -> str:
    """An in-image path as tar stores it: relative to /, normalized, never escaping the root."""
    if not path or "\0" in path:
        raise ValueError(f"invalid image path {path!r}")
    p = posixpath.normpath("/" + path.lstrip("/"))
    if p == "/" or ".." in p.split("/"):
        raise ValueError(f"invalid image path {path!r}")
    return p.lstrip("/")


def exec_mode(st_mode: int) -> int:
    """Fixed modes: 0755 if the source is executable by anyone, else 0644."""
    return 0o755 if st_mode & 0o111 else 0o644


@dataclass(frozen=True)
class File:
    """A regular file: bytes in memory (small) or a source path streamed from disk (large)."""

    path: str
    mode: int = 0o644
    data: bytes | None = None
    source: str | None = None
    size: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", norm_path(self.path))
        if (self.data is None) == (self.source is None):
            raise ValueError(f"/{self.path}: give data or source, not both or neither")
        if self.data is not None and self.size != len(self.data):
            object.__setattr__(self, "size", len(self.data))

    @classmethod
    def from_bytes(cls, path: str, data: bytes, mode: int = 0o644) -> File:
        return cls(path, mode, data=bytes(data), size=len(data))

    @classmethod
    def from_source(cls, path: str, source: str | os.PathLike, mode: int | None = None) -> File:
        """Symlinks in `source` are followed: the layer holds the content, not the link."""
        src = os.fspath(source)
        try:
            st = os.stat(src)
        except OSError as exc:
            raise UserError(f"{src}: cannot read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{src}: not a regular file")
        return cls(path, exec_mode(st.st_mode) if mode is None else mode, source=src, size=st.st_size)


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", norm_path(self.path))


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", norm_path(self.path))
        if not self.target or "\0" in self.target:
            raise ValueError(f"invalid symlink target {self.target!r} for {self.path}")


Entry = Union[File, Dir, Symlink]


def _sort_key(entry: Entry) -> tuple[str, ...]:
    # By components, so a directory always comes before everything inside it.
    return tuple(entry.path.split("/"))


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if isinstance(entry, File):
        info.type, info.mode, info.size = tarfile.REGTYPE, entry.mode, entry.size
    elif isinstance(entry, Dir):
        info.type, info.mode = tarfile.DIRTYPE, entry.mode
    else:
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.target
    return info


def tar_header(info: tarfile.TarInfo) -> bytes:
    """Plain ustar; a pax record only when a name does not fit (long paths), never timestamps."""
    try:
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    except ValueError:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _padding(n: int) -> int:
    return -n % BLOCK


class Layer:
    """One image layer: its entries (parents added, sorted) and the uncompressed tar they make.

    diff_id is the sha256 of that tar; computing it reads every source file once, unless a
    build cache (images/cache.py) holds it for exactly these entries and source files.
    """

    def __init__(self, entries: Iterable[Entry], comment: str = "", cache: BuildCache | None = None) -> None:
        by_path: dict[str, Entry] = {}
        for entry in entries:
            old = by_path.get(entry.path)
            if old is not None and old != entry:
                raise ValueError(f"/{entry.path}: two different entries in one layer")
            by_path[entry.path] = entry
        for path in list(by_path):
            parent = posixpath.dirname(path)
            while parent:
                existing = by_path.get(parent)
                if existing is None:
                    by_path[parent] = Dir(parent)
                elif not isinstance(existing, Dir):
                    raise ValueError(f"/{path}: its parent /{parent} is not a directory")
                parent = posixpath.dirname(parent)
        self.entries: tuple[Entry, ...] = tuple(sorted(by_path.values(), key=_sort_key))
        self.comment = comment
        self._cache = cache
        self._cache_key: str | None = None

    def __repr__(self) -> str:
        return f"Layer({len(self.entries)} entries, {self.comment!r})"

    @cached_property
    def _headers(self) -> tuple[bytes, ...]:
        return tuple(tar_header(_tarinfo(e)) for e in self.entries)

    @cached_property
    def tar_size(self) -> int:
        """Bytes of the layer tar, known without reading any file."""
        total = 2 * BLOCK
        for entry, header in zip(self.entries, self._headers):
            total += len(header)
            if isinstance(entry, File):
                total += entry.size + _padding(entry.size)
        return total

    @cached_property
    def content_size(self) -> int:
        """What Docker reports for this layer: regular file bytes plus symlink target lengths.

        (overlay2 measures the unpacked layer with directory.Size: directories count 0, a
        symlink counts its lstat size.) Headers and padding of the tar are not counted.
        """
        total = 0
        for e in self.entries:
            if isinstance(e, File):
                total += e.size
            elif isinstance(e, Symlink):
                total += len(e.target.encode())
        return total

    def chunks(self) -> Iterator[bytes]:
        """The layer tar, in chunks of at most CHUNK bytes of file data."""
        for entry, header in zip(self.entries, self._headers):
            yield header
            if not isinstance(entry, File):
                continue
            if entry.data is not None:
                yield entry.data
            else:
                yield from _stream_file(entry)
            if pad := _padding(entry.size):
                yield b"\0" * pad
        yield b"\0" * (2 * BLOCK)

    @cached_property
    def diff_id(self) -> str:
        # Only a layer that reads files from disk is worth a lookup (one made in memory hashes faster).
        cache = self._cache if any(isinstance(e, File) and e.source is not None for e in self.entries) else None
        if cache is not None:
            self._cache_key = cache.layer_key(self)
            found = cache.layer_digest(self, self._cache_key)
            if found is not None:
                return found
        h = hashlib.sha256()
        for chunk in self.chunks():
            h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        if cache is not None:
            cache.remember_layer(self, self._cache_key, digest)
        return digest

    def forget_cached(self) -> None:
        """What the cache said of this layer proved wrong (its tar hashed otherwise): dropped."""
        if self._cache is not None and self._cache_key is not None:
            self._cache.drop(self._cache_key)

    def write_to(self, out: BinaryIO) -> str:
        """Write the layer tar; returns the digest of what was written."""
        h = hashlib.sha256()
        for chunk in self.chunks():
            h.update(chunk)
            out.write(chunk)
        return "sha256:" + h.hexdigest()


def _stream_file(entry: File) -> Iterator[bytes]:
    assert entry.source is not None
    seen = 0
    try:
        with open(entry.source, "rb") as f:
            while chunk := f.read(min(CHUNK, entry.size - seen + 1)):
                seen += len(chunk)
                if seen > entry.size:
                    break
                yield chunk
    except OSError as exc:
        raise UserError(f"{entry.source}: cannot read: {exc.strerror or exc}") from None
    if seen != entry.size:
        raise UserError(f"{entry.source} changed while the image was being built (was {entry.size} bytes): build again")


@dataclass(frozen=True)
class ImageConfig:
    """The runtime config Docker keeps with an image (the "config" object of its JSON)."""

    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    working_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    user: str = ""

    def to_json(self) -> dict:
        out: dict = {}
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in sorted(self.exposed_ports)}
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.volumes:
            out["Volumes"] = {v: {} for v in sorted(self.volumes)}
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = dict(sorted(self.labels.items()))
        return out


def check_tag(tag: str) -> str:
    """A repo:tag Docker accepts (no registry host, no digest)."""
    repo, sep, t = tag.rpartition(":")
    if not sep or not _REPO_RE.match(repo) or not _TAG_RE.match(t) or len(repo) > 255:
        raise ValueError(f"invalid image tag {tag!r}: want repo:tag, lower-case repo")
    return tag


def chain_ids(diff_ids: Sequence[str]) -> tuple[str, ...]:
    """Docker's layer chain IDs: the first is the diff_id, then sha256("<parent> <diff_id>")."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return tuple(out)


@dataclass(frozen=True)
class ImageSpec:
    layers: tuple[Layer, ...]
    config: ImageConfig = field(default_factory=ImageConfig)
    tag: str | None = None
    architecture: str = "amd64"
    os: str = "linux"
    created: str = EPOCH

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise ValueError("an image needs at least one layer")
        if self.tag is not None:
            check_tag(self.tag)

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.diff_id for layer in self.layers)

    @property
    def chain_ids(self) -> tuple[str, ...]:
        return chain_ids(self.diff_ids)

    @cached_property
    def config_json(self) -> bytes:
        doc = {
            "architecture": self.architecture,
            "config": self.config.to_json(),
            "created": self.created,
            "history": [{"created": self.created, "created_by": layer.comment or "clusterctl"} for layer in self.layers],
            "os": self.os,
            "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)},
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def image_id(self) -> str:
        """The sha256 of the config JSON: the image ID of the classic image store."""
        return "sha256:" + hashlib.sha256(self.config_json).hexdigest()

    @cached_property
    def manifest_json(self) -> bytes:
        """The OCI image manifest of this image (uncompressed layers)."""
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": self.image_id, "size": len(self.config_json)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer.diff_id, "size": layer.tar_size} for layer in self.layers],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @property
    def manifest_digest(self) -> str:
        """The image ID of the containerd image store (what `docker images` shows there)."""
        return "sha256:" + hashlib.sha256(self.manifest_json).hexdigest()

    @property
    def size_bytes(self) -> int:
        """The size Docker reports (`docker image inspect -f {{.Size}}`), see Layer.content_size."""
        return sum(layer.content_size for layer in self.layers)

    @property
    def tar_bytes(self) -> int:
        """Bytes of all layer tars: what a full archive carries (and what shipping a layer costs)."""
        return sum(layer.tar_size for layer in self.layers)


def image_id(image: ImageSpec) -> str:
    return image.image_id


def layers_to_omit(images: Sequence[ImageSpec], present_chain_ids: Iterable[str]) -> frozenset[str]:
    """diff_ids whose every use in `images` sits on a chain the target engine already holds.

    A diff_id is safe to leave out only by chain ID (the same layer on another parent is a
    different layer to Docker), so present_chain_ids come from the host's images' RootFS layers.
    """
    present = set(present_chain_ids)
    needed: set[str] = set()
    seen: set[str] = set()
    for img in images:
        for d, c in zip(img.diff_ids, img.chain_ids):
            seen.add(d)
            if c not in present:
                needed.add(d)
    return frozenset(seen - needed)


@dataclass(frozen=True)
class ArchiveResult:
    images: tuple[tuple[str | None, str], ...]  # (tag, image_id)
    written: tuple[str, ...]  # diff_ids whose layer.tar is in the archive
    omitted: tuple[str, ...]  # diff_ids listed in the manifest but left out
    bytes: int


class _Counter:
    def __init__(self, out: BinaryIO) -> None:
        self.out, self.n = out, 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.n += len(data)


def _member(out: _Counter, name: str, data: bytes | None = None, size: int | None = None, directory: bool = False) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.mode = 0o644
        info.size = len(data) if data is not None else (size or 0)
    out.write(tar_header(info))
    if data is not None:
        out.write(data)
        if pad := _padding(len(data)):
            out.write(b"\0" * pad)


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
# Uncompressed, so a layer blob's digest is its diff_id: the same name in both layouts.
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def blob_name(digest: str) -> str:
    return f"blobs/sha256/{_hex(digest)}"


def normalized_name(tag: str) -> str:
    """repo:tag as containerd names it: x:t is docker.io/library/x:t, a/x:t is docker.io/a/x:t."""
    repo, _, t = check_tag(tag).rpartition(":")
    first = repo.split("/")[0]
    if "/" in repo and ("." in first or first == "localhost"):
        return f"{repo}:{t}"  # names its registry
    return f"docker.io/{repo if '/' in repo else 'library/' + repo}:{t}"


def _index_entry(img: ImageSpec) -> dict:
    entry: dict = {"mediaType": OCI_MANIFEST, "digest": img.manifest_digest, "size": len(img.manifest_json)}
    if img.tag:
        # What `docker save` writes since 25: the containerd store names the image from these.
        tag = img.tag.rpartition(":")[2]
        entry["annotations"] = {"io.containerd.image.name": normalized_name(img.tag), "org.opencontainers.image.ref.name": tag}
    return entry


def write_archive(
    images: ImageSpec | Sequence[ImageSpec], fileobj: BinaryIO, omit_layers: Iterable[str] = frozenset(), _sizes_only: bool = False
) -> ArchiveResult:
    """Write an image archive in both layouts `docker save` writes since Docker 25, which every
    engine loads (20.10 and later, classic and containerd image stores): an OCI image layout
    (`oci-layout`, `index.json`, `blobs/sha256/...`) plus a `manifest.json` naming the same blobs.
    Each distinct blob is written once.

    Layers named in omit_layers (diff_ids, with or without "sha256:") stay listed in both
    manifests but their blobs are left out: load such an archive only where those layers' chain
    IDs already exist (the classic store skips a layer whose chain ID it holds; the containerd
    store skips unpacking a layer whose snapshot exists). Writes sequentially (fileobj may be a
    pipe into `docker load`).
    """
    imgs = [images] if isinstance(images, ImageSpec) else list(images)
    omit = {"sha256:" + _hex(d) for d in omit_layers}
    out = _Counter(fileobj)
    manifest = [
        {
            "Config": blob_name(img.image_id),
            "RepoTags": [img.tag] if img.tag else None,
            "Layers": [blob_name(d) for d in img.diff_ids],
        }
        for img in imgs
    ]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [_index_entry(img) for img in imgs]}
    _member(out, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    _member(out, "index.json", json.dumps(index, separators=(",", ":")).encode())
    _member(out, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
    _member(out, "blobs/", directory=True)
    _member(out, "blobs/sha256/", directory=True)
    done: set[str] = set()
    for img in imgs:
        for digest, data in ((img.image_id, img.config_json), (img.manifest_digest, img.manifest_json)):
            if digest not in done:
                done.add(digest)
                _member(out, blob_name(digest), data)
    written: list[str] = []
    omitted: list[str] = []
    for img in imgs:
        for layer in img.layers:
            d = layer.diff_id
            if d in done:
                continue
            done.add(d)
            if d in omit:
                omitted.append(d)
                continue
            _member(out, blob_name(d), size=layer.tar_size)
            if _sizes_only:
                out.n += layer.tar_size  # counted, never read
                written.append(d)
                continue
            got = layer.write_to(out)  # type: ignore[arg-type]
            if got != d:
                layer.forget_cached()
                raise UserError(f"a source file of layer {layer.comment or d[:19]} changed during the build: build again")
            written.append(d)
    out.write(b"\0" * (2 * BLOCK))
    return ArchiveResult(tuple((img.tag, img.image_id) for img in imgs), tuple(written), tuple(omitted), out.n)


class _Nowhere:
    def write(self, data: bytes) -> None:
        pass


def archive_size(images: Sequence[ImageSpec], omit_layers: Iterable[str] = frozenset()) -> int:
    """The exact bytes write_archive writes for these images, without reading a layer's files
    (so a receiver can tell a whole archive from a cut one)."""
    return write_archive(list(images), _Nowhere(), omit_layers, _sizes_only=True).bytes  # type: ignore[arg-type]


def write_archive_file(
    images: ImageSpec | Sequence[ImageSpec], path: Path, omit_layers: Iterable[str] = frozenset()
) -> ArchiveResult:
    """write_archive into a file, replaced atomically (a failed build leaves no half archive)."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            result = write_archive(images, f, omit_layers)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return result


# --- reading archives back (a filebox built earlier, tests) ---------------------------------


@dataclass(frozen=True)
class ArchivedImage:
    tags: tuple[str, ...]
    config: dict
    config_name: str
    layer_members: tuple[str, ...]

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(self.config["rootfs"]["diff_ids"])

    @property
    def labels(self) -> dict[str, str]:
        return (self.config.get("config") or {}).get("Labels") or {}


def read_archive(path: Path) -> list[ArchivedImage]:
    """The images a docker-archive holds (manifest.json and their configs)."""
    try:
        with tarfile.open(path, "r:") as tar:
            manifest = json.loads(_read_member(tar, "manifest.json"))
            return [
                ArchivedImage(
                    tuple(m.get("RepoTags") or ()),
                    json.loads(_read_member(tar, m["Config"])),
                    m["Config"],
                    tuple(m["Layers"]),
                )
                for m in manifest
            ]
    except (OSError, tarfile.TarError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a docker image archive ({exc})") from None


def _read_member(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    if f is None:
        raise KeyError(name)
    return f.read()


def read_layer_file(path: Path, layer_member: str, file_path: str, limit: int = 64 << 20) -> bytes | None:
    """One file's bytes from a layer inside an archive, or None if the layer or file is absent."""
    want = norm_path(file_path)
    with tarfile.open(path, "r:") as outer:
        try:
            inner_f = outer.extractfile(layer_member)
        except KeyError:
            return None
        if inner_f is None:
            return None
        with tarfile.open(fileobj=inner_f, mode="r:") as inner:
            for member in inner:
                if member.name.rstrip("/") == want and member.isfile():
                    if member.size > limit:
                        raise UserError(f"{path}: /{want} is larger than {limit} bytes")
                    f = inner.extractfile(member)
                    return f.read() if f else None
    return None

