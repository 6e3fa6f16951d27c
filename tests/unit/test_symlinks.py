"""The filebox manifest and the symlink plan a microcontainer base is built from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clusterctl.errors import UserError
from clusterctl.filebox.build import (
    MANIFEST_PATH,
    ExtraFile,
    filebox_image,
    filebox_manifest,
    parse_file_spec,
    read_filebox,
    symlink_plan,
)
from clusterctl.filebox.closure import Closure, Lib
from clusterctl.images.archive import Dir, File, Symlink, write_archive_file

LOADER = "/lib64/ld-linux-x86-64.so.2"


def _closure(name: str, libs: list[tuple[str, str, str]], given: str | None = None, arch: str = "amd64") -> Closure:
    return Closure(
        given=given or f"/usr/bin/{name}",
        path=given or f"/usr/bin/{name}",
        real_path=f"/opt/real/{name}",
        arch=arch,
        interpreter=LOADER,
        libs=tuple(Lib(s, p, r, loader=(p == LOADER)) for s, p, r in libs),
    )


NODE = _closure("node", [
    ("ld-linux-x86-64.so.2", LOADER, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
    ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
    ("libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"),
])  # fmt: skip
CONSUL = _closure("consul", [
    ("ld-linux-x86-64.so.2", LOADER, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
    ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
    ("libpthread.so.0", "/lib/x86_64-linux-gnu/libpthread.so.0", "/usr/lib/x86_64-linux-gnu/libpthread.so.0"),
], given="/usr/local/bin/consul")  # fmt: skip


def test_plan_links_binaries_libraries_and_the_loader():
    manifest = filebox_manifest([NODE, CONSUL])
    plan = dict(symlink_plan(manifest))
    assert plan == {
        "/usr/bin/node": "/opt/files/bin/node",
        "/usr/bin/consul": "/opt/files/bin/consul",
        LOADER: "/opt/files/lib/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6": "/opt/files/lib/libc.so.6",
        "/lib/x86_64-linux-gnu/libstdc++.so.6": "/opt/files/lib/libstdc++.so.6",
        "/lib/x86_64-linux-gnu/libpthread.so.0": "/opt/files/lib/libpthread.so.0",
    }
    # Sorted, and the manifest records the very same plan.
    assert list(symlink_plan(manifest)) == sorted(plan.items())
    assert [(s["path"], s["target"]) for s in manifest["symlinks"]] == list(symlink_plan(manifest))


def test_manifest_records_names_given_and_original_paths():
    m = filebox_manifest([NODE, CONSUL])
    consul = m["binaries"][1]
    assert consul == {
        "name": "consul",
        "given": "/usr/local/bin/consul",
        "source": "/usr/local/bin/consul",
        "real_source": "/opt/real/consul",
        "path": "/opt/files/bin/consul",
        "interpreter": LOADER,
        "needs": ["ld-linux-x86-64.so.2", "libc.so.6", "libpthread.so.0"],
    }
    libs = {lib["soname"]: lib for lib in m["libs"]}
    assert libs["libstdc++.so.6"]["source"] == "/lib/x86_64-linux-gnu/libstdc++.so.6"
    assert libs["libstdc++.so.6"]["real_source"].endswith("libstdc++.so.6.0.30")
    assert libs["ld-linux-x86-64.so.2"]["loader"] is True and libs["libc.so.6"]["loader"] is False
    assert [lib["soname"] for lib in m["libs"]] == sorted(libs)  # one copy each, shared libc
    assert m["arch"] == "amd64" and m["root"] == "/opt/files"


def test_extra_files_link_at_their_dest(tmp_path):
    f = tmp_path / "ca.crt"
    f.write_text("cert")
    m = filebox_manifest([NODE], [ExtraFile(str(f), "/etc/ssl/certs/ca-certificates.crt")])
    assert dict(symlink_plan(m))["/etc/ssl/certs/ca-certificates.crt"] == "/opt/files/extra/etc/ssl/certs/ca-certificates.crt"


def test_parse_file_spec(tmp_path):
    assert parse_file_spec("/etc/ssl/certs/ca.crt") == ExtraFile("/etc/ssl/certs/ca.crt", "/etc/ssl/certs/ca.crt")
    assert parse_file_spec("conf/app.json:/etc/app.json", tmp_path) == ExtraFile(str(tmp_path / "conf/app.json"), "/etc/app.json")
    for bad in ("x:relative", "x:/opt/files/y", "x:", ":/etc/y", "x:/", "/", "x:/..", "x:/a/../..", "x:/a\0b"):
        with pytest.raises(UserError):
            parse_file_spec(bad, tmp_path)


def test_plan_refuses_conflicts_and_links_inside_the_filebox():
    m = filebox_manifest([NODE])
    clash = json.loads(json.dumps(m))
    clash["files"] = [{"dest": "/usr/bin/node", "path": "/opt/files/extra/usr/bin/node"}]
    with pytest.raises(ValueError, match="/usr/bin/node: linked to both"):
        symlink_plan(clash)
    inside = json.loads(json.dumps(m))
    inside["files"] = [{"dest": "/opt/files/x", "path": "/opt/files/extra/opt/files/x"}]
    with pytest.raises(ValueError, match="inside /opt/files"):
        symlink_plan(inside)
    nested = json.loads(json.dumps(m))
    nested["files"] = [{"dest": "/lib/x86_64-linux-gnu", "path": "/opt/files/extra/lib/x86_64-linux-gnu"}]
    with pytest.raises(ValueError, match="itself a link"):
        symlink_plan(nested)


def test_same_soname_from_different_files_is_refused(tmp_path):
    a, b = tmp_path / "a.so", tmp_path / "b.so"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    x = _closure("x", [("libz.so.1", "/lib/libz.so.1", str(a))])
    y = _closure("y", [("libz.so.1", "/usr/local/lib/libz.so.1", str(b))])
    with pytest.raises(UserError, match="libz.so.1: /usr/bin/x uses .* but /usr/bin/y uses"):
        filebox_manifest([x, y])
    # Same bytes at two paths: one copy, linked at both paths.
    b.write_bytes(b"one")
    m = filebox_manifest([x, y])
    assert m["libs"][0]["links"] == ["/lib/libz.so.1", "/usr/local/lib/libz.so.1"]
    assert {"/lib/libz.so.1", "/usr/local/lib/libz.so.1"} <= set(dict(symlink_plan(m)))


def test_binary_names_and_architectures_must_not_clash():
    with pytest.raises(UserError, match="two filebox binaries named node"):
        filebox_manifest([NODE, _closure("node", [], given="/opt/node/bin/node")])
    with pytest.raises(UserError, match="different architectures"):
        filebox_manifest([NODE, _closure("other", [], arch="arm64")])


@pytest.mark.skipif(not os.path.exists("/usr/bin/true"), reason="needs /usr/bin/true")
def test_filebox_image_layout_and_readback(tmp_path):
    from clusterctl.filebox.closure import resolve_closure

    box = filebox_image([resolve_closure("/usr/bin/true")])
    layer = box.image.layers[0]
    paths = {e.path: e for e in layer.entries}
    assert isinstance(paths["opt/files/bin/true"], File) and paths["opt/files/bin/true"].mode == 0o755
    assert isinstance(paths["opt/files/lib/libc.so.6"], File)
    assert isinstance(paths["opt/files/lib"], Dir)
    assert not any(isinstance(e, Symlink) for e in layer.entries)  # the filebox holds files only
    assert all(p == "opt" or p.startswith("opt/files") for p in paths)
    cfg = box.image.config
    assert cfg.volumes == ("/opt/files",)
    assert cfg.labels["clusterctl.role"] == "filebox"
    assert cfg.labels["clusterctl.filebox.version"] == box.version == layer.diff_id.split(":")[1]
    assert box.tag == f"clusterctl/filebox:{box.version[:12]}"
    assert cfg.cmd and cfg.cmd[0] == "/opt/files/lib/" + os.path.basename(box.manifest["binaries"][0]["interpreter"])
    manifest = json.loads(paths[MANIFEST_PATH.lstrip("/")].data)
    assert manifest == box.manifest
    out = tmp_path / "fb.tar"
    write_archive_file(box.image, out)
    info = read_filebox(out)
    assert (info.version, info.tag, info.arch, info.manifest) == (box.version, box.tag, box.image.architecture, box.manifest)
    # Built again: same version.
    assert filebox_image([resolve_closure("/usr/bin/true")]).version == box.version


def test_read_filebox_refuses_other_archives(tmp_path):
    from clusterctl.images.archive import ImageSpec, Layer

    out = tmp_path / "x.tar"
    write_archive_file(ImageSpec((Layer([File.from_bytes("/a", b"a")]),), tag="x:1"), out)
    with pytest.raises(UserError, match="holds 0 filebox images"):
        read_filebox(out)
    (tmp_path / "junk.tar").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a docker image archive"):
        read_filebox(Path(tmp_path / "junk.tar"))
