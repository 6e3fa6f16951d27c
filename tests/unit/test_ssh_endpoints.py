"""Endpoints resolved from the cluster file and an ssh config file (Host blocks, ProxyJump)."""

from clusterctl.config.loader import load_text
from clusterctl.transport.ssh import resolve_endpoints


def test_ssh_config_and_bastion_shorthand_resolve(tmp_path):
    conf = tmp_path / "ssh_config"
    conf.write_text("Host node1\n  User admin\n  Port 2222\n  ProxyJump jump@bastion.example.com:2200\n")
    key = tmp_path / "k"
    key.write_text("not read: only its existence is checked at load time")
    cluster = load_text(
        f"ssh:\n  config_file: {conf}\n  identity_file: {key}\nhosts:\n"
        "  - {name: node1, address: 10.0.0.1}\n"
        "  - {name: node2, address: 10.0.0.2, user: ops, bastion: node1}\n",
        str(tmp_path / "c.yaml"),
    )
    eps = resolve_endpoints(cluster)
    assert (eps["node1"].user, eps["node1"].port) == ("admin", 2222)
    assert eps["node1"].bastion.label == "jump@bastion.example.com:2200"
    assert eps["node2"].user == "ops" and eps["node2"].bastion.address == "10.0.0.1"
