"""End to end on the shared lab (Consul running after test_02): a cluster of agents from before
TLS and ACLs (no certificates, no ACL settings, no `clusterctl.consul.tls`/`.acl` labels, a
fresh raft never bootstrapped, plain RPC, no management token on the operator's side) is moved
to verified TLS and default-deny ACLs by one `up`, in steps rolled one host at a time; a poll every 0.5 s during that `up` finds a leader
every time but for the one election a step that replaces the leader costs (at most two polls in
a row), and a DNS answer for consul.service.consul every time but for at most two polls in a
row, while ACLs are being turned on (see the test)."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from clusterctl.lab import lab as lab_mod

from tests.e2e.consul_helpers import as_operator, state_dir_of

pytestmark = pytest.mark.e2e

HOSTS = ("node1", "node2", "node3")
TLS_FILES = "/etc/clusterctl/consul/tls.json /etc/clusterctl/consul/ca.pem /etc/clusterctl/consul/agent.pem /etc/clusterctl/consul/agent-key.pem"
ACL_FILES = "/etc/clusterctl/consul/acl.json /etc/clusterctl/consul/agent.token"


def _inspect(lab, host: str) -> dict:
    out = lab.docker("exec", lab.container(host), "docker", "inspect", "clusterctl-consul").stdout
    return json.loads(out)[0]


def _as_before_tls(lab, host: str) -> None:
    """Replace the host's agent with the one an earlier clusterctl ran: the same container
    without the TLS and ACL files and labels (same image, filebox, key), on a new data volume
    (its raft never had ACLs)."""
    c = _inspect(lab, host)
    args = [a for a in c["Config"]["Cmd"] if not a.endswith(("/tls.json", "/acl.json"))]
    dropped = ("clusterctl.consul.tls", "clusterctl.consul.acl")
    labels = {k: v for k, v in c["Config"]["Labels"].items() if k.startswith("clusterctl.") and k not in dropped}
    labels["clusterctl.config"] = "before-tls"
    run = ["docker", "run", "-d", "--name", "clusterctl-consul", "--net", "host", "--restart", "unless-stopped"]
    run += [x for vf in c["HostConfig"]["VolumesFrom"] or [] for x in ("--volumes-from", vf)]
    run += [x for b in c["HostConfig"]["Binds"] or [] for x in ("-v", b)]
    run += [x for k, v in sorted(labels.items()) for x in ("--label", f"{k}={v}")]
    run += [c["Config"]["Image"], *args]
    script = (f'docker rm -f clusterctl-consul >/dev/null && docker volume rm clusterctl-consul-data >/dev/null && '
              f'rm -f {TLS_FILES} {ACL_FILES} && "$@" >/dev/null')
    lab.docker("exec", lab.container(host), "sh", "-c", script, "sh", *run)


def _leader_and_dns(lab, host: str = "node2") -> tuple[bool, bool]:
    script = (
        "l=$(timeout 2 wget -qO- http://127.0.0.1:8500/v1/status/leader 2>/dev/null); "
        'case "$l" in *:*) echo leader;; esac; '
        "timeout 2 nslookup consul.service.consul 127.0.0.1 >/dev/null 2>&1 && echo dns"
    )
    proc = subprocess.run([lab_mod.docker_cli(), "exec", lab.container(host), "docker", "exec", "clusterctl-consul", "sh", "-c", script],
                          capture_output=True, text=True, timeout=10)  # fmt: skip
    words = proc.stdout.split()
    return "leader" in words, "dns" in words


def test_a_cluster_from_before_tls_and_acls_is_secured_by_one_up_keeping_a_leader_and_dns(cli, lab):
    code, report = cli.json("up", "-f", str(lab.cluster_file))
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    for host in HOSTS:  # all at once: agents of step 0 and step 3 do not talk
        _as_before_tls(lab, host)
    for name in ("management.token", "settled.json"):  # the operator of before had no ACLs
        (state_dir_of(lab) / "acl" / name).unlink()
    deadline = time.monotonic() + 60
    while _leader_and_dns(lab) != (True, True):
        assert time.monotonic() < deadline, "the agents from before TLS found no leader"
        time.sleep(0.5)
    assert all("clusterctl.consul.tls" not in _inspect(lab, h)["Config"]["Labels"] for h in HOSTS)

    seen: list[tuple[int, int]] = []  # at each poll: how many hosts see a leader, how many answer DNS
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            answers = [_leader_and_dns(lab, h) for h in HOSTS]
            seen.append((sum(a[0] for a in answers), sum(a[1] for a in answers)))
            time.sleep(0.5)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        code, report = cli.json("up", "-f", str(lab.cluster_file), timeout=900)
    finally:
        stop.set()
        poller.join(15)
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    assert all(_inspect(lab, h)["Config"]["Labels"].get("clusterctl.consul.tls") == "3" for h in HOSTS)
    assert all(_inspect(lab, h)["Config"]["Labels"].get("clusterctl.consul.acl") == "2" for h in HOSTS)
    # Bootstrapped by this `up`: its management token is the operator's, writes without one are refused.
    assert "Global Management" in as_operator(lab, "node1", "acl", "token", "read", "-self")
    denied = lab.docker("exec", lab.container("node1"), "curl", "-s", "-X", "PUT", "-d", "x", "http://127.0.0.1:8500/v1/kv/probe")
    assert "Permission denied" in denied.stdout, denied.stdout
    # Each poll asks all three hosts (about 2 s). Replacing the leader itself costs one election
    # (Consul 1.8 cannot hand leadership over): no host sees a leader for at most two polls in a
    # row, once a step. DNS: an agent with ACLs on cannot resolve the anonymous token until a
    # server with ACLs on leads (Consul answers "ACL not found"), so during the step that turns
    # ACLs on, the hosts already turned fail DNS until the leader's own turn; with every host a
    # server, no host answers for at most two polls in a row. Outside that step two hosts answer.
    print("polls (hosts seeing a leader, hosts answering DNS):", seen)
    assert len(seen) > 5, seen
    no_leader = "".join("x" if leaders == 0 else "." for leaders, _ in seen)
    assert "xxx" not in no_leader and no_leader.count("x") <= 2 * 3, seen
    no_dns = "".join("x" if dns == 0 else "." for _, dns in seen)
    assert "xxx" not in no_dns and no_dns.count("x") <= 2, seen
    code, again = cli.json("up", "-f", str(lab.cluster_file))
    assert code == 0 and again["changed"] is False
