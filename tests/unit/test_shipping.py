"""Shipping on both image stores: how each names an image, what the probe's facts say, and the
load command's own judgement of a load (it runs here under sh, with a stand-in `docker` on PATH
that answers as each engine answered on the lab: the real engines are in tests/e2e)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace

import pytest

from clusterctl.facts.parser import Image
from clusterctl.shipping import classic, containerd
from clusterctl.shipping.store import store_of
from clusterctl.shipping.stream import LOAD_SCRIPT, has_image, load_missing_images, missing_images
from tests.unit.test_relay_plan import BIG, SMALL, with_images

CONTAINERD_INFO = {"ServerVersion": "28.5.2", "Driver": "overlayfs", "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]}
CLASSIC_INFO = {"ServerVersion": "20.10.24", "Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]]}


def on_store(info: dict, images=()):
    f = with_images("10.0.0.1")
    store = containerd.STORE if "io.containerd.snapshotter.v1" in json.dumps(info) else classic.STORE
    held = tuple(Image(store.image_id(i), (i.tag,), {}, i.diff_ids) for i in images)
    return replace(f, docker=replace(f.docker, info=info, images=held))


def test_the_probe_tells_the_store_from_docker_info():
    assert on_store(CONTAINERD_INFO).docker.image_store == "containerd"
    assert on_store(CLASSIC_INFO).docker.image_store == "classic"
    assert store_of(on_store(CONTAINERD_INFO)) is containerd.STORE and store_of(on_store(CLASSIC_INFO)) is classic.STORE


def test_each_store_names_an_image_its_own_way():
    assert classic.STORE.image_id(SMALL) == SMALL.image_id  # the config digest
    assert containerd.STORE.image_id(SMALL) == SMALL.manifest_digest != SMALL.image_id
    for info in (CONTAINERD_INFO, CLASSIC_INFO):
        facts = on_store(info, (SMALL, BIG))
        assert missing_images((SMALL, BIG), facts) == () and has_image(BIG, facts)
        assert load_missing_images((SMALL, BIG), facts) is None
    # A containerd host's IDs are not config digests: compared as such, everything is "missing".
    wrong = replace(on_store(CLASSIC_INFO), docker=replace(on_store(CONTAINERD_INFO, (SMALL,)).docker, info=CLASSIC_INFO))
    assert missing_images((SMALL,), wrong) == (SMALL,)


def test_the_load_expects_the_ids_and_layers_of_the_hosts_store():
    for info, want in ((CONTAINERD_INFO, SMALL.manifest_digest), (CLASSIC_INFO, SMALL.image_id)):
        cmd = load_missing_images((SMALL,), on_store(info))
        assert cmd.argv[:5] == ("sh", "-c", LOAD_SCRIPT, "sh", "-")
        assert cmd.argv[5:] == (f"{SMALL.tag}={want} {json.dumps(list(SMALL.diff_ids), separators=(',', ':'))}",)


# A stand-in engine: `docker load` prints $LOAD_OUT and exits $LOAD_RC; inspect prints $INSPECT;
# `image rm` is recorded in $RM_LOG.
FAKE_DOCKER = r"""#!/bin/sh
case "$1 $2" in
"load -q") cat >/dev/null; printf '%s\n' "$LOAD_OUT"; exit "$LOAD_RC" ;;
"image inspect") [ -n "$INSPECT" ] && printf '%s\n' "$INSPECT" && exit 0; echo "No such image" >&2; exit 1 ;;
"image rm") echo "$4" >>"$RM_LOG"; exit 0 ;;
esac
exit 99
"""


@pytest.fixture
def fake_engine(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)

    def run(load_out: str, load_rc: int, inspect: str) -> tuple[int, str, list[str]]:
        cmd = load_missing_images((SMALL,), on_store(CONTAINERD_INFO))
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOAD_OUT=load_out, LOAD_RC=str(load_rc),
                   INSPECT=inspect, RM_LOG=str(tmp_path / "rm.log"))  # fmt: skip
        proc = subprocess.run(list(cmd.argv), input=b"archive", capture_output=True, env=env)
        rm = (tmp_path / "rm.log").read_text().split() if (tmp_path / "rm.log").exists() else []
        (tmp_path / "rm.log").unlink(missing_ok=True)
        return proc.returncode, proc.stderr.decode(), rm

    return run


def test_a_good_load_passes(fake_engine):
    good = f"{SMALL.manifest_digest} {json.dumps(list(SMALL.diff_ids), separators=(',', ':'))}"
    assert fake_engine(f"Loaded image: {SMALL.tag}", 0, good) == (0, "", [])


def test_an_error_printed_with_exit_0_fails_and_removes_the_broken_record(fake_engine):
    # Docker 28 on the containerd store, seen on the lab: "Loaded image", then an unpack error, exit 0.
    good = f"{SMALL.manifest_digest} {json.dumps(list(SMALL.diff_ids), separators=(',', ':'))}"
    code, _, removed = fake_engine(f"Loaded image: {SMALL.tag}\nError unpacking image {SMALL.tag}: layer not found", 0, good)
    assert code == 1 and removed == [SMALL.tag]


def test_an_image_that_is_not_whole_fails(fake_engine):
    code, err, removed = fake_engine(f"Loaded image: {SMALL.tag}", 0, f"{SMALL.manifest_digest} null")  # RootFS {}
    assert code == 1 and "did not load whole" in err and removed == [SMALL.tag]
    code, err, removed = fake_engine(f"Loaded image: {SMALL.tag}", 0, "")
    assert code == 1 and "engine has: nothing" in err and removed == [SMALL.tag]
    code, _, removed = fake_engine("open /var/lib/docker/tmp/x: no such file", 1, "")
    assert code == 1 and removed == [SMALL.tag]


def test_several_images_are_checked_in_one_inspect_and_a_bad_one_is_named(tmp_path):
    # A stand-in engine whose inspect prints the line kept for each ref it is given (in
    # $IMAGES/<ref>) and counts its calls.
    (tmp_path / "docker").write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        '"load -q") cat >/dev/null; echo Loaded ;;\n'
        '"image inspect") echo x >>"$CALLS"; shift 4; rc=0; for r; do f="$IMAGES/$(printf %s "$r" | tr /: __)"; '
        'if [ -f "$f" ]; then cat "$f"; else echo "No such image: $r" >&2; rc=1; fi; done; exit "$rc" ;;\n'
        '"image rm") echo "$4" >>"$RM_LOG" ;;\n'
        "esac\n"
    )
    (tmp_path / "docker").chmod(0o755)
    (tmp_path / "images").mkdir()
    cmd = load_missing_images((SMALL, BIG), on_store(CLASSIC_INFO))
    for pair in cmd.argv[5:]:
        ref, want = pair.split("=", 1)
        (tmp_path / "images" / ref.replace("/", "_").replace(":", "_")).write_text(want + "\n")
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", IMAGES=str(tmp_path / "images"),
               CALLS=str(tmp_path / "calls"), RM_LOG=str(tmp_path / "rm.log"))  # fmt: skip
    ok = subprocess.run(list(cmd.argv), input=b"archive", capture_output=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "calls").read_text().count("x") == 1
    (tmp_path / "calls").unlink()
    (tmp_path / "images" / BIG.tag.replace("/", "_").replace(":", "_")).write_text("sha256:other null\n")
    bad = subprocess.run(list(cmd.argv), input=b"archive", capture_output=True, env=env)
    assert bad.returncode == 1 and f"{BIG.tag} did not load whole" in bad.stderr.decode() and SMALL.tag not in bad.stderr.decode()
    assert sorted((tmp_path / "rm.log").read_text().split()) == sorted([SMALL.tag, BIG.tag])
