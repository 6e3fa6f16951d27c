"""End to end through a bastion: a lab of its own (`lab up --bastion`), where node1 is the only
host this machine reaches and node2, node3 sit on a private network behind it.

`up`, `exec` and `status` work through it on one shared bastion connection; a bastion that is
down, absent or has a changed key is reported once, as the bastion's failure, and the hosts
behind it as skipped. Tests run in file order and leave the lab as they found it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import time

import paramiko
import pytest
import yaml

from clusterctl.config.loader import load
from clusterctl.transport.ssh import Connector, KnownHosts, resolve_endpoints
from tests.e2e.conftest import lab_for_tests

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def blab(cli, state_dir):
    with lab_for_tests(cli, f"e2eb{os.getpid()}", "--bastion") as bastion_lab:
        yield bastion_lab


def _hosts(blab) -> dict[str, dict]:
    return {h["name"]: h for h in yaml.safe_load(blab.cluster_file.read_text())["hosts"]}


def _statuses(report: dict) -> dict[str, dict[str, str]]:
    return {h["name"]: {p["phase"]: p["status"] for p in h["phases"]} for h in report["hosts"]}


def _connect_message(report: dict, host: str) -> str:
    h = next(h for h in report["hosts"] if h["name"] == host)
    return next(p for p in h["phases"] if p["phase"] == "connect")["message"]


def _variant(blab, tmp_path, change) -> str:  # noqa: ANN001 - change(doc) edits the parsed file
    doc = yaml.safe_load(blab.cluster_file.read_text())
    change(doc)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_private_hosts_are_reachable_only_through_the_bastion(blab):
    hosts = _hosts(blab)
    assert "bastion" not in hosts["node1"]
    assert hosts["node2"]["bastion"] == hosts["node3"]["bastion"] == "node1"
    node1, node2 = hosts["node1"]["address"], hosts["node2"]["address"]
    private = hosts["node1"]["cluster_address"]
    assert node1.rsplit(".", 1)[0] != node2.rsplit(".", 1)[0] == private.rsplit(".", 1)[0]
    # The bastion answers from here...
    with socket.create_connection((node1, 22), timeout=3) as s:
        assert s.recv(8).startswith(b"SSH-")
    # ...node2 does not: this machine has no route to the private network at all.
    with pytest.raises(OSError):
        socket.create_connection((node2, 22), timeout=3).close()
    route = subprocess.run(["ip", "route", "get", node2], capture_output=True, text=True)
    assert route.returncode != 0, route.stdout
    # Each host's key is recorded under the address SSH connects to.
    known = {line.split()[0] for line in (blab.cluster_file.parent / "known_hosts").read_text().splitlines()}
    assert known == {node1, node2, hosts["node3"]["address"]}


def test_up_converges_every_host_through_the_bastion(cli, blab):
    code, report = cli.json("up", "-f", str(blab.cluster_file))
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    node1 = _hosts(blab)["node1"]["address"]
    assert _connect_message(report, "node3") == f"root@{_hosts(blab)['node3']['address']} via root@{node1}"
    for host, phases in _statuses(report).items():
        assert set(phases.values()) <= {"ok", "changed"}, (host, phases)
    code, report = cli.json("up", "-f", str(blab.cluster_file))
    assert code == 0 and report["changed"] is False
    assert [h["round_trips"] for h in report["hosts"]] == [1, 1, 1]


def test_exec_and_status_through_the_bastion(cli, blab):
    hosts = _hosts(blab)
    proc = cli("exec", "-f", str(blab.cluster_file), "--all", "--", "hostname")
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["node1", "node1", "node2", "node2", "node3", "node3", "|", "|", "|"]
    # node3 sees its SSH client at the bastion's private address: the connection came through it.
    proc = cli("exec", "-f", str(blab.cluster_file), "--host", "node3", "--", "sh", "-c", 'echo "$SSH_CONNECTION"')
    assert proc.returncode == 0, proc.stderr
    client, _, server, port = proc.stdout.split()
    assert (client, server, port) == (hosts["node1"]["cluster_address"], hosts["node3"]["address"], "22")
    code, st = cli.json("status", "-f", str(blab.cluster_file))
    assert code == 0, st
    assert [h["reachable"] for h in st["hosts"]] == [True] * 3
    assert [h["alive"] for h in st["hosts"]] == ["alive"] * 3
    assert sum(h["leader"] for h in st["hosts"]) == 1


def _sshd_peers(session, port: str = ":22") -> list[str]:
    out = session.run(f"ss -Htn state established '( sport = {port} )'").stdout
    return [line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()]


def test_one_connection_to_the_bastion_is_shared_and_closed_once(blab):
    cluster = load(blab.cluster_file)
    eps = resolve_endpoints(cluster)
    known = KnownHosts(blab.cluster_file.parent / "known_hosts", accept_new=False)
    operator = str(_hosts(blab)["node1"]["address"]).rsplit(".", 1)[0] + ".1"  # the lab network's gateway
    connector = Connector(known)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        sessions = dict(zip(eps, pool.map(connector.open, eps.values())))
    try:
        assert all(sessions[n].run("hostname").stdout.strip() == n for n in sessions)
        # node1's sshd sees two connections from this machine: node1's own and the shared
        # bastion connection (not one per host behind it).
        assert _sshd_peers(sessions["node1"]).count(operator) == 2
    finally:
        for s in sessions.values():
            s.close()
        connector.close()
    # All closed: a fresh session is the only one left.
    connector = Connector(known)
    probe = connector.open(eps["node1"])
    try:
        deadline = time.monotonic() + 5
        while _sshd_peers(probe).count(operator) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _sshd_peers(probe).count(operator) == 1
    finally:
        probe.close()
        connector.close()


def _wait_for_banner(address: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, 22), timeout=1) as s:
                if s.recv(8).startswith(b"SSH-"):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _wait_for_refusal(address: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, 22), timeout=1).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, f"sshd on {address} still answers"
        time.sleep(0.1)


def test_bastion_down_is_one_line_and_the_hosts_behind_it_are_skipped(cli, blab):
    node1 = _hosts(blab)["node1"]["address"]
    # Stop node1's sshd listener (sessions already open would survive; there are none).
    blab.docker("exec", blab.container("node1"), "pkill", "-f", "sshd -e")
    try:
        _wait_for_refusal(node1)
        code, report = cli.json("up", "-f", str(blab.cluster_file))
        assert code == 1
        (line,) = report["errors"]
        head, _, behind = line.partition("; skipped the hosts behind it: ")
        assert head == f"bastion node1 (root@{node1}): cannot reach root@{node1}: connection refused"
        assert sorted(behind.split(", ")) == ["node2", "node3"]
        assert sorted(report["failed_hosts"]) == ["node1", "node2", "node3"]
        assert _connect_message(report, "node1") == f"cannot reach root@{node1}: connection refused"
        for host in ("node2", "node3"):
            assert _connect_message(report, host) == "skipped: bastion node1 failed"
            assert list(_statuses(report)[host]) == ["connect"]
        # As text: the bastion's failure is one line; each host behind it says why it was skipped.
        proc = cli("up", "-f", str(blab.cluster_file))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if f"bastion node1 (root@{node1})" in line]
        assert len(lines) == 1 and "connection refused" in lines[0]
        for host in ("node2", "node3"):
            assert f"{host} connect: failed skipped: bastion node1 failed" in proc.stderr
        proc = cli("exec", "-f", str(blab.cluster_file), "--all", "--", "true")
        assert proc.returncode == 1
        assert proc.stderr.count(f"bastion node1 (root@{node1})") == 1
        assert "node3 ! skipped: bastion node1 failed" in proc.stderr
    finally:
        blab.docker("exec", blab.container("node1"), "/usr/sbin/sshd", "-e")
        _wait_for_banner(node1)
    code, report = cli.json("up", "-f", str(blab.cluster_file))
    assert code == 0 and report["changed"] is False, json.dumps(report, indent=1)[-3000:]


def test_host_behind_the_bastion_that_is_down_is_its_own_failure(cli, blab):
    node1, node2 = _hosts(blab)["node1"]["address"], _hosts(blab)["node2"]["address"]
    blab.docker("exec", blab.container("node2"), "pkill", "-f", "sshd -e")
    try:
        code, report = cli.json("up", "-f", str(blab.cluster_file))
        assert code == 1 and report["failed_hosts"] == ["node2"] and report["errors"] == []
        assert _connect_message(report, "node2") == (
            f"cannot reach root@{node2} via root@{node1}: the bastion could not connect (Connect failed)"
        )
        assert _statuses(report)["node3"]["consul"] == "ok"
    finally:
        blab.docker("exec", blab.container("node2"), "/usr/sbin/sshd", "-e")
    deadline = time.monotonic() + 15
    while cli("exec", "-f", str(blab.cluster_file), "--host", "node2", "--", "true").returncode != 0:
        assert time.monotonic() < deadline, "node2's sshd did not come back"
        time.sleep(0.3)


def test_bastion_at_an_unused_address_is_the_bastions_failure(cli, blab, tmp_path):
    node1 = _hosts(blab)["node1"]["address"]
    ghost = node1.rsplit(".", 1)[0] + ".250"  # on the lab network, where no host answers

    def change(doc):
        doc["ssh"]["connect_timeout"] = 2
        for h in doc["hosts"][1:]:
            h["bastion"] = f"root@{ghost}"

    code, report = cli.json("up", "-f", _variant(blab, tmp_path, change))
    assert code == 1 and sorted(report["failed_hosts"]) == ["node2", "node3"]
    (line,) = report["errors"]
    assert line.startswith(f"bastion {ghost} (root@{ghost}): cannot reach root@{ghost}: "), line
    assert _connect_message(report, "node2") == f"skipped: bastion {ghost} failed"
    assert _statuses(report)["node1"]["consul"] == "ok"  # the host in front of it still converges


def test_changed_bastion_key_is_refused_as_the_bastions_failure(cli, blab, tmp_path):
    node1 = _hosts(blab)["node1"]["address"]
    known = tmp_path / "known_hosts"
    lines = (blab.cluster_file.parent / "known_hosts").read_text().splitlines()
    forged = paramiko.Ed25519Key.from_private_key_file(str(blab.cluster_file.parent / "id_ed25519"))
    lines = [ln for ln in lines if not ln.startswith(node1 + " ")] + [f"{node1} ssh-ed25519 {forged.get_base64()}"]
    known.write_text("\n".join(lines) + "\n")

    def change(doc):
        doc["ssh"]["known_hosts"] = str(known)

    # Even with --accept-new-host-keys: a changed key is never accepted, for a bastion neither.
    code, report = cli.json("up", "-f", _variant(blab, tmp_path, change), "--accept-new-host-keys")
    assert code == 1 and sorted(report["failed_hosts"]) == ["node1", "node2", "node3"]
    (line,) = report["errors"]
    assert line.startswith(f"bastion node1 (root@{node1}): host key for root@{node1} CHANGED"), line
    assert str(known) in line
    assert _connect_message(report, "node3") == "skipped: bastion node1 failed"
    assert known.read_text().count(node1) == 1  # nothing was added
