"""The operator's build cache (images/cache.py): the same inputs build once, a changed input
builds again, and a record that is not sound is built again, never trusted."""

from __future__ import annotations

import io
import json
import os
import shutil
import time

import pytest

from clusterctl.errors import UserError
from clusterctl.filebox import closure as closure_mod
from clusterctl.filebox.build import build_filebox
from clusterctl.images import archive
from clusterctl.images.app import app_on_base
from clusterctl.images.base import base_image
from clusterctl.images.cache import BuildCache, cache_dir

LONG_AGO = time.time() - 3600


def _settled(*paths) -> None:
    """Files last modified an hour ago (their ctime is still now: see Cache)."""
    for p in paths:
        os.utime(p, (LONG_AGO, LONG_AGO))


def Cache(directory):  # noqa: N802 - reads as the class
    """A cache without the racy window: the test's files were all changed just now."""
    return BuildCache(directory, racy_seconds=0)


@pytest.fixture
def binary(tmp_path):
    """A dynamic binary of this machine, copied where the test may touch it."""
    src = shutil.which("true") or "/usr/bin/true"
    dst = tmp_path / "bin" / "tool"
    dst.parent.mkdir()
    shutil.copy(src, dst)
    extra = tmp_path / "motd"
    extra.write_text("hello\n")
    _settled(dst, extra)
    return dst, extra


@pytest.fixture
def counted(monkeypatch):
    """How many source files were read whole, and how many times ldd ran."""
    counts = {"reads": 0, "ldd": 0}
    stream, run = archive._stream_file, closure_mod.subprocess.run

    def reading(entry):
        counts["reads"] += 1
        return stream(entry)

    def running(argv, *a, **kw):
        counts["ldd"] += argv[0] == "ldd"
        return run(argv, *a, **kw)

    monkeypatch.setattr(archive, "_stream_file", reading)
    monkeypatch.setattr(closure_mod.subprocess, "run", running)
    return counts


def _build(binary, cache):
    tool, extra = binary
    box = build_filebox([str(tool)], [f"{extra}:/etc/motd"], cache=cache)
    return box, box.version


def test_the_same_inputs_build_once(tmp_path, binary, counted):
    cache = Cache(tmp_path / "cache")
    first, version = _build(binary, cache)
    assert counted["reads"] > 0 and counted["ldd"] == 1 and cache.hits == 0
    reads = counted["reads"]
    again = Cache(tmp_path / "cache")  # another run
    second, same = _build(binary, again)
    assert same == version and second.manifest == first.manifest and second.image.image_id == first.image.image_id
    assert counted["reads"] == reads and counted["ldd"] == 1  # nothing read, ldd not asked
    assert again.hits == 2 and again.misses == 0  # the closure and the layer
    # And what it gives is what a build without a cache gives.
    assert build_filebox([str(binary[0])], [f"{binary[1]}:/etc/motd"]).version == version


def test_a_touched_or_changed_input_builds_again(tmp_path, binary, counted):
    tool, extra = binary
    cache = Cache(tmp_path / "cache")
    _, version = _build(binary, cache)
    # Same bytes, another mtime: read again (same digest).
    os.utime(extra, (LONG_AGO + 10, LONG_AGO + 10))
    reads = counted["reads"]
    _, touched = _build(binary, Cache(tmp_path / "cache"))
    assert touched == version and counted["reads"] > reads
    # Another content of the same size, its mtime put back: the inode's change time still tells.
    extra.write_text("HELLO\n")
    os.utime(extra, (LONG_AGO + 10, LONG_AGO + 10))
    _, changed = _build(binary, Cache(tmp_path / "cache"))
    assert changed != version
    assert changed == build_filebox([str(tool)], [f"{extra}:/etc/motd"]).version


def test_a_file_modified_just_now_is_never_served_from_the_cache(tmp_path, binary, counted):
    """A change within the same mtime tick as the build would go unseen: files changed in the
    last RACY_SECONDS (here all of them: just written) are read every time."""
    for _ in range(2):
        cache = BuildCache(tmp_path / "cache")
        reads = counted["reads"]
        _build(binary, cache)
        assert cache.hits == 0 and counted["reads"] > reads and counted["ldd"] >= 1
    assert not list((tmp_path / "cache").glob("*.json"))


def test_a_corrupt_record_is_built_again_and_rewritten(tmp_path, binary, counted):
    _, version = _build(binary, Cache(tmp_path / "cache"))
    records = sorted((tmp_path / "cache").glob("*.json"))
    assert len(records) == 2
    for bad in (b"", b"{not json", b'{"schema": 1}', b"\x00" * 10):
        for r in records:
            r.write_bytes(bad)
        cache = Cache(tmp_path / "cache")
        _, got = _build(binary, cache)
        assert got == version and cache.hits == 0 and cache.misses == 2
        assert all(json.loads(r.read_text())["value"] for r in records)  # sound again
    # A digest changed in a record without its checksum: refused.
    for r in records:
        doc = json.loads(r.read_text())
        if doc["kind"] == "layer":
            doc["value"]["diff_id"] = "sha256:" + "0" * 64
            r.write_text(json.dumps(doc))
    cache = Cache(tmp_path / "cache")
    _, got = _build(binary, cache)
    assert got == version and cache.misses == 1


def test_a_wrong_digest_that_passes_its_checksum_is_caught_where_the_layer_is_written_and_dropped(tmp_path, binary):
    """The digest is checked again whenever the layer's tar is written (shipping): a record
    that lies there (rewritten whole, checksum and all) is dropped, and the next build is right."""
    from clusterctl.images.cache import _checksum

    _, version = _build(binary, Cache(tmp_path / "cache"))
    (record,) = [r for r in (tmp_path / "cache").glob("*.json") if json.loads(r.read_text())["kind"] == "layer"]
    doc = json.loads(record.read_text())
    doc["value"]["diff_id"] = "sha256:" + "1" * 64
    doc["check"] = _checksum(doc["kind"], doc["key"], doc["value"])
    record.write_text(json.dumps(doc))
    box, lied = _build(binary, Cache(tmp_path / "cache"))
    assert lied == "1" * 64  # trusted at build time: its files did not change
    with pytest.raises(UserError, match="changed during the build"):
        archive.write_archive(box.image, io.BytesIO())
    assert not record.exists()
    _, got = _build(binary, Cache(tmp_path / "cache"))
    assert got == version


def test_base_and_app_layers_are_served_too_and_a_code_change_rebuilds_only_its_layer(tmp_path, binary, counted):
    app = tmp_path / "app"
    (app / "node_modules" / "dep").mkdir(parents=True)
    (app / "node_modules" / "dep" / "index.js").write_text("module.exports = 1\n")
    (app / "clusterctl-app.yaml").write_text("name: demo\ncommand: [sh, -c, 'echo hi']\n")
    (app / "main.js").write_text("console.log('hi')\n")
    _settled(*(p for p in app.rglob("*") if p.is_file()))

    def build(cache):
        box, _ = _build(binary, cache)
        base = base_image(box.manifest, box.version, cache=cache)
        return base, app_on_base(app, base, cache=cache)

    base, first = build(Cache(tmp_path / "cache"))
    cache = Cache(tmp_path / "cache")
    reads = counted["reads"]
    again_base, again = build(cache)
    assert again.image_id == first.image_id and again_base.image.image_id == base.image.image_id
    assert counted["reads"] == reads and cache.misses == 0
    assert cache.hits == 7  # filebox closure + layer, busybox's closure, applets and layer, two app layers
    (app / "main.js").write_text("console.log('ho')\n")
    _settled(app / "main.js")
    cache = Cache(tmp_path / "cache")
    _, changed = build(cache)
    assert changed.image_id != first.image_id and changed.diff_ids[:-1] == first.diff_ids[:-1]
    assert cache.misses == 1  # only the code layer


def test_the_cache_lives_in_the_operators_state_dir_and_a_dry_run_only_reads_it(tmp_path, monkeypatch, binary):
    from clusterctl.cli import _inputs
    from clusterctl.config.loader import load_text

    monkeypatch.setenv("CLUSTERCTL_STATE_DIR", str(tmp_path / "state"))
    assert cache_dir() == tmp_path / "state" / "cache" / "builds"
    cluster = load_text(f"name: c1\nhosts: [{{name: n1, address: 10.0.0.1}}]\nconsul: {{enabled: false}}\nfilebox: {{binaries: [{binary[0]}]}}\n", "c.yaml")
    monkeypatch.setattr(BuildCache.__init__, "__defaults__", (0, True))  # no racy window (see Cache)
    dry = _inputs(cluster, dry_run=True)  # plan, validate: nothing on disk
    assert not (tmp_path / "state").exists()
    real = _inputs(cluster, dry_run=False)
    assert real.filebox_version == dry.filebox_version and len(list(cache_dir().glob("*.json"))) >= 2
    before = sorted(p.stat().st_mtime_ns for p in cache_dir().glob("*.json"))
    assert _inputs(cluster, dry_run=True).filebox_version == real.filebox_version
    assert sorted(p.stat().st_mtime_ns for p in cache_dir().glob("*.json")) == before


def test_an_unwritable_cache_only_costs_the_build(tmp_path, binary):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory would be")
    cache = Cache(blocked / "cache")
    _, version = _build(binary, cache)
    assert version == build_filebox([str(binary[0])], [f"{binary[1]}:/etc/motd"]).version
