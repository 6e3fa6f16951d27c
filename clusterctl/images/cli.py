"""`clusterctl image ...` and `clusterctl filebox ...`: build images as docker-archives, no engine needed.

Mounted by the main CLI, whose main() prints a UserError as one line (exit 2). Only typer is
imported here; the builders load inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from clusterctl.images.archive import ArchiveResult, ImageSpec

image_app = typer.Typer(
    help="Build microcontainer images (BusyBox base + app) without a Docker engine.", no_args_is_help=True
)
filebox_app = typer.Typer(help="Build the filebox: shared runtime binaries and their libraries.", no_args_is_help=True)

OutOpt = Annotated[
    Optional[Path], typer.Option("--output", "-o", help="Write the docker-archive (docker save format) here.")
]
LoadOpt = Annotated[bool, typer.Option("--load", help="Load into the local Docker engine, sending only layers it lacks.")]
DEFAULT_CLUSTER_FILE = Path("clusterctl.yaml")


@image_app.callback()
def _image() -> None:
    """Build microcontainer images (BusyBox base + app) without a Docker engine."""


@filebox_app.callback()
def _filebox() -> None:
    """Build the filebox: shared runtime binaries and their libraries."""


def _mb(n: int) -> str:
    # Docker's units: decimal megabytes.
    return f"{n / 1e6:.2f} MB"


def _print_images(images: list[ImageSpec]) -> None:
    width = max(len(i.tag or "") for i in images)
    for img in images:
        typer.echo(f"{img.tag or '-':<{width}}  {_mb(img.size_bytes):>10}  {len(img.layers)} layers  {img.image_id[:19]}")


def _need_target(output: Optional[Path], load: bool) -> None:
    from clusterctl.errors import UserError

    if output is None and not load:
        raise UserError("say where the images go: -o FILE.tar (a docker-archive) and/or --load (the local Docker engine)")


def _engine_chain_ids(docker: str) -> set[str]:
    """Chain IDs of every image in the local engine (from their RootFS diff_ids)."""
    import json
    import subprocess

    from clusterctl.images.archive import chain_ids

    ls = subprocess.run([docker, "image", "ls", "-q", "--no-trunc"], capture_output=True, text=True, timeout=60)
    ids = ls.stdout.split()
    if not ids:
        return set()
    proc = subprocess.run([docker, "image", "inspect", *sorted(set(ids))], capture_output=True, text=True, timeout=120)
    present: set[str] = set()
    for img in json.loads(proc.stdout or "[]"):
        present.update(chain_ids((img.get("RootFS") or {}).get("Layers") or []))
    return present


def load_into_engine(images: list[ImageSpec], docker: str | None = None) -> ArchiveResult:
    """Stream a docker-archive into `docker load`, leaving out layers the engine already holds."""
    import subprocess
    import tempfile

    from clusterctl.errors import UserError
    from clusterctl.images.archive import layers_to_omit, write_archive

    if docker is None:
        from clusterctl.lab.lab import docker_cli

        docker = docker_cli()
    omit = layers_to_omit(images, _engine_chain_ids(docker))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen([docker, "load"], stdin=subprocess.PIPE, stdout=out, stderr=err)
        except OSError as exc:
            raise UserError(f"{docker}: cannot run: {exc.strerror or exc}") from None
        assert proc.stdin is not None
        try:
            result = write_archive(images, proc.stdin, omit)
            proc.stdin.close()
        except BrokenPipeError:
            result = None
        code = proc.wait()
        if code != 0 or result is None:
            err.seek(0)
            last = (err.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise UserError(f"docker load failed (exit {code}): {last}")
    return result


def _emit(images: list[ImageSpec], output: Optional[Path], load: bool) -> None:
    from clusterctl.images.archive import write_archive_file

    _print_images(images)
    if output is not None:
        res = write_archive_file(images, output)
        typer.echo(f"wrote {output} ({_mb(res.bytes)}, {len(res.written)} layers)")
    if load:
        res = load_into_engine(images)
        sent, there = len(res.written), len(res.omitted)
        typer.echo(f"loaded {len(images)} images into the local engine: {sent} layers sent, {there} already there")


@image_app.command("build")
def image_build(
    app_dir: Annotated[Path, typer.Argument(help="The app's folder (clusterctl-app.yaml or package.json).")],
    filebox_from: Annotated[
        Optional[Path],
        typer.Option("--filebox-from", help="Use the filebox in this archive (from `clusterctl filebox build`)."),
    ] = None,
    binary: Annotated[
        Optional[list[str]],
        typer.Option("--binary", help="Build the filebox from these binaries (default: the command's program)."),
    ] = None,
    output: OutOpt = None,
    load: LoadOpt = False,
    tag: Annotated[Optional[str], typer.Option("--tag", help="The app image's repo:tag (default NAME:<image id>).")] = None,
    strip: Annotated[
        bool, typer.Option("--strip/--no-strip", help="Drop docs, tests and source maps from node_modules.")
    ] = True,
) -> None:
    """Build the app's microcontainer: filebox (unless --filebox-from), BusyBox base, app."""
    from clusterctl.images.app import build_app

    _need_target(output, load)
    exclude = [output, output.with_name(f".{output.name}.partial")] if output is not None else []
    built = build_app(app_dir, filebox_from=filebox_from, binaries=binary or (), strip=strip, exclude=exclude, tag=tag)
    _emit(list(built.images), output, load)


@filebox_app.command("build")
def filebox_build(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="Cluster file whose `filebox:` section lists binaries and files.")
    ] = DEFAULT_CLUSTER_FILE,
    output: OutOpt = None,
    load: LoadOpt = False,
) -> None:
    """Build the filebox image from the cluster file's filebox section."""
    from clusterctl.config.loader import load as load_cluster
    from clusterctl.errors import UserError
    from clusterctl.filebox.build import build_filebox

    _need_target(output, load)
    cluster = load_cluster(file)
    section = cluster.spec.filebox
    if not section.binaries:
        raise UserError(f"{cluster.path}: filebox.binaries is empty: list the runtime binaries, e.g. [/usr/bin/node]")
    try:
        box = build_filebox(section.binaries, section.files, base_dir=cluster.path.parent)
    except UserError as exc:
        raise UserError(f"{cluster.path}: filebox: {exc}") from None
    _emit([box.image], output, load)
