"""An app microcontainer: the app's folder as one layer on the base, a few MB in all.

The runtime (node, ...) comes from the filebox at run time, so the app layer holds only the
app and its node_modules, minus what node never loads (docs, tests, source maps), dropped by
fixed rules so the same folder always gives the same layer and the same image ID.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from clusterctl.errors import UserError
from clusterctl.filebox.build import ROLE_LABEL, VERSION_LABEL, Filebox, build_filebox, read_filebox
from clusterctl.images.archive import Dir, Entry, File, ImageConfig, ImageSpec, Layer, Symlink
from clusterctl.images.base import Base, base_image

if TYPE_CHECKING:
    from clusterctl.images.cache import BuildCache

APP_FILE = "clusterctl-app.yaml"
APP_ROOT = "/app"
SKIP_NAMES = frozenset({".git"})
NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*\Z")

# Stripped inside node_modules only; node never loads these.
_STRIP_DIRS = frozenset({"test", "tests", "__tests__", ".github"})
_STRIP_SUFFIXES = (".md", ".markdown", ".map", ".d.ts", ".d.mts", ".d.cts")
_STRIP_STEMS = frozenset({"readme", "changelog", "history", "changes"})
_STRIP_FILES = frozenset({".travis.yml", ".eslintrc", ".eslintrc.json", ".eslintrc.js", ".eslintrc.yml", ".eslintignore",
                          ".editorconfig", ".nycrc", ".npmignore", ".jshintrc", ".prettierrc"})  # fmt: skip


@dataclass(frozen=True)
class AppSpec:
    name: str
    command: tuple[str, ...]
    port: int | None = None


def _yaml_spec(path: Path) -> dict:
    """clusterctl-app.yaml, read as the cluster file is (YAML 1.2, every error on its line)."""
    from pydantic import BaseModel, ConfigDict, Field

    from clusterctl.config.loader import read_text_file, read_yaml, validate
    from clusterctl.config.models import Port

    class AppFile(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        name: str | None = None
        command: list[str] | None = Field(default=None, min_length=1)
        port: Port | None = None

    data, lines = read_yaml(read_text_file(path), str(path))
    return validate(AppFile, data or {}, lines, str(path)).model_dump(exclude_none=True)


def _package_json(app_dir: Path) -> dict | None:
    path = app_dir / "package.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object")
    return data


def read_app_spec(app_dir: Path) -> AppSpec:
    """From clusterctl-app.yaml (name, command, port), else from package.json (name, main)."""
    if not app_dir.is_dir():
        raise UserError(f"{app_dir}: not a directory")
    spec_file = app_dir / APP_FILE
    doc = _yaml_spec(spec_file) if spec_file.exists() else {}
    pkg = _package_json(app_dir)
    name = doc.get("name") or (pkg or {}).get("name") or app_dir.resolve().name
    name = str(name).rsplit("/", 1)[-1].lower()  # "@scope/pkg" -> "pkg"
    if not NAME_RE.match(name):
        raise UserError(
            f"{app_dir}: app name {name!r} is not a valid image name: set `name` in {APP_FILE} (a-z, 0-9, . _ -)"
        )
    command = doc.get("command")
    if command is None:
        main = (pkg or {}).get("main")
        if pkg is not None and not main and (app_dir / "index.js").exists():
            main = "index.js"  # node's own default
        if not main:
            raise UserError(f"{app_dir}: no command: set `command` in {APP_FILE} or `main` in package.json")
        command = ["node", os.path.normpath(str(main))]
    return AppSpec(name, tuple(command), doc.get("port"))


def strippable(rel_parts: Sequence[str], is_dir: bool) -> bool:
    """Whether a path (parts relative to the app folder) is dropped from the app layer."""
    if "node_modules" not in rel_parts[:-1]:
        return False
    name = rel_parts[-1]
    if is_dir:
        parent = rel_parts[-2]
        # node_modules/test is a package named "test", not a test folder.
        scope = parent.startswith("@") and len(rel_parts) > 2 and rel_parts[-3] == "node_modules"
        return parent != "node_modules" and not scope and name in _STRIP_DIRS
    lower = name.lower()
    return lower.endswith(_STRIP_SUFFIXES) or lower.split(".", 1)[0] in _STRIP_STEMS or name in _STRIP_FILES


def check_node_modules(app_dir: Path) -> None:
    pkg = _package_json(app_dir)
    deps = (pkg or {}).get("dependencies") or {}
    missing = [d for d in sorted(deps) if not (app_dir / "node_modules" / d).is_dir()]
    if missing:
        raise UserError(f"{app_dir}: node_modules lacks {', '.join(missing)}: run `npm ci --omit=dev` there first")


DEPS_DIR = "node_modules"


def app_layer(
    app_dir: Path,
    *,
    strip: bool = True,
    exclude: Collection[Path] = (),
    part: str | None = None,
    cache: BuildCache | None = None,
) -> Layer:
    """The app folder under /app: files, folders and symlinks as they are, .git skipped.

    part="deps" keeps only node_modules, part="code" everything but it, None both.
    """
    root = app_dir.resolve()
    skip = {p.resolve() for p in exclude}
    entries: list[Entry] = [Dir(APP_ROOT)]
    for cur, dirs, files in os.walk(root):
        cur_path = Path(cur)
        rel_cur = cur_path.relative_to(root).parts
        keep_dirs = []
        for name in sorted(dirs):
            full = cur_path / name
            parts = (*rel_cur, name)
            if name in SKIP_NAMES or full in skip or not _in_part(parts, part):
                continue
            if os.path.islink(full):
                entries.append(Symlink(f"{APP_ROOT}/{'/'.join(parts)}", os.readlink(full)))
                continue
            if strip and strippable(parts, True):
                continue
            entries.append(Dir(f"{APP_ROOT}/{'/'.join(parts)}"))
            keep_dirs.append(name)
        dirs[:] = keep_dirs
        for name in sorted(files):
            full = cur_path / name
            parts = (*rel_cur, name)
            if name in SKIP_NAMES or full in skip or not _in_part(parts, part):
                continue
            dest = f"{APP_ROOT}/{'/'.join(parts)}"
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                entries.append(Symlink(dest, os.readlink(full)))
            elif strip and strippable(parts, False):
                continue
            elif stat.S_ISREG(st.st_mode):
                entries.append(File.from_source(dest, full))
            else:
                raise UserError(f"{full}: not a file, folder or symlink (a socket or fifo?); remove it from the app folder")
    return Layer(entries, comment=f"clusterctl app: {root.name}" + (f" ({part})" if part else ""), cache=cache)


def _in_part(parts: tuple[str, ...], part: str | None) -> bool:
    if part is None:
        return True
    return (parts[0] == DEPS_DIR) == (part == "deps")


def app_layers(
    app_dir: Path, *, strip: bool = True, exclude: Collection[Path] = (), cache: BuildCache | None = None
) -> tuple[Layer, ...]:
    """Dependencies and code in separate layers: a code change then ships only the small code
    layer, while node_modules stays where it already is."""
    if (app_dir / DEPS_DIR).is_dir():
        return (
            app_layer(app_dir, strip=strip, exclude=exclude, part="deps", cache=cache),
            app_layer(app_dir, strip=strip, exclude=exclude, part="code", cache=cache),
        )
    return (app_layer(app_dir, strip=strip, exclude=exclude, cache=cache),)


def app_image(spec: AppSpec, layers: Layer | Sequence[Layer], base: Base, *, tag: str | None = None) -> ImageSpec:
    own = (layers,) if isinstance(layers, Layer) else tuple(layers)
    b = base.image
    labels = {ROLE_LABEL: "app", "clusterctl.app": spec.name, VERSION_LABEL: base.filebox_version}
    if spec.port:
        labels["clusterctl.port"] = str(spec.port)
    config = ImageConfig(
        entrypoint=b.config.entrypoint,
        cmd=spec.command,
        env=b.config.env,
        working_dir=APP_ROOT,
        labels=labels,
        exposed_ports=(f"{spec.port}/tcp",) if spec.port else (),
    )
    untagged = ImageSpec((*b.layers, *own), config, architecture=b.architecture)
    try:
        return replace(untagged, tag=tag or f"{spec.name}:{untagged.image_id.split(':')[1][:12]}")
    except ValueError as exc:
        raise UserError(str(exc)) from None


@dataclass(frozen=True)
class AppBuild:
    spec: AppSpec
    filebox: Filebox | None  # None when the filebox came from an archive (--filebox-from)
    base: Base
    app: ImageSpec

    @property
    def images(self) -> tuple[ImageSpec, ...]:
        return ((self.filebox.image,) if self.filebox else ()) + (self.base.image, self.app)


def build_app(
    app_dir: Path,
    *,
    filebox_from: Path | None = None,
    binaries: Sequence[str] = (),
    strip: bool = True,
    exclude: Collection[Path] = (),
    tag: str | None = None,
) -> AppBuild:
    """Filebox (built from `binaries`, default the command's program, or read from an archive),
    base, and the app image. Nothing is written; see archive.write_archive."""
    spec = read_app_spec(app_dir)
    check_node_modules(app_dir)
    filebox: Filebox | None = None
    if filebox_from is not None:
        if binaries:
            raise UserError("give --filebox-from or --binary, not both")
        info = read_filebox(filebox_from)
        manifest, version = info.manifest, info.version
    else:
        program = spec.command[0]
        if not binaries and "/" in program:
            raise UserError(
                f"command {program!r} is a path: say which binaries the filebox holds (--binary) or give --filebox-from"
            )
        filebox = build_filebox(list(binaries) or [program])
        manifest, version = filebox.manifest, filebox.version
    base = base_image(manifest, version)
    return AppBuild(spec, filebox, base, app_on_base(app_dir, base, spec=spec, strip=strip, exclude=exclude, tag=tag))


def app_on_base(
    app_dir: Path,
    base: Base,
    *,
    spec: AppSpec | None = None,
    strip: bool = True,
    exclude: Collection[Path] = (),
    tag: str | None = None,
    cache: BuildCache | None = None,
) -> ImageSpec:
    """The app image on a given base (a cluster's: its filebox is already on the hosts); its
    layers' digests from the build cache while the app's files are as they were."""
    if spec is None:
        spec = read_app_spec(app_dir)
        check_node_modules(app_dir)
    program = spec.command[0]
    if "/" not in program and program not in base.commands:
        raise UserError(
            f"command {program!r} is neither in the filebox ({', '.join(base.binaries)}) nor a BusyBox applet: "
            "add it to the filebox's binaries"
        )
    layers = app_layers(app_dir, strip=strip, exclude=exclude, cache=cache)
    return app_image(spec, layers, base, tag=tag)
