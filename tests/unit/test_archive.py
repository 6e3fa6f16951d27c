"""Deterministic layers and docker-archives, the base and app builders, and the image CLI (no engine)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clusterctl.errors import UserError
from clusterctl.images import archive as A
from clusterctl.images.archive import Dir, File, ImageConfig, ImageSpec, Layer, Symlink, chain_ids, layers_to_omit, write_archive

HAVE_TRUE = os.path.exists("/usr/bin/true")
HAVE_BUSYBOX = os.path.exists("/bin/busybox")


def _layer_bytes(layer: Layer) -> bytes:
    buf = io.BytesIO()
    layer.write_to(buf)
    return buf.getvalue()


def _files(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "run").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "run").chmod(0o700)
    (src / "sub" / "data.txt").write_bytes(b"x" * 1000)
    (src / "sub" / "data.txt").chmod(0o600)
    return src


def _layer(src: Path, reverse: bool = False) -> Layer:
    entries = [
        File.from_source("/app/run", src / "run"),
        File.from_source("/app/sub/data.txt", src / "sub" / "data.txt"),
        File.from_bytes("/etc/motd", b"hello\n"),
        Symlink("/usr/bin/node", "/opt/files/bin/node"),
        Dir("/tmp", 0o1777),
    ]
    return Layer(reversed(entries) if reverse else entries)


def test_layer_is_deterministic(tmp_path):
    src = _files(tmp_path)
    first = _layer(src)
    data = _layer_bytes(first)
    os.utime(src / "run", (12345, 67890))  # mtimes and entry order do not matter
    second = _layer(src, reverse=True)
    assert second.diff_id == first.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert _layer_bytes(second) == data
    assert first.tar_size == len(data)


def test_layer_tar_headers_are_plain(tmp_path):
    layer = _layer(_files(tmp_path))
    with tarfile.open(fileobj=io.BytesIO(_layer_bytes(layer))) as t:
        members = t.getmembers()
    names = [m.name for m in members]
    assert names == ["app", "app/run", "app/sub", "app/sub/data.txt", "etc", "etc/motd", "tmp", "usr", "usr/bin", "usr/bin/node"]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.pax_headers) == (0, 0, 0, "", "", {})
    modes = {m.name: m.mode for m in members}
    assert modes["app/run"] == 0o755 and modes["app/sub/data.txt"] == 0o644  # fixed modes
    assert modes["tmp"] == 0o1777 and modes["app"] == 0o755
    assert members[-1].issym() and members[-1].linkname == "/opt/files/bin/node"


def test_long_names_fall_back_to_pax_path_only():
    long = "/app/" + "/".join(["d" * 60] * 4) + "/f.js"
    data = _layer_bytes(Layer([File.from_bytes(long, b"x")]))
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        m = t.getmember(long.lstrip("/"))
    assert set(m.pax_headers) == {"path"} and m.mtime == 0


def test_content_size_is_dockers_measure(tmp_path):
    layer = _layer(_files(tmp_path))
    # files (18 + 1000 + 6 bytes) + the symlink's target length; directories count 0.
    assert layer.content_size == 18 + 1000 + 6 + len("/opt/files/bin/node")
    assert layer.tar_size > layer.content_size


def test_paths_are_checked_and_conflicts_refused():
    for bad in ("", "/", "/.", "a/\0b"):
        with pytest.raises(ValueError):
            A.norm_path(bad)
    with pytest.raises(ValueError, match="two different entries"):
        Layer([File.from_bytes("/a", b"1"), File.from_bytes("/a", b"2")])
    with pytest.raises(ValueError, match="not a directory"):
        Layer([File.from_bytes("/a", b"1"), File.from_bytes("/a/b", b"2")])
    Layer([File.from_bytes("/a", b"1"), File.from_bytes("/a", b"1")])  # the same entry twice is fine


def test_large_files_stream_in_bounded_chunks(tmp_path):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(3 * A.CHUNK + 7)
    layer = Layer([File.from_source("/big", big)])
    assert max(len(c) for c in layer.chunks()) <= A.CHUNK
    assert layer.tar_size == sum(len(c) for c in layer.chunks())


def test_a_source_that_changes_is_caught(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    layer = Layer([File.from_source("/f", f)])
    f.write_bytes(b"abcdef")
    with pytest.raises(UserError, match="changed while the image was being built"):
        _ = layer.diff_id


def _image(tag: str = "t/one:1") -> ImageSpec:
    base = Layer([File.from_bytes("/bin/x", b"x" * 10, 0o755)], comment="base")
    top = Layer([File.from_bytes("/app/a", b"a")], comment="app")
    cfg = ImageConfig(cmd=("x",), entrypoint=("/bin/x",), env=("PATH=/bin",), volumes=("/data",), working_dir="/app",
                      labels={"b": "2", "a": "1"}, exposed_ports=("3000/tcp",))  # fmt: skip
    return ImageSpec((base, top), cfg, tag=tag)


def test_image_config_and_ids():
    img = _image()
    doc = json.loads(img.config_json)
    assert doc["rootfs"] == {"type": "layers", "diff_ids": list(img.diff_ids)}
    assert doc["config"] == {
        "Cmd": ["x"], "Entrypoint": ["/bin/x"], "Env": ["PATH=/bin"], "Volumes": {"/data": {}}, "WorkingDir": "/app",
        "Labels": {"a": "1", "b": "2"}, "ExposedPorts": {"3000/tcp": {}},
    }  # fmt: skip
    assert doc["created"] == A.EPOCH and doc["os"] == "linux" and len(doc["history"]) == 2
    assert img.image_id == A.image_id(img) == "sha256:" + hashlib.sha256(img.config_json).hexdigest()
    assert _image("other/tag:2").image_id == img.image_id  # the tag is not part of the image
    d0, d1 = img.diff_ids
    assert chain_ids([d0, d1]) == (d0, "sha256:" + hashlib.sha256(f"{d0} {d1}".encode()).hexdigest())
    with pytest.raises(ValueError):
        _image("Upper/Case:1")


def _read(data: bytes) -> tuple[list, dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    return json.loads(files["manifest.json"]), files


def test_archive_shape_both_layouts():
    """What `docker save` writes since Docker 25: an OCI layout plus a manifest.json naming the
    same blobs, so the classic and the containerd image stores both load it."""
    img = _image()
    buf = io.BytesIO()
    res = write_archive(img, buf)
    manifest, files = _read(buf.getvalue())
    hexid = img.image_id.split(":")[1]
    blob = lambda d: "blobs/sha256/" + d.split(":")[1]  # noqa: E731
    assert manifest == [{"Config": blob(img.image_id), "RepoTags": ["t/one:1"], "Layers": [blob(d) for d in img.diff_ids]}]
    assert files[f"blobs/sha256/{hexid}"] == img.config_json
    for d, path in zip(img.diff_ids, manifest[0]["Layers"]):
        assert "sha256:" + hashlib.sha256(files[path]).hexdigest() == d
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    [entry] = index["manifests"]
    assert entry["digest"] == img.manifest_digest and entry["size"] == len(img.manifest_json)
    assert entry["annotations"] == {"io.containerd.image.name": "docker.io/t/one:1", "org.opencontainers.image.ref.name": "1"}
    oci = json.loads(files[blob(img.manifest_digest)])
    assert "sha256:" + hashlib.sha256(files[blob(img.manifest_digest)]).hexdigest() == img.manifest_digest
    assert oci["config"] == {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": img.image_id, "size": len(img.config_json)}
    assert [(x["digest"], x["size"]) for x in oci["layers"]] == [(d, len(files[blob(d)])) for d in img.diff_ids]
    assert res.written == img.diff_ids and res.omitted == () and res.bytes == len(buf.getvalue())


@pytest.mark.parametrize(
    ("tag", "name"),
    [("busybox:1", "docker.io/library/busybox:1"), ("clusterctl/base:ab", "docker.io/clusterctl/base:ab"),
     ("registry.example.com/team/app:2", "registry.example.com/team/app:2"), ("localhost/x:3", "localhost/x:3")],
)  # fmt: skip
def test_containerd_names_images_by_their_normalized_reference(tag, name):
    from clusterctl.images.archive import normalized_name

    assert normalized_name(tag) == name


def test_archive_is_byte_identical_when_rebuilt():
    a, b = io.BytesIO(), io.BytesIO()
    write_archive(_image(), a)
    write_archive(_image(), b)
    assert a.getvalue() == b.getvalue()


def test_omit_layers_keeps_the_manifest_but_not_the_files():
    img = _image()
    base = img.diff_ids[0]
    buf = io.BytesIO()
    res = write_archive(img, buf, omit_layers={base.split(":")[1]})  # with or without "sha256:"
    manifest, files = _read(buf.getvalue())
    assert manifest[0]["Layers"][0] == f"blobs/sha256/{base.split(':')[1]}"  # still listed
    assert manifest[0]["Layers"][0] not in files
    assert manifest[0]["Layers"][1] in files
    assert res.omitted == (base,) and res.written == (img.diff_ids[1],)


def test_shared_layers_are_written_once_and_omitted_by_chain():
    one = _image()
    two = ImageSpec((one.layers[0], Layer([File.from_bytes("/app/b", b"b")])), tag="t/two:1")
    buf = io.BytesIO()
    res = write_archive([one, two], buf)
    manifest, files = _read(buf.getvalue())
    assert len(manifest) == 2 and len(res.written) == 3
    layer_blobs = {p for m in manifest for p in m["Layers"]}
    assert len(layer_blobs) == 3 and layer_blobs <= set(files)
    # The engine holds image one: the shared base is omitted, two's own layer is not.
    assert layers_to_omit([two], one.chain_ids) == {one.diff_ids[0]}
    # The same diff_id on another parent is another layer to Docker: never omitted by diff_id alone.
    moved = ImageSpec((Layer([File.from_bytes("/z", b"z")]), one.layers[0]), tag="t/moved:1")
    assert layers_to_omit([moved], one.chain_ids) == frozenset()


# --- base and app --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def true_filebox():
    if not HAVE_TRUE:
        pytest.skip("needs /usr/bin/true")
    from clusterctl.filebox.build import build_filebox

    return build_filebox(["/usr/bin/true"])


@pytest.mark.skipif(not HAVE_BUSYBOX, reason="needs busybox-static (/bin/busybox)")
def test_base_image(true_filebox):
    from clusterctl.images.base import ENTRYPOINT, base_image

    base = base_image(true_filebox.manifest, true_filebox.version)
    img = base.image
    bb, links = img.layers
    bb_paths = {e.path: e for e in bb.entries}
    assert bb_paths["bin/busybox"].mode == 0o755
    assert isinstance(bb_paths["bin/sh"], Symlink) and bb_paths["bin/sh"].target == "/bin/busybox"
    assert "linuxrc" not in bb_paths and bb_paths["tmp"].mode == 0o1777
    script = bb_paths[ENTRYPOINT.lstrip("/")].data.decode()
    assert "needs its filebox" in script and "--volumes-from" in script and "exit 127" in script and 'exec "$@"' in script
    assert {e.path: e.target for e in links.entries if isinstance(e, Symlink)} == {
        s["path"].lstrip("/"): s["target"] for s in true_filebox.manifest["symlinks"]
    }
    assert img.config.entrypoint == (ENTRYPOINT,)
    assert img.config.labels == {"clusterctl.role": "base", "clusterctl.filebox.version": true_filebox.version}
    assert img.size_bytes <= 2_000_000, img.size_bytes
    assert "true" in base.commands and "wget" in base.commands
    # Another filebox: the busybox layer is shared, only the links layer differs.
    again = base_image(true_filebox.manifest, true_filebox.version)
    assert again.image.image_id == img.image_id and again.tag == base.tag


def _app_dir(tmp_path: Path) -> Path:
    app = tmp_path / "tiny"
    (app / "node_modules" / "dep" / "test").mkdir(parents=True)
    (app / ".git").mkdir()
    (app / ".git" / "HEAD").write_text("ref")
    (app / "index.js").write_text("console.log('hi')\n")
    (app / "package.json").write_text(json.dumps({"name": "@me/tiny", "dependencies": {"dep": "1"}}))
    (app / "node_modules" / "dep" / "index.js").write_text("module.exports = 1\n")
    (app / "node_modules" / "dep" / "README.md").write_text("docs\n")
    (app / "node_modules" / "dep" / "index.js.map").write_text("{}")
    (app / "node_modules" / "dep" / "test" / "t.js").write_text("test\n")
    (app / "node_modules" / "test").mkdir()  # a package named "test" stays
    (app / "node_modules" / "test" / "index.js").write_text("1\n")
    (app / "node_modules" / ".bin").mkdir()
    (app / "node_modules" / ".bin" / "dep").symlink_to("../dep/index.js")
    return app


def test_app_layer_strips_deterministically(tmp_path):
    from clusterctl.images.app import app_layer

    app = _app_dir(tmp_path)
    layer = app_layer(app)
    paths = {e.path for e in layer.entries}
    assert "app/index.js" in paths and "app/node_modules/dep/index.js" in paths
    assert "app/node_modules/test/index.js" in paths
    assert not any(p.startswith("app/.git") for p in paths)
    assert not {"app/node_modules/dep/README.md", "app/node_modules/dep/index.js.map", "app/node_modules/dep/test"} & paths
    assert next(e for e in layer.entries if e.path == "app/node_modules/.bin/dep").target == "../dep/index.js"
    for p in app.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (1, 1))
    assert app_layer(app).diff_id == layer.diff_id
    unstripped = {e.path for e in app_layer(app, strip=False).entries}
    assert "app/node_modules/dep/README.md" in unstripped


def test_app_spec_sources(tmp_path):
    from clusterctl.images.app import AppSpec, read_app_spec

    app = _app_dir(tmp_path)
    assert read_app_spec(app) == AppSpec("tiny", ("node", "index.js"), None)  # package.json, node's default main
    (app / "clusterctl-app.yaml").write_text("name: hi\ncommand: [node, srv.js]\nport: 3000\n")
    assert read_app_spec(app) == AppSpec("hi", ("node", "srv.js"), 3000)
    (app / "clusterctl-app.yaml").write_text("name: hi\nports: 3000\n")
    with pytest.raises(UserError, match="clusterctl-app.yaml:2: ports: unknown key"):
        read_app_spec(app)
    (app / "clusterctl-app.yaml").write_text("name: Bad Name\n")
    with pytest.raises(UserError, match="not a valid image name"):
        read_app_spec(app)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        # PyYAML's safe_load raised a bare ValueError (a traceback) for a date that is none.
        ("name: hi\nport: 2020-13-45\n", ":2: port: ", "valid integer"),
        ("name: hi\nport: !!timestamp 2020-13-45\n", ":2: ", "malformed YAML"),
        ("command: " + "[" * 1500 + "\n", ": ", "nested too deeply"),  # a RecursionError before
        ("name: hi\nname: ho\n", ":2: name: ", "duplicate key"),
        ("- a\n", ": ", "valid dictionary"),
    ],
)
def test_a_bad_app_file_is_one_line_naming_it(tmp_path, text, line, message):
    from clusterctl.images.app import read_app_spec

    app = _app_dir(tmp_path)
    (app / "clusterctl-app.yaml").write_text(text)
    with pytest.raises(UserError) as info:
        read_app_spec(app)
    shown = str(info.value)
    assert shown.startswith(f"{app / 'clusterctl-app.yaml'}{line}") and message in shown and "\n" not in shown, shown


def test_an_app_file_reads_yaml_1_2(tmp_path):
    from clusterctl.images.app import AppSpec, read_app_spec

    app = _app_dir(tmp_path)
    (app / "clusterctl-app.yaml").write_text("name: 2020-01-01\ncommand: [node, no]\nport: 0022\n")
    assert read_app_spec(app) == AppSpec("2020-01-01", ("node", "no"), 22)


def test_missing_node_modules_is_one_clear_line(tmp_path):
    from clusterctl.images.app import check_node_modules

    app = _app_dir(tmp_path)
    shutil.rmtree(app / "node_modules")
    with pytest.raises(UserError, match=r"node_modules lacks dep: run `npm ci --omit=dev`"):
        check_node_modules(app)


# --- the CLI, without an engine ----------------------------------------------------------


@pytest.mark.skipif(not (HAVE_TRUE and HAVE_BUSYBOX), reason="needs /usr/bin/true and /bin/busybox")
def test_cli_builds_filebox_then_app_from_it(tmp_path):
    from clusterctl.images.cli import filebox_app, image_app

    runner = CliRunner()
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("hosts:\n  - {name: a, address: 127.0.0.1}\nconsul: {enabled: false}\nfilebox:\n  binaries: [/usr/bin/true]\n")
    fb = tmp_path / "fb.tar"
    r = runner.invoke(filebox_app, ["build", "-f", str(cluster), "-o", str(fb)])
    assert r.exit_code == 0, r.output
    assert "clusterctl/filebox:" in r.output and " MB " in r.output and f"wrote {fb}" in r.output

    app = tmp_path / "tiny"
    app.mkdir()
    (app / "clusterctl-app.yaml").write_text("name: tiny\ncommand: ['true']\n")
    out = app / "images.tar"  # inside the app folder: must not end up in the app layer
    for _ in range(2):
        r = runner.invoke(image_app, ["build", str(app), "--filebox-from", str(fb), "-o", str(out)])
        assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("clusterctl/base:") and lines[1].startswith("tiny:") and "MB" in lines[1]
    manifest, files = _read(out.read_bytes())
    assert [m["RepoTags"][0].split(":")[0] for m in manifest] == ["clusterctl/base", "tiny"]
    app_layer_tar = files[manifest[1]["Layers"][-1]]
    with tarfile.open(fileobj=io.BytesIO(app_layer_tar)) as t:
        assert sorted(t.getnames()) == ["app", "app/clusterctl-app.yaml"]

    r = runner.invoke(image_app, ["build", str(app), "--filebox-from", str(fb)])
    assert isinstance(r.exception, UserError) and "-o FILE.tar" in str(r.exception)
    (app / "clusterctl-app.yaml").write_text("name: tiny\ncommand: [python3]\n")
    r = runner.invoke(image_app, ["build", str(app), "--filebox-from", str(fb), "-o", str(out)])
    assert isinstance(r.exception, UserError) and "neither in the filebox (true) nor a BusyBox applet" in str(r.exception)


def test_cli_filebox_errors_name_the_cluster_file(tmp_path):
    from clusterctl.images.cli import filebox_app

    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(f"hosts:\n  - {{name: a, address: 127.0.0.1}}\nconsul: {{enabled: false}}\nfilebox:\n  binaries: [{cluster}]\n")
    r = CliRunner().invoke(filebox_app, ["build", "-f", str(cluster), "-o", str(tmp_path / "x.tar")])
    assert isinstance(r.exception, UserError)
    assert str(r.exception).startswith(f"{cluster}: filebox: {cluster}: not an ELF binary")
    assert not (tmp_path / "x.tar").exists()
