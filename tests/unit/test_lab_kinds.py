"""The lab's host kinds: --os lists, image names, and refusals before anything is created."""

from __future__ import annotations

import pytest

from clusterctl.errors import UserError
from clusterctl.lab import lab


def test_os_list_cycles_known_kinds_in_order():
    kinds = lab.parse_os_list("debian-12, debian-13,debian-sid")
    assert [k.name for k in kinds] == ["debian-12", "debian-13", "debian-sid"]
    assert [k.suite for k in kinds] == ["bookworm", "trixie", "sid"]
    # From Debian 13 on, the client is its own package.
    assert [("docker-cli" in k.docker_packages) for k in kinds] == [False, True, True]
    # Only Docker 24 and later have the containerd image store.
    assert [k.docker_major >= lab.CONTAINERD_STORE_MIN_DOCKER for k in kinds] == [False, True, True]


@pytest.mark.parametrize("bad", ["", "debian-11", "debian-12,ubuntu"])
def test_unknown_kinds_are_one_line(bad):
    with pytest.raises(UserError, match="--os"):
        lab.parse_os_list(bad)


def test_each_kind_has_its_own_image():
    tags = {lab.image_tag(k) for k in lab.HOST_OSES.values()}
    assert len(tags) == len(lab.HOST_OSES) and all(t.startswith(lab.IMAGE_REPO + ":") for t in tags)


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"image_store": "zfs"}, "--image-store"), ({"init": "openrc"}, "--init"), ({"oses": "debian-9"}, "--os")],
)
def test_bad_lab_options_are_refused_before_anything_is_made(kw, message):
    with pytest.raises(UserError, match=message):
        lab.up("unitbad", 1, **kw)
    assert not lab.lab_dir("unitbad").exists()
