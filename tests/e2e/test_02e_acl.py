"""End to end on the shared lab (Consul running after test_02): ACLs deny by default. On a host,
without a token, KV and catalog writes, service and check registration and the keyring are all
refused, while anyone may still resolve names (DNS); tokens never show on a command line, in a
plan or on a host that does not need them; a bad management token file is one line, exit 2,
with nothing changed on any host."""

from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest

from tests.conftest import CLI
from tests.e2e.consul_helpers import as_operator, state_dir_of

pytestmark = pytest.mark.e2e

HOSTS = ("node1", "node2", "node3")


def _on(lab, host: str, script: str, *args: str) -> str:
    return lab.docker("exec", lab.container(host), "sh", "-c", script, "sh", *args, check=False).stdout


def _agent_ids(lab) -> dict[str, str]:
    return {h: _on(lab, h, "docker inspect -f '{{.Id}}' clusterctl-consul").strip() for h in HOSTS}


def test_without_a_token_writes_are_refused_and_names_still_resolve(cli, lab):
    code, report = cli.json("up", "-f", str(lab.cluster_file))
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    for host in HOSTS:
        assert _on(lab, host, "docker inspect -f '{{index .Config.Labels \"clusterctl.consul.acl\"}}' clusterctl-consul").strip() == "2"
    api = "http://127.0.0.1:8500"
    writes = {
        "kv": ("PUT", "/v1/kv/hijack", "x"),
        "catalog": ("PUT", "/v1/catalog/register", json.dumps({"Node": "evil", "Address": "203.0.113.9", "Service": {"Service": "consul"}})),
        "service": ("PUT", "/v1/agent/service/register", json.dumps({"Name": "hello", "Address": "203.0.113.9", "Port": 80})),
        "check": ("PUT", "/v1/agent/check/register", json.dumps({"Name": "peek", "HTTP": "http://127.0.0.1:22", "Interval": "10s"})),
        "keyring": ("GET", "/v1/operator/keyring", ""),
    }
    for what, (method, path, body) in writes.items():
        for _ in range(10):
            out = _on(lab, "node2", 'curl -s -w " %{http_code}" -X "$1" -d "$2" "$3"', method, body, api + path)
            # Neither allowed nor denied: the agent's pooled RPC stream to a server that an
            # earlier test restarted (Consul 1.8: "rpc error making call: stream closed"); asked again.
            if "rpc error" not in out:
                break
            time.sleep(1)
        # 403, but for the keyring, which Consul 1.8 answers 500 "Reading keyring denied by ACLs".
        denied = "Permission denied" if what != "keyring" else "denied by ACLs"
        assert out.endswith(" 403" if what != "keyring" else " 500") and denied in out, (what, out)
    # The control: the same requests work with a token that may (so the test can fail).
    assert "Success" in as_operator(lab, "node2", "kv", "put", "clusterctl-e2e/probe", "x")
    as_operator(lab, "node2", "kv", "delete", "clusterctl-e2e/probe")
    # Names resolve for anyone: a plain container on each host asks its agent (anonymous token).
    script = 'docker run --rm --entrypoint busybox "$(docker images clusterctl/base -q | head -n 1)" nslookup consul.service.consul'
    for host in HOSTS:
        out = _on(lab, host, script)
        assert out.count("Address") >= 4, (host, out)  # the server + 3 answers
    # The status (raft voters, leader) reads with the operator's token.
    code, st = cli.json("status", "-f", str(lab.cluster_file))
    assert code == 0 and [h["voter"] for h in st["hosts"]] == [True] * 3, st


def test_tokens_stay_where_they_belong(cli, lab):
    state = state_dir_of(lab)
    management = (state / "acl" / "management.token").read_text().strip()
    assert (state / "acl" / "management.token").stat().st_mode & 0o777 == 0o600
    for host in HOSTS:
        mine = (state / "acl" / f"agent-{host}.token").read_text().strip()
        # The agent's own token is on its host, 0600; the management token is on none.
        assert _on(lab, host, "stat -c %a /etc/clusterctl/consul/agent.token /etc/clusterctl/consul/acl.json").split() == ["600", "600"]
        assert _on(lab, host, "cat /etc/clusterctl/consul/agent.token").strip() == mine
        files = _on(lab, host, "find /etc/clusterctl /etc/docker -type f -exec cat {} +")
        assert mine in files and management not in files
        visible = _on(lab, host, "ps -eo args; docker inspect clusterctl-consul")
        assert "clusterctl-consul" in visible and mine not in visible and management not in visible
    code, plan = cli.json("plan", "-f", str(lab.cluster_file))
    text = json.dumps(plan)
    assert code == 0 and management not in text
    assert not any((state / "acl" / f"agent-{h}.token").read_text().strip() in text for h in HOSTS)


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "its Consul ACL system was bootstrapped already"),
        ("wrong", "not a management token of cluster"),
        ("malformed", "not a Consul ACL token (a UUID)"),
    ],
)
def test_a_bad_management_token_file_is_one_line_and_changes_nothing(cli, lab, tmp_path, case, expected):
    before = _agent_ids(lab)
    other_dir = tmp_path / "other-operator"
    copy = other_dir / "clusters" / state_dir_of(lab).name
    shutil.copytree(state_dir_of(lab), copy)
    token = copy / "acl" / "management.token"
    if case == "missing":
        token.unlink()
        (copy / "acl" / "settled.json").unlink()
    else:
        token.write_text(str(uuid.uuid4()) if case == "wrong" else "not-a-token\n")
    other = CLI(dict(cli.env, CLUSTERCTL_STATE_DIR=str(other_dir)))
    proc = other("up", "-f", str(lab.cluster_file), timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expected in errors[0] and str(token) in errors[0], errors
    assert _agent_ids(lab) == before
    # The first operator's cluster is as it was.
    code, report = cli.json("up", "-f", str(lab.cluster_file))
    assert code == 0 and report["changed"] is False, json.dumps(report, indent=1)[-3000:]


def test_a_second_operator_waits_for_the_clusters_lock_then_refuses_naming_its_holder(cli, lab, tmp_path):
    """Two operators with copies of the same state (export/import) share no flock: the lock
    lives in Consul (a session lock in KV). Held here through real SSH with clusterctl's own
    lock, the second operator's `up`, which has a change to make (node3's agent stopped), waits
    --lock-wait before making it, then refuses naming the holder; nothing changed."""
    import time

    from clusterctl.cli import _known_hosts
    from clusterctl.config.loader import load
    from clusterctl.lock import consul_lock
    from clusterctl.phases.manager import Manager, Options
    from clusterctl.transport.ssh import resolve_endpoints

    bundle = tmp_path / "secrets.json"
    assert cli("secrets", "export", "-o", str(bundle), "-f", str(lab.cluster_file)).returncode == 0
    other = CLI(dict(cli.env, CLUSTERCTL_STATE_DIR=str(tmp_path / "other-operator")))
    assert other("secrets", "import", str(bundle), "-f", str(lab.cluster_file)).returncode == 0
    before = _agent_ids(lab)
    _on(lab, "node3", "docker stop clusterctl-consul >/dev/null")
    # If node3 led, the others elect a new leader first: until then no lock can be held (the lock
    # below would hold none, and the second operator would not wait).
    import yaml

    node3 = next(h["address"] for h in yaml.safe_load(lab.cluster_file.read_text())["hosts"] if h["name"] == "node3")
    ask = "docker exec clusterctl-consul wget -qO- http://127.0.0.1:8500/v1/status/leader"
    deadline = time.monotonic() + 30
    while not all((lead := _on(lab, h, ask).strip().strip('"')) and not lead.startswith(f"{node3}:") for h in ("node1", "node2")):
        assert time.monotonic() < deadline, "node1 and node2 elected no leader after node3's agent stopped"
        time.sleep(0.2)
    token = (state_dir_of(lab) / "acl" / "management.token").read_text().strip()
    cluster = load(lab.cluster_file)
    known = _known_hosts(cluster, False)
    with Manager(cluster, resolve_endpoints(cluster), known, Options()) as m:
        m.connect()
        assert all(r.ok for r in m.reports.values()), [s for r in m.reports.values() for s in r.steps]
        with consul_lock(cluster.name, ["node2", "node1"], m.consul_api, token, "clusterctl up (the first operator)", wait=5):
            t0 = time.monotonic()
            proc = other("up", "-f", str(lab.cluster_file), "--lock-wait", "3", timeout=120)
            waited = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "is busy: 'clusterctl up (the first operator)' holds it" in errors[0], errors
    import os
    import socket

    assert f"on {socket.gethostname()}, pid {os.getpid()}, since " in errors[0], errors
    assert waited >= 3, waited
    assert _agent_ids(lab) == before
    # Released: the second operator's run goes through and starts node3's agent.
    code, report = other.json("up", "-f", str(lab.cluster_file), "--lock-wait", "3", timeout=180)
    assert code == 0 and report["changed"] is True, json.dumps(report, indent=1)[-3000:]
    consul = {h["name"]: next(p for p in h["phases"] if p["phase"] == "consul") for h in report["hosts"]}
    assert "start" in consul["node3"]["message"] and consul["node1"]["status"] == "ok", consul
