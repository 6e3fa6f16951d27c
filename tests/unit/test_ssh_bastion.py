"""Bastions: which hosts share one bastion connection, and how a run opens, shares, reports and
closes it (the Connector, with a fake connect: no network)."""

from __future__ import annotations

import errno
import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest
import yaml

from clusterctl.config.loader import load_text
from clusterctl.lab.lab import LabHost, render_cluster_file
from clusterctl.transport.ssh import (
    BastionFailed,
    Connector,
    Endpoint,
    KnownHosts,
    SSHError,
    explain,
    gateway_key,
    open_session,
    resolve_endpoints,
)


def _cluster(tmp_path, hosts: str):
    key = tmp_path / "k"
    key.write_text("not read")
    return load_text(f"ssh:\n  config_file: ''\n  identity_file: {key}\nhosts:\n{hosts}", str(tmp_path / "c.yaml"))


def test_hosts_naming_the_same_bastion_share_one_key(tmp_path):
    eps = resolve_endpoints(_cluster(tmp_path, (
        "  - {name: node1, address: 10.0.0.1}\n"
        "  - {name: node2, address: 10.1.0.2, bastion: node1}\n"
        "  - {name: node3, address: 10.1.0.3, bastion: 'root@10.0.0.1'}\n"
        "  - {name: node4, address: 10.1.0.4, bastion: 'root@10.0.0.1:2222'}\n"
        "  - {name: node5, address: 10.1.0.5, bastion: 'ops@10.0.0.1'}\n"
        "  - {name: node6, address: 10.1.0.6}\n"
    )))  # fmt: skip
    # By name or by address: the same user, address, port and key are one connection.
    assert gateway_key(eps["node2"].bastion) == gateway_key(eps["node3"].bastion)
    # Another port or user is another connection.
    keys = {gateway_key(eps[n].bastion) for n in ("node2", "node4", "node5")}
    assert len(keys) == 3
    assert eps["node6"].bastion is None
    assert eps["node2"].bastion.name == "bastion node1"
    assert eps["node2"].label == "root@10.1.0.2 via root@10.0.0.1"


def test_gateway_key_ignores_name_and_address_case_but_not_keys_or_the_jump_before_it():
    a = Endpoint("bastion a", "Jump.Example.com.", identity_files=("/k1",))
    assert gateway_key(a) == gateway_key(Endpoint("bastion b", "jump.example.com", identity_files=("/k1",)))
    assert gateway_key(a) != gateway_key(Endpoint("bastion a", "jump.example.com", identity_files=("/k2",)))
    via = Endpoint("bastion c", "jump.example.com", identity_files=("/k1",), bastion=Endpoint("outer", "10.9.9.9"))
    assert gateway_key(a) != gateway_key(via)


# -- the Connector, with fake connections ------------------------------------------------


class FakeTransport:
    def __init__(self):
        self.active = True
        self.channels: list[tuple] = []
        self.fail_channel: Exception | None = None

    def is_active(self) -> bool:
        return self.active

    def open_channel(self, kind, dest, src, timeout=None):  # noqa: ANN001
        if self.fail_channel is not None:
            raise self.fail_channel
        self.channels.append((kind, dest, timeout))
        return FakeChannel(dest)


class FakeChannel:
    def __init__(self, dest):  # noqa: ANN001
        self.dest = dest
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeConnection:
    def __init__(self, ep: Endpoint, sock):  # noqa: ANN001
        self.endpoint, self.sock, self.closes = ep, sock, 0
        self.transport = FakeTransport()
        self.client = self

    def get_transport(self) -> FakeTransport:
        return self.transport

    def close(self) -> None:
        self.closes += 1
        self.transport.active = False


class FakeConnect:
    """Records every connect; `fail` maps an address to the exception its connect raises."""

    def __init__(self, fail: dict[str, BaseException] | None = None, delay: float = 0.0):
        self.fail = fail or {}
        self.delay = delay
        self.calls: list[tuple[str, object]] = []
        self.opened: dict[str, list[FakeConnection]] = {}
        self.lock = threading.Lock()

    def __call__(self, ep: Endpoint, known, sock=None):  # noqa: ANN001
        with self.lock:
            self.calls.append((ep.address, sock))
        time.sleep(self.delay)  # make concurrent callers overlap
        if ep.address in self.fail:
            raise self.fail[ep.address]
        conn = FakeConnection(ep, sock)
        with self.lock:
            self.opened.setdefault(ep.address, []).append(conn)
        return conn


@pytest.fixture
def known(tmp_path) -> KnownHosts:
    return KnownHosts(tmp_path / "known_hosts", accept_new=False)


BASTION = Endpoint("bastion node1", "10.0.0.1", connect_timeout=3)


def _behind(n: int) -> list[Endpoint]:
    return [Endpoint(f"node{i}", f"10.1.0.{i}", bastion=BASTION, connect_timeout=3) for i in range(2, 2 + n)]


def _open_all(connector: Connector, eps: list[Endpoint]) -> dict[str, object]:
    """Open every endpoint at once from its own thread, like the executor does."""
    out: dict[str, object] = {}
    start = threading.Barrier(len(eps))

    def one(ep: Endpoint) -> None:
        start.wait()
        try:
            out[ep.name] = connector.open(ep)
        except Exception as exc:  # noqa: BLE001
            out[ep.name] = exc

    threads = [threading.Thread(target=one, args=(ep,)) for ep in eps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_one_bastion_connection_is_shared_by_every_host_behind_it(known):
    fake = FakeConnect(delay=0.05)
    connector = Connector(known, connect=fake)
    eps = [Endpoint("node1", "10.0.0.1"), *_behind(8)]
    sessions = _open_all(connector, eps)
    assert all(not isinstance(s, Exception) for s in sessions.values()), sessions
    # node1 itself (no sock) and the bastion connection: two connects to 10.0.0.1, not nine.
    assert [sock for addr, sock in fake.calls if addr == "10.0.0.1"] == [None, None]
    (gateway,) = [c for c in fake.opened["10.0.0.1"] if c.endpoint is BASTION]
    # Each host behind got its own direct-tcpip channel on that one connection.
    assert sorted(ch[1] for ch in gateway.transport.channels) == sorted((ep.address, 22) for ep in eps[1:])
    assert {ch[0] for ch in gateway.transport.channels} == {"direct-tcpip"}
    assert all(ch[2] == 3 for ch in gateway.transport.channels)  # the host's connect timeout bounds it
    for ep in eps[1:]:
        assert sessions[ep.name].connection.sock.dest == (ep.address, 22)
    # Sessions close their own connections; the shared gateway closes once, with the connector.
    for s in sessions.values():
        s.close()
    assert gateway.closes == 0
    connector.close()
    connector.close()
    assert gateway.closes == 1
    assert connector.failures == []


def test_failed_bastion_is_tried_once_one_line_and_hosts_behind_are_skipped(known, tmp_path):
    refused = paramiko.ssh_exception.NoValidConnectionsError(
        {("10.0.0.1", 22): OSError(errno.ECONNREFUSED, "Connection refused")}
    )
    fake = FakeConnect(fail={"10.0.0.1": refused}, delay=0.05)
    connector = Connector(known, connect=fake)
    eps = _behind(4)
    out = _open_all(connector, eps)
    assert [addr for addr, _ in fake.calls] == ["10.0.0.1"]  # tried once; no host behind was tried
    for ep in eps:
        assert isinstance(out[ep.name], BastionFailed)
        assert str(out[ep.name]) == "skipped: bastion node1 failed"
        # What the manager and exec show for the host: the same line.
        assert explain(out[ep.name], ep, known.path) == "skipped: bastion node1 failed"
    (line,) = connector.failures
    head, _, skipped = line.partition("; skipped the hosts behind it: ")
    assert head == "bastion node1 (root@10.0.0.1): cannot reach root@10.0.0.1: connection refused"
    assert sorted(skipped.split(", ")) == ["node2", "node3", "node4", "node5"]
    # A host not behind it is unaffected.
    assert connector.open(Endpoint("other", "10.2.0.1")).endpoint.name == "other"
    assert len(connector.failures) == 1


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (paramiko.AuthenticationException("no"), "authentication failed for root@10.0.0.1"),
        (socket.timeout(), "cannot reach root@10.0.0.1: timed out after 3s"),
        (paramiko.ssh_exception.NoValidConnectionsError({("10.0.0.1", 22): OSError(errno.EHOSTUNREACH, "x")}),
         "cannot reach root@10.0.0.1: no route to host"),
    ],
)  # fmt: skip
def test_bastion_failures_are_worded_as_the_bastions(known, exc, says):
    connector = Connector(known, connect=FakeConnect(fail={"10.0.0.1": exc}))
    with pytest.raises(BastionFailed):
        connector.open(_behind(1)[0])
    assert connector.failures[0].startswith(f"bastion node1 (root@10.0.0.1): {says}")


def test_changed_bastion_key_is_the_bastions_failure(known):
    key = paramiko.Ed25519Key.from_private_key_file(str(_ed25519_file(known.path.parent)))
    bad = paramiko.BadHostKeyException("10.0.0.1", key, key)
    connector = Connector(known, connect=FakeConnect(fail={"10.0.0.1": bad}))
    with pytest.raises(BastionFailed):
        connector.open(_behind(1)[0])
    assert "bastion node1 (root@10.0.0.1): host key for root@10.0.0.1 CHANGED" in connector.failures[0]


def _ed25519_file(directory: Path) -> Path:
    import subprocess

    path = directory / "id_test"
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def test_host_the_bastion_cannot_connect_to_is_that_hosts_own_failure(known):
    fake = FakeConnect()
    connector = Connector(known, connect=fake)
    first, second = _behind(2)
    connector.open(first)
    gateway = fake.opened["10.0.0.1"][0]
    gateway.transport.fail_channel = paramiko.ChannelException(2, "Connect failed")
    with pytest.raises(SSHError) as err:
        connector.open(second)
    assert not isinstance(err.value, BastionFailed)
    assert str(err.value) == "cannot reach root@10.1.0.3 via root@10.0.0.1: the bastion could not connect (Connect failed)"
    gateway.transport.fail_channel = paramiko.ChannelException(1, "Administratively prohibited")
    with pytest.raises(SSHError, match="does not allow TCP forwarding"):
        connector.open(second)
    assert connector.failures == []


def test_a_dropped_bastion_connection_is_opened_again(known):
    fake = FakeConnect()
    connector = Connector(known, connect=fake)
    a, b = _behind(2)
    connector.open(a)
    fake.opened["10.0.0.1"][0].transport.active = False  # the bastion restarted
    connector.open(b)
    assert len(fake.opened["10.0.0.1"]) == 2
    connector.close()
    assert [c.closes for c in fake.opened["10.0.0.1"]] == [1, 1]


def test_bastion_behind_a_bastion_chains_and_reports_the_first_failure(known):
    outer = Endpoint("bastion outer", "10.9.0.1")
    inner = Endpoint("bastion inner", "10.0.0.1", bastion=outer)
    host = Endpoint("node2", "10.1.0.2", bastion=inner)
    fake = FakeConnect()
    connector = Connector(known, connect=fake)
    connector.open(host)
    inner_conn = fake.opened["10.0.0.1"][0]
    assert inner_conn.sock.dest == ("10.0.0.1", 22)  # the inner bastion is reached through the outer
    fake = FakeConnect(fail={"10.9.0.1": TimeoutError()})
    connector = Connector(known, connect=fake)
    with pytest.raises(BastionFailed, match="skipped: bastion outer failed"):
        connector.open(host)
    assert len(connector.failures) == 1 and connector.failures[0].startswith("bastion outer (root@10.9.0.1): cannot reach")


def test_open_session_alone_names_the_bastions_reason_and_owns_its_gateway(known, monkeypatch):
    import clusterctl.transport.ssh as ssh

    refused = paramiko.ssh_exception.NoValidConnectionsError({("10.0.0.1", 22): OSError(errno.ECONNREFUSED, "x")})
    monkeypatch.setattr(ssh, "_connect", FakeConnect(fail={"10.0.0.1": refused}))
    with pytest.raises(SSHError, match=r"^bastion node1 \(root@10.0.0.1\): cannot reach root@10.0.0.1: connection refused"):
        open_session(_behind(1)[0], known)
    fake = FakeConnect()
    monkeypatch.setattr(ssh, "_connect", fake)
    session = open_session(_behind(1)[0], known)
    gateway = fake.opened["10.0.0.1"][0]
    session.close()
    assert gateway.closes == 1


# -- the lab's cluster file with a bastion ---------------------------------------------


def test_lab_cluster_file_with_a_bastion(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("k")
    hosts = [
        LabHost("node1", "c1", "10.213.0.11", "10.213.1.11"),
        LabHost("node2", "c2", "10.213.1.12", "10.213.1.12"),
        LabHost("node3", "c3", "10.213.1.13", "10.213.1.13"),
    ]
    text = render_cluster_file("t", hosts, key, tmp_path / "known_hosts")
    doc = yaml.safe_load(text)
    assert doc["hosts"][0]["address"] == "10.213.0.11" and "bastion" not in doc["hosts"][0]
    assert [h.get("bastion") for h in doc["hosts"][1:]] == ["node1", "node1"]
    assert [h["cluster_address"] for h in doc["hosts"]] == ["10.213.1.11", "10.213.1.12", "10.213.1.13"]
    eps = resolve_endpoints(load_text(text, str(tmp_path / "c.yaml")))
    assert eps["node3"].label == "root@10.213.1.13 via root@10.213.0.11"
    # Without a bastion: as before, no bastion and no cluster_address.
    plain = yaml.safe_load(render_cluster_file("t", [LabHost("node1", "c1", "10.213.0.11")], key, tmp_path / "kh"))
    assert plain["hosts"][0] == {"name": "node1", "address": "10.213.0.11", "roles": ["server"], "labels": {"provider": "lab"}}
