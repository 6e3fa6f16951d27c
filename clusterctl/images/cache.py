"""The operator's build cache: what building the filebox, the base and app images found, kept so
that a run whose inputs did not change reads none of them again.

Building those images in memory (every `up`, to compare digests with what the hosts hold) reads
each input file whole to hash the layers, and asks ldd for each binary's libraries. A record
here keeps such a result, keyed by a hash of the builder's version and parameters and of the
(resolved path, size, mtime_ns, ctime_ns, inode) of every file it read: a changed input (a new
binary, a touched or replaced file) is another key, so it is built again.

Records are small JSON files, each carrying a checksum of its own content and the key it was
written for; one that cannot be read, is torn, fails its checksum or does not fit what it is
used for (a digest of the wrong form, a layer of another size) is built again and rewritten,
never trusted. A layer's digest is checked again whenever its tar is actually written (shipping
streams the layer and compares), and a record that turns out wrong there is dropped. A file
modified in the last RACY_SECONDS is not cached (it could change again within the same mtime
tick, unseen). Deleting the directory costs one build; it is a cache, never the truth.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from clusterctl import __version__

if TYPE_CHECKING:
    from clusterctl.images.archive import Layer

# Bumped whenever what a record means changes (the tar format, the closure's fields).
SCHEMA = 1
RACY_SECONDS = 2.0
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")


def file_stamp(path: str, racy_seconds: float = RACY_SECONDS) -> list | None:
    """[resolved path, size, mtime_ns, ctime_ns, inode] of a file, None if it cannot be read or
    was modified too recently to be told apart from a change within the same tick."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < racy_seconds * 1e9:
        return None
    return [real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _checksum(kind: str, key: str, value: object) -> str:
    return hashlib.sha256(json.dumps([kind, key, value], sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class BuildCache:
    """Records under one directory (the operator's state dir: cache_dir()). Counts what it
    served and what it had to build, so a caller (or a test) can tell. With write=False (dry
    runs: `plan`, `validate`) it serves what is there and writes nothing."""

    def __init__(self, directory: Path, racy_seconds: float = RACY_SECONDS, write: bool = True) -> None:
        self.directory = Path(directory)
        self.racy_seconds = racy_seconds
        self.write = write
        self.hits = 0
        self.misses = 0

    def stamp(self, path: str) -> list | None:
        return file_stamp(path, self.racy_seconds)

    # --- records --------------------------------------------------------------------------

    def key(self, kind: str, parts: object) -> str:
        doc = json.dumps([SCHEMA, __version__, kind, parts], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(doc.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, kind: str, key: str) -> object | None:
        """The value stored under key, or None when there is none or it is not sound."""
        try:
            doc = json.loads(self._path(key).read_text(encoding="utf-8"))
            if (
                isinstance(doc, dict)
                and doc.get("schema") == SCHEMA
                and doc.get("kind") == kind
                and doc.get("key") == key
                and doc.get("check") == _checksum(kind, key, doc.get("value"))
            ):
                return doc["value"]
        except (OSError, ValueError, TypeError, KeyError):
            pass
        return None

    def put(self, kind: str, key: str, value: object) -> None:
        """Written atomically (a temp file renamed); a cache that cannot be written is skipped."""
        if not self.write:
            return
        doc = {"schema": SCHEMA, "kind": kind, "key": key, "value": value, "check": _checksum(kind, key, value)}
        tmp = self.directory / f".{key}.{os.getpid()}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_text(json.dumps(doc, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self._path(key))
        except OSError:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # e.g. no directory there at all
                pass

    def drop(self, key: str) -> None:
        if not self.write:
            return
        try:
            self._path(key).unlink()
        except OSError:
            pass

    # --- layers ---------------------------------------------------------------------------

    def layer_key(self, layer: Layer) -> str | None:
        """Of the layer's tar: every entry's header (path, mode, size, type, link target), the
        stamp of each file read from disk and the hash of each file held in memory. None when a
        source cannot be stamped (changing, just changed, or unreadable): no caching then."""
        from clusterctl.images.archive import File

        parts: list = [layer.tar_size]
        for entry, header in zip(layer.entries, layer._headers):
            part: list = [hashlib.sha256(header).hexdigest()]
            if isinstance(entry, File):
                if entry.source is not None:
                    stamp = self.stamp(entry.source)
                    if stamp is None or stamp[1] != entry.size:
                        return None
                    part.append(stamp)
                else:
                    part.append(hashlib.sha256(entry.data or b"").hexdigest())
            parts.append(part)
        return self.key("layer", parts)

    def layer_digest(self, layer: Layer, key: str | None) -> str | None:
        if key is None:
            return None
        value = self.get("layer", key)
        if (
            isinstance(value, dict)
            and isinstance(value.get("diff_id"), str)
            and _DIGEST.match(value["diff_id"])
            and value.get("tar_size") == layer.tar_size
        ):
            self.hits += 1
            return value["diff_id"]
        self.misses += 1
        return None

    def remember_layer(self, layer: Layer, key: str | None, diff_id: str) -> None:
        if key is not None:
            self.put("layer", key, {"diff_id": diff_id, "tar_size": layer.tar_size})

    # --- closures (ldd) -------------------------------------------------------------------

    def closure_key(self, given: str, path: str, ldd: str, environ: Mapping[str, str]) -> str | None:
        """Of what ldd answers for this binary: the binary's stamp, ldd's, the loader's cache and
        preload files, the variables the loader reads and the PATH a bare name was found on.
        (The libraries found are stamped in the record and checked when it is used.)"""
        from shutil import which

        binary = self.stamp(path)
        if binary is None:
            return None
        ldd_path = which(ldd, path=environ.get("PATH")) or ldd
        loader_files = [self.stamp(p) if os.path.exists(p) else None for p in ("/etc/ld.so.cache", "/etc/ld.so.preload")]
        env = {k: environ.get(k, "") for k in ("PATH", "LD_LIBRARY_PATH", "LD_PRELOAD")}
        return self.key("closure", [given, path, binary, self.stamp(ldd_path), loader_files, env])

    def closure(self, key: str | None) -> dict | None:
        """The stored closure (Closure's fields) if every file it names is as it was."""
        if key is None:
            return None
        value = self.get("closure", key)
        if isinstance(value, dict) and isinstance(value.get("stamps"), list) and isinstance(value.get("closure"), dict):
            if all(isinstance(s, list) and len(s) == 2 and self.stamp(s[0]) == s[1] for s in value["stamps"]):
                self.hits += 1
                return value["closure"]
        self.misses += 1
        return None

    def remember_closure(self, key: str | None, closure: dict, files: Iterable[str]) -> None:
        stamps = [[f, self.stamp(f)] for f in files]
        if key is not None and all(s[1] is not None for s in stamps):
            self.put("closure", key, {"closure": closure, "stamps": stamps})


def cache_dir() -> Path:
    """The build cache under the operator's state dir ($CLUSTERCTL_STATE_DIR honoured)."""
    from clusterctl.state import state_root

    return state_root() / "cache" / "builds"
