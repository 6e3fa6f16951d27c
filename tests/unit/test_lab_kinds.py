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


@pytest.mark.parametrize("name", ["", "..", ".", "../x", "a/b", "-x"])
def test_lab_down_refuses_a_name_that_is_not_one_lab_directory(tmp_path, name):
    """`lab down --name ..` once removed the whole state root (every cluster's keys)."""
    import os

    from tests.conftest import CLI

    root = tmp_path / "state"
    (root / "clusters" / "prod").mkdir(parents=True)
    (root / "clusters" / "prod" / "gossip.key").write_text("k")
    proc = CLI(dict(os.environ, CLUSTERCTL_STATE_DIR=str(root)))("lab", "down", "--name", name)
    assert proc.returncode == 2, proc.stderr
    assert "lab name:" in proc.stderr and "Traceback" not in proc.stderr
    assert (root / "clusters" / "prod" / "gossip.key").exists()


def test_a_host_that_is_not_ssh_is_one_line_without_a_traceback(tmp_path):
    """A port that answers with something else than SSH: paramiko logs "Error reading SSH
    protocol banner" with a traceback; the user sees only the host's one-line failure."""
    import os
    import socket
    import threading

    from tests.conftest import CLI

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" * 50)
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    f = tmp_path / "c.yaml"
    f.write_text(f"name: notssh\nssh: {{user: root, port: {port}, known_hosts: {tmp_path}/kh, connect_timeout: 3}}\n"
                 "hosts:\n  - {name: web1, address: 127.0.0.1}\n")
    try:
        proc = CLI(dict(os.environ, CLUSTERCTL_STATE_DIR=str(tmp_path / "state")))("plan", "-f", str(f), timeout=60)
    finally:
        server.close()
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "protocol banner" not in proc.stderr.split("web1", 1)[0], proc.stderr
    assert "web1" in proc.stderr


@pytest.mark.parametrize(("user", "message"), [("root", "root is the lab's user"), ("Ops", "invalid user name"), ("a b", "invalid user name")])
def test_a_lab_user_that_cannot_be_is_refused_before_anything_is_made(user, message):
    with pytest.raises(UserError, match=f"--user: .*{message}"):
        lab.up("unitbaduser", 1, user=user)
    assert not lab.lab_dir("unitbaduser").exists()


def test_a_lab_with_a_user_names_it_in_its_cluster_file(tmp_path):
    import yaml

    from clusterctl.config.loader import load_text

    key = tmp_path / "id_ed25519"
    key.write_text("k")
    hosts = [lab.LabHost("node1", "c1", "10.213.0.11")]
    text = lab.render_cluster_file("t", hosts, key, tmp_path / "known_hosts", "ops")
    assert yaml.safe_load(text)["ssh"]["user"] == "ops" and "passwordless sudo" in text
    assert load_text(text, str(tmp_path / "c.yaml")).spec.ssh.user == "ops"
    assert yaml.safe_load(lab.render_cluster_file("t", hosts, tmp_path / "k", tmp_path / "kh"))["ssh"]["user"] == "root"


def test_the_host_image_has_sudo_and_the_init_makes_the_user():
    """Lab hosts are containers of an image built once: a change to what builds it names a new image."""
    assert ",sudo" in lab._asset("build-host-image.sh").read_text()
    assert "LAB_USER" in lab._asset("host-init.sh").read_text()
