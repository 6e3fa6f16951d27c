"""End to end on the shared 3-host lab: one container network across hosts: overlay, routed and
wireguard (tunnels through wireguard-go: this kernel has no WireGuard module).

For each driver, from hosts with no cluster network: `up` converges, a BusyBox httpd container on
node1 answers a container on node3 by IP address (and sees the client's own address), and a
second `up` changes nothing in one round trip per host. Problems the whole cluster shares are
refused before anything runs. What crosses the lab's bridge is captured (tcpdump) while a
container fetches a unique payload from another host: seen in clear with routed, never with
wireguard. The lab is left as found: every test starts by tearing the
network down, and the module ends by tearing it down and converging the lab's own file again.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from clusterctl.commands import wireguard as wg
from clusterctl.commands.teardown import teardown
from clusterctl.lab import lab as lab_mod
from clusterctl.lab.busybox import rootfs_tar
from tests.e2e.conftest import on_all

pytestmark = pytest.mark.e2e

IMAGE = "clusterctl-nettest-busybox:1"
WEB = "clusterctl-nettest-web"
PAGE = b"hello from node1\n"
CIDR = ipaddress.ip_network("10.240.0.0/16")  # the default cluster CIDR on the lab


def _host_docker(lab, host: str, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 60):
    """`docker ARGS` run by the lab host's own engine (through the lab container, not SSH)."""
    cmd = [lab_mod.docker_cli(), "exec", *(["-i"] if input is not None else []), lab.container(host), "docker", *args]
    proc = subprocess.run(cmd, capture_output=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{host}: docker {' '.join(args)}: {proc.stderr.decode(errors='replace')[-1000:]}")
    return proc


def _variant(lab, tmp_path: Path, **network) -> Path:
    """The lab's own cluster file (same name, same state) with a network section."""
    doc = yaml.safe_load(lab.cluster_file.read_text())
    doc["network"] = network
    path = tmp_path / f"{network.get('driver', 'default')}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _teardown(cli, lab) -> None:
    for host in ("node1", "node3"):
        _host_docker(lab, host, "rm", "-f", WEB, check=False)
    for host in ("node3", "node2", "node1"):  # one at a time, the swarm's leader last
        proc = cli("exec", "-f", str(lab.cluster_file), "--host", host, "--", *teardown(f"lab-{lab.name}", str(CIDR), leave_swarm=True).argv)
        assert proc.returncode == 0, proc.stderr
        proc = cli("exec", "-f", str(lab.cluster_file), "--host", host, "--", *wg.remove(wg.interface_name("clusterctl"), False).argv)
        assert proc.returncode == 0, proc.stderr
    out = cli("exec", "-f", str(lab.cluster_file), "--all", "--", "sh", "-c",
              "docker info --format '{{.Swarm.LocalNodeState}}'; docker network ls -q --filter label=clusterctl.cluster; "
              "ip -4 route show root 10.240.0.0/16; ss -ltn | grep ':7946 '")  # fmt: skip
    assert [line.split("|", 1)[1].strip() for line in out.stdout.splitlines()] == ["inactive"] * 3, out.stdout


def _up(cli, f: Path) -> dict:
    code, report = cli.json("up", "-f", str(f))
    assert code == 0, json.dumps(report, indent=1)[-4000:]
    return report


def _network(report: dict) -> dict[str, dict]:
    return {h["name"]: next(p for p in h["phases"] if p["phase"] == "network") for h in report["hosts"]}


def _assert_noop(cli, f: Path) -> None:
    code, report = cli.json("up", "-f", str(f))
    assert code == 0 and report["changed"] is False, json.dumps(report, indent=1)[-3000:]
    assert [h["round_trips"] for h in report["hosts"]] == [1, 1, 1]


def _serve_and_fetch(lab) -> tuple[str, str, str, str]:
    """httpd on node1 on the cluster network; a container on node3 fetches by IP.

    Returns (server IP, client IP, body, server log)."""
    _host_docker(lab, "node1", "run", "-d", "--name", WEB, "--network", "clusterctl", IMAGE, "httpd", "-f", "-v", "-p", "8080", "-h", "/www")
    try:
        ip = _host_docker(lab, "node1", "inspect", "-f", '{{(index .NetworkSettings.Networks "clusterctl").IPAddress}}', WEB)
        server = ip.stdout.decode().strip()
        script = f"ip -o -4 addr show eth0 | awk '{{print $4}}'; timeout 5 wget -qO- http://{server}:8080/"
        for attempt in range(5):  # a node that has just joined may need a moment for the overlay
            proc = _host_docker(lab, "node3", "run", "--rm", "--network", "clusterctl", IMAGE, "sh", "-c", script, check=False)
            if proc.returncode == 0:
                break
            time.sleep(1)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        client_cidr, body = proc.stdout.decode().split("\n", 1)
        log = _host_docker(lab, "node1", "logs", WEB).stderr.decode() + _host_docker(lab, "node1", "logs", WEB).stdout.decode()
        return server, client_cidr.split("/")[0], body, log
    finally:
        _host_docker(lab, "node1", "rm", "-f", WEB, check=False)


@pytest.fixture(scope="module")
def busybox(cli, lab):
    """A BusyBox image on node1 and node3, imported from a rootfs (no registry here)."""
    _up(cli, lab.cluster_file)  # Docker on every host (a no-op after the earlier files)
    tar = rootfs_tar({"www/index.html": PAGE})
    for host in ("node1", "node3"):
        _host_docker(lab, host, "import", "-c", 'CMD ["sh"]', "-", IMAGE, input=tar)
    yield IMAGE
    for host in ("node1", "node3"):
        _host_docker(lab, host, "rm", "-f", WEB, check=False)
        _host_docker(lab, host, "rmi", "-f", IMAGE, check=False)


@pytest.fixture(scope="module")
def restore(cli, lab):
    """Leave the lab as found: no test network, the lab's own file converged again."""
    yield
    _teardown(cli, lab)
    code, report = cli.json("up", "-f", str(lab.cluster_file))
    assert code == 0, json.dumps(report, indent=1)[-3000:]


def test_cluster_wide_problems_are_refused_before_anything_runs(cli, lab, tmp_path):
    subnet = str(ipaddress.ip_network(yaml.safe_load(lab.cluster_file.read_text())["hosts"][0]["address"] + "/16", strict=False))
    for f, words in (
        (_variant(lab, tmp_path, driver="routed", subnet=subnet), [f"cluster CIDR {subnet} overlaps", "set network.subnet"]),
        (_variant(lab, tmp_path, driver="weave"), ["weave driver needs Weave's images", "weaveworks/weave:2.8.1", "node1, node2, node3"]),
        # This machine's kernel has no ESP (IPsec), so neither has any lab host: refused, not half made.
        (_variant(lab, tmp_path, driver="overlay", encrypted=True), ["network.encrypted", "node1, node2, node3", "no esp4"]),
    ):
        proc = cli("up", "-f", str(f), "-o", "json")
        report = json.loads(proc.stdout)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("network: refused: ")
        assert all(w in report["refused"]["network"] for w in words), report["refused"]
        for h in report["hosts"]:
            assert h["round_trips"] == 1  # the probe, nothing else
            assert [(p["phase"], p["status"]) for p in h["phases"]] == [("connect", "ok"), ("probe", "ok"), ("network", "failed")]


def test_overlay_containers_reach_each_other_across_hosts(cli, lab, tmp_path, busybox, restore):
    _teardown(cli, lab)
    f = _variant(lab, tmp_path, driver="overlay")
    # The dry run shows the joins with placeholders for the tokens, never a token.
    code, plan = cli.json("plan", "-f", str(f))
    assert code == 0
    cmds = {n: s["commands"] for n, s in _network(plan).items()}
    assert cmds["node1"][0].startswith("docker swarm init --advertise-addr ")
    # node3 joins as a manager, then labels its own node.
    assert cmds["node3"][-2].endswith("# stdin: <manager token of node1>") and "Swarm.NodeID" in cmds["node3"][-1]
    report = _up(cli, f)
    assert {n: s["status"] for n, s in _network(report).items()} == dict.fromkeys(("node1", "node2", "node3"), "changed")
    assert "SWMTKN" not in json.dumps(report)
    assert "not shown" in _network(report)["node3"]["commands"][-2]
    server, client, body, log = _serve_and_fetch(lab)
    assert body == PAGE.decode()
    assert ipaddress.ip_address(server) in CIDR and ipaddress.ip_address(client) in CIDR
    assert re.search(rf"\b{re.escape(client)}\]?:\d+: response:200", log), log
    _assert_noop(cli, f)


def test_routed_containers_reach_each_other_across_hosts(cli, lab, tmp_path, busybox, restore):
    _teardown(cli, lab)
    f = _variant(lab, tmp_path, driver="routed")
    report = _up(cli, f)
    steps = _network(report)
    assert {n: s["status"] for n, s in steps.items()} == dict.fromkeys(("node1", "node2", "node3"), "changed")
    assert "ip route replace 10.240.2.0/24 via " in "\n".join(steps["node1"]["commands"])
    server, client, body, log = _serve_and_fetch(lab)
    assert body == PAGE.decode()
    assert ipaddress.ip_address(server) in ipaddress.ip_network("10.240.0.0/24")
    assert ipaddress.ip_address(client) in ipaddress.ip_network("10.240.2.0/24")
    # No NAT inside the cluster: the server saw node3's container address itself.
    assert re.search(rf"\b{re.escape(client)}\]?:\d+: response:200", log), log
    _assert_noop(cli, f)


def _fetch_captured(lab, tmp_path: Path) -> tuple[str, bytes, str]:
    """A container on node3 fetches a payload made for this call from a container on node1, over
    the cluster network, while tcpdump records the lab's bridge. Returns (payload, what the client
    got, the capture as tcpdump -A prints it)."""
    payload = f"clusterctl-payload-{time.time_ns()}"
    serve = f'mkdir -p /srv && echo {payload} > /srv/p.txt && exec httpd -f -p 8080 -h /srv'
    _host_docker(lab, "node1", "run", "-d", "--name", WEB, "--network", "clusterctl", IMAGE, "sh", "-c", serve)
    pcap = tmp_path / f"{payload}.pcap"
    # --immediate-mode: each packet is handed over (and written, -U) as it comes, none left in a buffer at the end.
    dump = subprocess.Popen(["tcpdump", "-i", lab.bridge(), "--immediate-mode", "-U", "-n", "-s", "0", "-w", str(pcap)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ip = _host_docker(lab, "node1", "inspect", "-f", '{{(index .NetworkSettings.Networks "clusterctl").IPAddress}}', WEB)
        server = ip.stdout.decode().strip()
        deadline = time.monotonic() + 10
        while not pcap.exists() or pcap.stat().st_size == 0:  # tcpdump writes its header once listening
            assert time.monotonic() < deadline and dump.poll() is None, dump.stderr.read() if dump.poll() is not None else "no capture"
            time.sleep(0.1)
        for _ in range(5):
            proc = _host_docker(lab, "node3", "run", "--rm", "--network", "clusterctl", IMAGE,
                                "sh", "-c", f"timeout 5 wget -qO- http://{server}:8080/p.txt", check=False)  # fmt: skip
            if proc.returncode == 0:
                break
            time.sleep(1)
        time.sleep(0.5)
    finally:
        dump.terminate()
        dump.wait(10)
        _host_docker(lab, "node1", "rm", "-f", WEB, check=False)
    read = subprocess.run(["tcpdump", "-r", str(pcap), "-n", "-A"], capture_output=True, text=True, errors="replace")
    assert " IP " in read.stdout, f"nothing captured on {lab.bridge()}: {dump.stderr.read()!r} {read.stderr!r} {pcap.stat().st_size} bytes"
    return payload, proc.stdout, read.stdout


def test_routed_traffic_crosses_the_wire_in_clear(cli, lab, tmp_path, busybox, restore):
    _teardown(cli, lab)
    _up(cli, _variant(lab, tmp_path, driver="routed"))
    payload, got, capture = _fetch_captured(lab, tmp_path)
    assert got.decode().strip() == payload
    assert payload in capture  # what wireguard must hide: the capture does see plain HTTP


def test_wireguard_mesh_reaches_across_hosts_encrypted(cli, lab, tmp_path, busybox, restore):
    _teardown(cli, lab)
    f = _variant(lab, tmp_path, driver="wireguard", handshake_timeout=20)
    report = _up(cli, f)
    steps = _network(report)
    assert {n: s["status"] for n, s in steps.items()} == dict.fromkeys(("node1", "node2", "node3"), "changed")
    assert "PrivateKey" not in json.dumps(report).replace("PrivateKey = %s", "")
    payload, got, capture = _fetch_captured(lab, tmp_path)
    assert got.decode().strip() == payload
    assert payload not in capture
    assert re.search(r"\.51820 > [0-9.]+\.51820: UDP", capture), capture[:2000]  # it crossed, as WireGuard
    # Each host: the kernel lacks the module, so wireguard-go runs; the key file is root's alone.
    out = on_all(cli, lab.cluster_file, f"pgrep -x wireguard-go >/dev/null && echo go; stat -c %a {wg.key_path('wg-clusterctl')}; "
                                         "wg show wg-clusterctl peers | wc -l")  # fmt: skip
    assert out == dict.fromkeys(("node1", "node2", "node3"), "go 600 2"), out
    # Server and client addresses stay the containers' own (no NAT inside the cluster).
    server, client, body, log = _serve_and_fetch(lab)
    assert body == PAGE.decode() and re.search(rf"\b{re.escape(client)}\]?:\d+: response:200", log), log
    _assert_noop(cli, f)
    # The tunnel survives an engine restart (it is not Docker's).
    _host_docker(lab, "node2", "info")
    proc = cli("exec", "-f", str(lab.cluster_file), "--host", "node2", "--", "sh", "-c", "service docker restart >/dev/null 2>&1; "
               "i=0; while ! docker info >/dev/null 2>&1 && [ $i -lt 60 ]; do i=$((i+1)); sleep 0.5; done; ip link show wg-clusterctl >/dev/null && echo up")  # fmt: skip
    assert proc.stdout.strip().endswith("up"), proc.stderr


def test_wireguard_hosts_leaving_and_joining_leave_the_other_tunnels_alone(cli, lab, tmp_path, busybox, restore):
    """Runs on the mesh the test above left: node3 leaves the file, then comes back."""
    f = _variant(lab, tmp_path, driver="wireguard")
    two = tmp_path / "two.yaml"
    doc = yaml.safe_load(f.read_text())
    doc["hosts"] = [h for h in doc["hosts"] if h["name"] != "node3"]
    two.write_text(yaml.safe_dump(doc, sort_keys=False))

    def transfer(host: str) -> dict[str, int]:
        """Bytes received from each peer (a peer removed and added again would start from 0)."""
        out = cli("exec", "-f", str(lab.cluster_file), "--host", host, "--", "wg", "show", "wg-clusterctl", "transfer").stdout
        return {key: int(rx) for key, rx, _ in (line.split() for line in out.splitlines() if line.strip())}

    mtu = _host_docker(lab, "node1", "run", "--rm", "--network", "clusterctl", IMAGE, "cat", "/sys/class/net/eth0/mtu")
    assert mtu.stdout.decode().strip() == "1420"  # the containers' MTU leaves room for WireGuard
    before = transfer("node1")
    assert len(before) == 2
    report = _up(cli, two)
    assert [h["name"] for h in report["hosts"]] == ["node1", "node2"]
    after = transfer("node1")
    (kept,) = after  # node3's peer is gone, node2's is the same one: its counters went on
    assert after[kept] >= before[kept] > 0
    routes = on_all(cli, lab.cluster_file, "ip -4 route show dev wg-clusterctl | cut -d' ' -f1 | sort | tr '\\n' ' '")
    assert routes["node1"].split() == [str(ipaddress.ip_network("10.240.1.0/24"))], routes
    _up(cli, f)  # node3 back: every host has both peers again
    assert on_all(cli, lab.cluster_file, "wg show wg-clusterctl peers | wc -l") == dict.fromkeys(("node1", "node2", "node3"), "2")
    _assert_noop(cli, f)


def test_wireguard_names_the_pair_that_cannot_handshake_and_heals(cli, lab, tmp_path, busybox, restore):
    _teardown(cli, lab)
    f = _variant(lab, tmp_path, driver="wireguard", handshake_timeout=6)
    addrs = {h["name"]: h["address"] for h in yaml.safe_load(lab.cluster_file.read_text())["hosts"]}
    drop = {"node2": addrs["node3"], "node3": addrs["node2"]}
    for host, other in drop.items():  # UDP closed between node2 and node3, both ways
        _host_exec = ["iptables", "-I", "INPUT", "-p", "udp", "-s", other, "--dport", "51820", "-j", "DROP"]
        assert cli("exec", "-f", str(lab.cluster_file), "--host", host, "--", *_host_exec).returncode == 0
    try:
        code, report = cli.json("up", "-f", str(f))
        assert code == 1
        steps = _network(report)
        assert steps["node1"]["status"] == "changed", steps["node1"]
        for host, other in (("node2", "node3"), ("node3", "node2")):
            assert steps[host]["status"] == "failed"
            assert f"no WireGuard handshake between {host} and {other} (" in steps[host]["message"], steps[host]
            assert "\n" not in steps[host]["message"].strip()
    finally:
        for host, other in drop.items():
            cli("exec", "-f", str(lab.cluster_file), "--host", host, "--", "iptables", "-D", "INPUT", "-p", "udp", "-s", other, "--dport", "51820", "-j", "DROP")
    _up(cli, f)  # the port open again: the next up converges
    _assert_noop(cli, f)


def test_wireguard_host_without_the_packages_fails_alone(cli, lab, tmp_path, busybox, restore):
    _teardown(cli, lab)
    # node3 loses WireGuard and its archive: the packages gone, apt's sources pointing at a port
    # nothing listens on (loopback: no traffic leaves the lab).
    # (Its package lists go aside too, or apt would try the real archive.)
    aside = ("mkdir -p /root/aside && mv /etc/apt/sources.list /etc/apt/sources.list.d /var/lib/apt/lists /root/aside/ && "
             "mv /var/cache/apt/archives/wireguard-* /root/aside/ && mkdir -p /var/lib/apt/lists/partial /etc/apt/sources.list.d && ")  # fmt: skip
    broken = "echo 'deb http://127.0.0.1:9/debian stable main' > /etc/apt/sources.list"
    back = ("rm -rf /etc/apt/sources.list /etc/apt/sources.list.d /var/lib/apt/lists && "
            "mv /root/aside/sources.list /root/aside/sources.list.d /etc/apt/ && mv /root/aside/lists /var/lib/apt/ && "
            "mv /root/aside/wireguard-* /var/cache/apt/archives/ && rmdir /root/aside")  # fmt: skip
    node3 = ["exec", "-f", str(lab.cluster_file), "--host", "node3", "--", "sh", "-c"]
    assert cli(*node3, "dpkg -r wireguard-tools wireguard-go >/dev/null && " + aside + broken).returncode == 0
    try:
        f = _variant(lab, tmp_path, driver="wireguard")
        code, report = cli.json("up", "-f", str(f))
        assert code == 1
        steps = _network(report)
        assert steps["node3"]["status"] == "failed" and "no WireGuard here" in steps["node3"]["message"], steps["node3"]
        assert {steps[n]["status"] for n in ("node1", "node2")} == {"changed"}
        out = on_all(cli, lab.cluster_file, "wg show wg-clusterctl peers 2>/dev/null | wc -l")
        assert (out["node1"], out["node2"]) == ("1", "1"), out  # each other, not node3
    finally:
        assert cli(*node3, back).returncode == 0
    _up(cli, f)
    out = on_all(cli, lab.cluster_file, "wg show wg-clusterctl peers | wc -l")
    assert out == dict.fromkeys(("node1", "node2", "node3"), "2"), out
