"""End to end on the shared 3-host lab with the real Consul 1.8.7: servers in microcontainers
from the filebox, gossip encryption, Consul DNS in every container, self-healing re-runs."""

from __future__ import annotations

import json
import shlex
import time

import pytest
import yaml

from tests.conftest import ended
from tests.e2e.consul_helpers import as_operator, state_dir_of

pytestmark = pytest.mark.e2e


def _up(cli, f, *extra):
    code, report = cli.json("up", "-f", str(f), *extra)
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    return report


def _exec(cli, lab, host, *argv, ok=True):
    proc = cli("exec", "-f", str(lab.cluster_file), "--host", host, "--", *argv)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def _addresses(lab):
    return sorted(h["address"] for h in yaml.safe_load(lab.cluster_file.read_text())["hosts"])


def _status(cli, lab):
    code, st = cli.json("status", "-f", str(lab.cluster_file))
    return code, st


def _wait_for(predicate, timeout=60.0, step=1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def test_three_servers_alive_one_leader_gossip_encrypted(cli, lab):
    _up(cli, lab.cluster_file)
    code, st = _status(cli, lab)
    assert code == 0, st
    assert [h["consul"] for h in st["hosts"]] == ["server"] * 3
    assert [h["alive"] for h in st["hosts"]] == ["alive"] * 3
    assert [h["voter"] for h in st["hosts"]] == [True] * 3
    assert sum(h["leader"] for h in st["hosts"]) == 1 and st["leader"] in _addresses(lab)
    assert len({h["filebox"] for h in st["hosts"]}) == 1 and st["hosts"][0]["filebox"] != "-"
    keyring = as_operator(lab, "node1", "keyring", "-list")
    assert "dc1 (LAN):" in keyring and "[3/3]" in keyring
    # The key lives on the operator's side, 0600, and is the one the cluster uses.
    state_key = _state_dir(lab) / "gossip.key"
    assert state_key.stat().st_mode & 0o777 == 0o600
    assert state_key.read_text().strip() in keyring


def test_consul_dns_answers_in_a_plain_container_on_host2(cli, lab):
    # A plain `docker run` of a BusyBox image with nothing consul-specific: the engine's default
    # DNS (set by clusterctl) is the local agent, which knows every server.
    script = (
        'img=$(docker images clusterctl/base -q | head -n 1); '
        'docker run --rm --entrypoint busybox "$img" nslookup consul.service.consul'
    )
    out = _exec(cli, lab, "node2", "sh", "-c", script).stdout
    found = sorted(line.split()[-1] for line in out.splitlines() if line.startswith("Address:") and "#" not in line and ":53" not in line)
    assert found == _addresses(lab), out


def test_names_outside_consul_resolve_as_on_the_host(cli, lab):
    # The lab host's own resolver (Docker's embedded DNS on the lab network) knows the lab's
    # container names; a plain container on node2 must resolve one through Consul's recursor.
    name = lab.container("node1")
    script = f'docker run --rm --entrypoint busybox $(docker images clusterctl/base -q | head -n 1) nslookup {name}'
    out = _exec(cli, lab, "node2", "sh", "-c", script).stdout
    assert _addresses(lab)[0] in out, out


def test_http_on_loopback_only_and_dns_not_on_every_interface(cli, lab):
    # The HTTP API: loopback only, neither the cluster address nor docker0 (from a plain container
    # it gave the gossip key, service registration and KV writes to anyone).
    addr = _addresses(lab)[0]
    for where in (addr, "172.17.0.1"):
        proc = _exec(cli, lab, "node1", "sh", "-c", f"timeout 3 curl -s http://{where}:8500/v1/status/leader", ok=False)
        assert proc.returncode != 0, where
    assert '"' in _exec(cli, lab, "node1", "curl", "-s", "http://127.0.0.1:8500/v1/status/leader").stdout
    probe = ("timeout 3 wget -qO- http://172.17.0.1:8500/v1/operator/keyring && echo OPEN; "
             "nslookup consul.service.consul >/dev/null && echo DNS")  # fmt: skip
    proc = _exec(cli, lab, "node2", "sh", "-c", 'docker run --rm --entrypoint busybox "$(docker images clusterctl/base -q | head -n 1)" sh -c "$0"', probe)
    assert proc.stdout.split() == ["DNS"], proc.stdout
    # DNS is not on the cluster address.
    proc = _exec(cli, lab, "node1", "sh", "-c", f"timeout 3 dig +short +tries=1 +time=2 @{addr} consul.service.consul", ok=False)
    assert proc.returncode != 0 or not proc.stdout.strip()


def _state_dir(lab):
    return state_dir_of(lab)


def test_rpc_is_tls_and_an_agent_without_a_certificate_cannot_use_the_cluster(cli, lab):
    """Every agent runs at the last TLS step (verify_incoming, verify_outgoing,
    verify_server_hostname). An agent started by hand on node1 with the gossip key joins the
    gossip but cannot make an RPC to the servers; the same agent with a client certificate from
    the cluster's CA can (the control, so the test can fail)."""
    from clusterctl.pki import CA, _split, issue

    labels = _exec(cli, lab, "node1", "docker", "inspect", "-f", '{{index .Config.Labels "clusterctl.consul.tls"}}', "clusterctl-consul").stdout
    assert labels.strip() == "3"
    state = _state_dir(lab)
    ca = CA(*_split((state / "tls" / "ca.pem").read_bytes(), state / "tls" / "ca.pem"))
    client = issue(ca, "client", "dc1")
    key = (state / "gossip.key").read_text().strip()
    addr = {h["name"]: h["address"] for h in yaml.safe_load(lab.cluster_file.read_text())["hosts"]}
    tls_json = json.dumps({"ca_file": "/intr/ca.pem", "cert_file": "/intr/c.pem", "key_file": "/intr/k.pem",
                           "verify_outgoing": True, "verify_server_hostname": True})  # fmt: skip
    files = {"ca.pem": ca.cert_pem.decode(), "c.pem": client.cert_pem.decode(), "k.pem": client.key_pem.decode(), "tls.json": tls_json}
    write = " && ".join(f"printf '%s' {shlex.quote(v)} > /tmp/intr/{n}" for n, v in files.items())
    start = (
        'fb=$(docker ps -a --filter label=clusterctl.role=filebox -q | head -n 1); img=$(docker images clusterctl/base -q | head -n 1); '
        'docker run -d --name "$1" --net host --volumes-from "$fb" -v /tmp/intr:/intr:ro "$img" consul agent -node "$1" '
        '-bind "$2" -advertise "$2" -data-dir /tmp/d -encrypt "$3" -retry-join "$4:8301" -serf-lan-port 18301 -serf-wan-port -1 '
        '-server-port 18300 -http-port 18500 -dns-port -1 "${@:5}" >/dev/null'
    ).replace('"${@:5}"', "$5")
    ask = 'docker exec "$1" timeout 3 wget -qO- http://127.0.0.1:18500/v1/catalog/services'
    try:
        _exec(cli, lab, "node1", "sh", "-c", f"mkdir -p /tmp/intr && {write}")
        for name, extra in (("intruder", ""), ("certified", "-config-file=/intr/tls.json")):
            _exec(cli, lab, "node1", "bash", "-c", start, "sh", name, addr["node1"], key, addr["node2"], extra)
            answered = _wait_for(lambda: _exec(cli, lab, "node1", "sh", "-c", ask, "sh", name, ok=False).returncode == 0, timeout=15)
            logs = _exec(cli, lab, "node1", "docker", "logs", name, ok=False).stdout
            # Both use the same ports: the first goes before the second starts.
            _exec(cli, lab, "node1", "docker", "rm", "-f", name, ok=False)
            if name == "intruder":
                assert not answered, logs[-2000:]
            else:
                assert answered, logs[-2000:]
    finally:
        _exec(cli, lab, "node1", "sh", "-c", "docker rm -f intruder certified >/dev/null 2>&1; rm -rf /tmp/intr", ok=False)
        # The hand-started agents joined the gossip: make the cluster forget them.
        for name in ("intruder", "certified"):
            as_operator(lab, "node2", "force-leave", "-prune", name)


def test_second_up_changes_nothing(cli, lab):
    report = _up(cli, lab.cluster_file)
    changed = [(h["name"], p["phase"], p["message"]) for h in report["hosts"] for p in h["phases"] if p["changed"]]
    assert report["changed"] is False, changed
    assert all(h["round_trips"] == 1 for h in report["hosts"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path, token=None):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers={"X-Consul-Token": token} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_ui_through_an_ssh_tunnel_until_ctrl_c(cli, lab):
    """`clusterctl ui` prints the local URL of a tunnel to a server's loopback 8500 (the API is
    on no other address: test above) and holds it until Ctrl-C: exit 0, no traceback, the token
    named by its file only, the port closed afterwards."""
    import signal
    import threading

    port = _free_port()
    token = (_state_dir(lab) / "acl" / "management.token").read_text().strip()
    proc = cli.start("ui", "-f", str(lab.cluster_file), "--no-browser", "--port", str(port))
    try:
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(120)
        assert first and first[0] == f"http://127.0.0.1:{port}/ui/\n", (first, proc.poll())
        status, body = _get(port, "/ui/")
        assert status == 200 and "consul" in body.lower(), (status, body[:500])
        status, leader = _get(port, "/v1/status/leader")
        assert status == 200 and json.loads(leader).rsplit(":", 1)[0] in _addresses(lab), leader
        # The tunnel carries no privilege of its own: default deny without a token, the
        # management token (what the UI's login asks for) works through it.
        assert _get(port, "/v1/operator/raft/configuration")[0] == 403
        status, raft = _get(port, "/v1/operator/raft/configuration", token)
        assert status == 200 and sorted(s["Node"] for s in json.loads(raft)["Servers"]) == ["node1", "node2", "node3"], raft
        proc.send_signal(signal.SIGINT)
        out, err = ended(proc, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and out == "", (out, err)
    assert "on node1 (" in err and "acl/management.token" in err and "tunnel closed" in err, err
    assert token not in out + err
    with pytest.raises(OSError):  # nothing listens there any more
        import socket

        socket.create_connection(("127.0.0.1", port), timeout=3).close()


def _voters(cli, lab, via="node2") -> int:
    out = as_operator(lab, via, "operator", "raft", "list-peers")
    return sum(1 for line in out.splitlines()[1:] if len(line.split()) >= 5 and line.split()[4] == "true")


def test_killed_server_keeps_a_leader_and_next_up_restores_it(cli, lab):
    # A server that came back (the foundation tests restart a whole host) is a non-voter until
    # Consul's autopilot promotes it; losing one of 3 servers keeps quorum only with 3 voters.
    assert _wait_for(lambda: _voters(cli, lab) == 3, timeout=60)
    _exec(cli, lab, "node1", "docker", "kill", "clusterctl-consul")

    def leader_without_node1():
        code, st = _status(cli, lab)
        alive = {h["host"]: h["alive"] for h in st["hosts"]}
        return st["leader"] if st["leader"] and alive["node1"] != "alive" else None

    assert _wait_for(leader_without_node1, timeout=60)
    report = _up(cli, lab.cluster_file)
    steps = {p["phase"]: p for p in report["hosts"][0]["phases"]}
    assert steps["consul"]["status"] == "changed" and "start" in steps["consul"]["message"]

    def all_alive():
        code, st = _status(cli, lab)
        return code == 0 and [h["alive"] for h in st["hosts"]] == ["alive"] * 3

    # node1's agent knows the leader when `up` returns; the others' gossip takes a moment to
    # mark it alive again.
    assert _wait_for(all_alive, timeout=30)


def test_a_cluster_left_without_quorum_is_healed_by_the_next_up(cli, lab):
    """Two of three servers stopped (as a run that failed while starting them would leave it):
    node1's agent runs without a leader. The next `up` does not wait for a leader that only it
    can bring back: it starts the two servers, then settles the ACLs, and converges."""
    assert _wait_for(lambda: _voters(cli, lab) == 3, timeout=60)
    for host in ("node2", "node3"):
        _exec(cli, lab, host, "docker", "stop", "clusterctl-consul")
    report = _up(cli, lab.cluster_file)
    started = {h["name"]: next(p for p in h["phases"] if p["phase"] == "consul") for h in report["hosts"]}
    assert all(started[h]["status"] == "changed" and "start" in started[h]["message"] for h in ("node2", "node3")), started
    assert _wait_for(lambda: _voters(cli, lab) == 3, timeout=60)
    again = _up(cli, lab.cluster_file)
    assert again["changed"] is False


def test_node_runs_from_the_filebox_and_a_changed_filebox_rolls_consul(cli, lab, tmp_path):
    doc = yaml.safe_load(lab.cluster_file.read_text())
    # relay: true, as across an uplink: the lab's operator sits on the hosts' own network, where
    # `auto` would send each host its copy.
    doc["filebox"] = {"binaries": ["consul", "/usr/bin/node"], "relay": True}
    f = tmp_path / "with-node.yaml"
    f.write_text(yaml.safe_dump(doc))
    try:
        report = _up(cli, f)
        # The new filebox (consul + node, ~170 MB) crossed the operator's uplink once: node1 got
        # it over SSH and relayed it; node2 and node3 got only the small base over SSH.
        sent = {h["name"]: h["bytes_sent"] for h in report["hosts"]}
        assert sent["node1"] > 100e6 and sent["node2"] < 10e6 and sent["node3"] < 10e6, sent
        consul_steps = [next(p for p in h["phases"] if p["phase"] == "consul") for h in report["hosts"]]
        # The filebox changed, so every agent was replaced, one at a time.
        assert all(s["status"] == "changed" and "remove" in s["message"] for s in consul_steps)
        # The same build clusterctl ran: its base image and filebox container names.
        from clusterctl.filebox.build import build_filebox
        from clusterctl.images.base import base_image
        from clusterctl.phases.filebox import filebox_container_name

        box = build_filebox(["consul", "/usr/bin/node"])
        base = base_image(box.manifest, box.version).image.tag
        out = _exec(cli, lab, "node2", "docker", "run", "--rm", "--volumes-from", filebox_container_name(box.version),
                    base, "node", "-e", "console.log(6*7)").stdout
        assert out.strip().splitlines()[-1] == "42"

        def all_alive():
            code, st = _status(cli, lab)
            return code == 0 and st["leader"] and [h["alive"] for h in st["hosts"]] == ["alive"] * 3

        assert _wait_for(all_alive, timeout=30)
    finally:
        _up(cli, lab.cluster_file)  # back to the lab's own filebox
