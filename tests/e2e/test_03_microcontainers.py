"""Filebox, BusyBox base and the hello app, built in Python and run on the LOCAL Docker engine.

Also proves the shipping claim: `docker load` accepts an archive without the layer files whose
chain IDs the engine already holds (and refuses one that lacks a layer it does not hold).
Everything created carries a unique tag or name and is removed at the end, pass or fail.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from clusterctl.images.archive import File, ImageConfig, ImageSpec, Layer, write_archive

pytestmark = pytest.mark.e2e

DOCKER = "/usr/bin/docker"
ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello"
BASE_TARGET = 2_000_000  # bytes, as Docker reports them (decimal MB)
HELLO_TARGET = 4_600_000


def _engine_ok() -> bool:
    try:
        return subprocess.run([DOCKER, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


if not _engine_ok():
    pytest.skip(f"`{DOCKER} info` fails: no local Docker engine", allow_module_level=True)


@dataclass
class Engine:
    uid: str
    containers: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def docker(self, *args: str, check: bool = True, timeout: float = 120, input: bytes | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([DOCKER, *args], capture_output=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")
        return proc

    def out(self, *args: str, **kw) -> str:
        return self.docker(*args, **kw).stdout.decode().strip()

    def name(self, what: str) -> str:
        n = f"clusterctl-e2e-{what}-{self.uid}"
        self.containers.append(n)
        return n

    def track(self, *images: ImageSpec) -> None:
        self.images.extend(i.tag for i in images if i.tag)

    def load_archive(self, images: list[ImageSpec], omit: frozenset[str] = frozenset()) -> subprocess.CompletedProcess:
        buf = io.BytesIO()
        write_archive(images, buf, omit)
        self.track(*images)
        return self.docker("load", input=buf.getvalue(), check=False)

    def cleanup(self) -> None:
        for c in reversed(self.containers):
            self.docker("rm", "-f", "-v", c, check=False)
        for i in reversed(self.images):
            self.docker("rmi", i, check=False)


@pytest.fixture(scope="module")
def engine():
    e = Engine(f"{os.getpid()}-{secrets.token_hex(3)}")
    try:
        yield e
    finally:
        e.cleanup()


@pytest.fixture(scope="module")
def hello_dir(tmp_path_factory) -> Path:
    if not shutil.which("npm"):
        pytest.skip("npm not installed")
    app = tmp_path_factory.mktemp("hello") / "hello"
    shutil.copytree(HELLO, app, ignore=shutil.ignore_patterns("node_modules"))
    proc = subprocess.run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=app, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"npm ci failed (npm registry unreachable?): {proc.stderr.strip()[-300:]}")
    return app


@dataclass(frozen=True)
class Built:
    filebox: ImageSpec
    base: ImageSpec
    app: ImageSpec
    has_consul: bool


@pytest.fixture(scope="module")
def built(hello_dir, engine) -> Built:
    from clusterctl.images.app import build_app

    consul = os.environ.get("CLUSTERCTL_CONSUL_BIN") or shutil.which("consul")
    binaries = ["/usr/bin/node"] + ([consul] if consul else [])
    b = build_app(hello_dir, binaries=binaries)
    assert b.filebox is not None
    repo = f"clusterctl-e2e-{engine.uid}"

    def tagged(img: ImageSpec, what: str) -> ImageSpec:
        return replace(img, tag=f"{repo}/{what}:{img.tag.rsplit(':', 1)[1]}")

    return Built(tagged(b.filebox.image, "filebox"), tagged(b.base.image, "base"), tagged(b.app, "hello"), bool(consul))


@pytest.fixture(scope="module")
def loaded(engine, built) -> str:
    """Load filebox + base, then the app sending only its own layer; create the filebox container."""
    from clusterctl.images.cli import load_into_engine

    engine.track(built.filebox, built.base, built.app)
    load_into_engine([built.filebox, built.base], DOCKER)
    res = load_into_engine([built.app], DOCKER)
    # The base's two layers were already in the engine: the app's archive left them out.
    assert set(res.omitted) == set(built.base.diff_ids) and res.written == built.app.diff_ids[len(built.base.diff_ids):]
    fb = engine.name("filebox")
    engine.docker("create", "--name", fb, built.filebox.tag)
    return fb


def test_loaded_images_are_what_we_built(engine, built, loaded):
    for img in (built.filebox, built.base, built.app):
        inspect = engine.out("image", "inspect", "-f", "{{.Id}} {{.Size}} {{json .RootFS.Layers}}", img.tag)
        image_id, size, layers = inspect.split(" ", 2)
        assert image_id == img.image_id
        assert layers == "[" + ",".join(f'"{d}"' for d in img.diff_ids) + "]"
        # size_bytes is what Docker reports, to the byte; the layer tars are larger (headers, padding).
        assert int(size) == img.size_bytes < img.tar_bytes


def test_sizes_meet_the_targets(engine, built, loaded, capsys):
    sizes = {img.tag: int(engine.out("image", "inspect", "-f", "{{.Size}}", img.tag)) for img in (built.filebox, built.base, built.app)}
    with capsys.disabled():
        for tag, size in sizes.items():
            print(f"\n  {tag}: {size / 1e6:.3f} MB as Docker reports it")
    assert sizes[built.base.tag] <= BASE_TARGET
    assert sizes[built.app.tag] <= HELLO_TARGET


def test_filebox_self_check_runs_node_through_its_own_loader(engine, built, loaded):
    assert engine.out("run", "--rm", built.filebox.tag).startswith("v")


def test_node_runs_from_the_filebox(engine, built, loaded):
    out = engine.out("run", "--rm", "--volumes-from", loaded, built.base.tag, "node", "-e", "console.log(1+1)")
    assert out == "2"


def test_consul_runs_from_the_filebox(engine, built, loaded):
    if not built.has_consul:
        pytest.skip("no consul binary: not on PATH and CLUSTERCTL_CONSUL_BIN not set (scripts/setup.sh installs it)")
    out = engine.out("run", "--rm", "--volumes-from", loaded, built.base.tag, "consul", "version")
    assert out.startswith("Consul v")


def test_hello_answers_on_port_3000(engine, built, loaded):
    name = engine.name("hello")
    engine.docker("run", "-d", "--name", name, "--volumes-from", f"{loaded}:ro", built.app.tag)
    deadline = time.monotonic() + 30
    answer = ""
    while time.monotonic() < deadline:
        # busybox wget -T segfaults here; `timeout` bounds the request instead.
        proc = engine.docker("exec", name, "timeout", "5", "wget", "-qO-", "http://127.0.0.1:3000", check=False)
        answer = proc.stdout.decode()
        if proc.returncode == 0:
            break
        time.sleep(0.3)
    logs = engine.docker("logs", name, check=False)
    assert answer == "Hello world\n", (logs.stdout + logs.stderr).decode()[-2000:]


def test_without_the_filebox_it_fails_with_a_clear_message(engine, built, loaded):
    proc = engine.docker("run", "--rm", built.app.tag, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 127
    assert "needs its filebox" in err and "--volumes-from <filebox container>" in err


def test_rebuilding_the_unchanged_app_gives_the_same_ids(hello_dir, built):
    from clusterctl.images.app import build_app

    again = build_app(hello_dir, binaries=["/usr/bin/node"] + ([os.environ.get("CLUSTERCTL_CONSUL_BIN") or shutil.which("consul")] if built.has_consul else []))
    assert again.app.diff_ids == built.app.diff_ids and again.app.image_id == built.app.image_id
    assert again.filebox.image.image_id == built.filebox.image_id


def _members(images: list[ImageSpec], omit: frozenset[str]) -> set[str]:
    buf = io.BytesIO()
    write_archive(images, buf, omit)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as t:
        return set(t.getnames())


def test_sparse_archive_loads_when_the_engine_holds_the_omitted_layers(engine, built):
    """The claim shipping rests on, against the real engine, with unique layers."""
    from clusterctl.images.base import busybox_layer, list_applets

    nonce = secrets.token_hex(8)
    busybox = busybox_layer("/bin/busybox", list_applets())
    shared = Layer([File.from_bytes("/shared.txt", f"shared {nonce}\n".encode())], comment="shared")

    def image(what: str, *layers: Layer) -> ImageSpec:
        cfg = ImageConfig(cmd=("/bin/cat", "/shared.txt", f"/{what}.txt"))
        return ImageSpec((busybox, *layers), cfg, tag=f"clusterctl-e2e-{engine.uid}/sparse-{what}:{nonce}")

    first = image("one", shared, Layer([File.from_bytes("/one.txt", b"one\n")]))
    second = image("two", shared, Layer([File.from_bytes("/two.txt", b"two\n")]))
    proc = engine.load_archive([first])
    assert proc.returncode == 0, proc.stderr

    omit = frozenset(second.diff_ids[:2])  # busybox + shared: the engine has both chains now
    members = _members([second], omit)
    assert not any(m.startswith(tuple(d.split(":")[1] for d in omit)) for m in members)
    proc = engine.load_archive([second], omit)
    assert proc.returncode == 0, proc.stderr
    assert engine.out("run", "--rm", second.tag) == f"shared {nonce}\ntwo"

    # Control: a layer the engine does NOT hold cannot be left out; load reads its file.
    fresh = Layer([File.from_bytes("/shared.txt", f"fresh {nonce}\n".encode())], comment="fresh")
    third = image("three", fresh, Layer([File.from_bytes("/three.txt", b"three\n")]))
    proc = engine.load_archive([third], frozenset({fresh.diff_id}))
    assert proc.returncode != 0
    assert fresh.diff_id.split(":")[1] in proc.stderr.decode()  # the blob it needed
