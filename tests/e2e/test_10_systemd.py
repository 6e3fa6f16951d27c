"""End to end on hosts that run systemd as PID 1, as real hosts do: Debian 12 and Debian 13 (the
containerd image store on 13), both bare. `up` installs Docker from each host's archive, enables
and starts it with systemctl, writes daemon.json before that first start (so the engine phase
has nothing to restart), and brings up Consul; a second `up` changes nothing. Then the wireguard
driver across two providers: moving the running Consul servers onto the mesh is refused before
anything runs, and after `down` Consul binds the mesh addresses, nothing but WireGuard crosses
between the hosts, and after a host reboots (its container restarted: systemd boots again) the
mesh, its rules and Consul are back before anyone runs `up`, which then changes nothing.

Debian sid is left out: its systemd (258 and later) refuses the cgroup v1 hierarchy of this
machine's kernel, and `clusterctl lab up --init systemd` says so.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import time

import pytest
import yaml

from tests.e2e.conftest import lab_for_tests, on_all

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sd_lab(cli):
    flags = ("--bare", "--os", "debian-12,debian-13", "--image-store", "containerd", "--init", "systemd")
    with lab_for_tests(cli, f"e2esd{os.getpid()}", *flags, hosts=2) as lab:
        yield lab


def test_up_installs_docker_with_systemctl_and_never_restarts_it(cli, sd_lab):
    assert set(on_all(cli, sd_lab.cluster_file, "ps -p 1 -o comm=; command -v docker || echo no-docker").values()) == {"systemd no-docker"}
    code, report = cli.json("up", "-f", str(sd_lab.cluster_file))
    assert code == 0, json.dumps(report, indent=1)[-4000:]
    for host in report["hosts"]:
        phases = {p["phase"]: p for p in host["phases"]}
        assert "enable and start docker (systemd)" in phases["docker"]["message"]
        assert phases["engine"]["status"] == "ok"  # daemon.json was written before the first start
        assert phases["consul"]["status"] == "changed"
    states = on_all(cli, sd_lab.cluster_file, "systemctl is-enabled docker; systemctl is-active docker; "
                                              "systemctl show docker -p NRestarts --value; docker info --format '{{json .DriverStatus}}'")  # fmt: skip
    assert states["node1"].startswith("enabled active 0 ") and "snapshotter" not in states["node1"], states
    assert states["node2"].startswith("enabled active 0 ") and "io.containerd.snapshotter.v1" in states["node2"], states


def test_second_up_changes_nothing_in_one_round_trip(cli, sd_lab):
    code, report = cli.json("up", "-f", str(sd_lab.cluster_file))
    assert code == 0 and report["changed"] is False, json.dumps(report, indent=1)[-3000:]
    assert [h["round_trips"] for h in report["hosts"]] == [1, 1]


def test_wireguard_across_providers_carries_consul_and_comes_back_after_a_reboot(cli, sd_lab, tmp_path):
    doc = yaml.safe_load(sd_lab.cluster_file.read_text())
    doc["network"] = {"driver": "wireguard"}
    for host, provider in zip(doc["hosts"], ("aws", "hetzner")):
        host.setdefault("labels", {})["provider"] = provider
    f = tmp_path / "providers.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    # Consul's servers run on the cluster addresses (the tests above): moving them onto the mesh
    # under a running cluster is refused before anything runs; down, then up, makes it anew.
    code, report = cli.json("up", "-f", str(f))
    assert code == 1 and "consul servers would move to new addresses" in report["refused"]["consul"], report.get("refused")
    assert [h["round_trips"] for h in report["hosts"]] == [1, 1]
    code, report = cli.json("down", "-f", str(f), "--yes")
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    code, report = cli.json("up", "-f", str(f))
    assert code == 0, json.dumps(report, indent=1)[-4000:]
    binds = on_all(cli, f, "docker inspect -f '{{json .Args}}' clusterctl-consul | tr ',' '\\n' | sed -n 's/.*-bind=\\([0-9.]*\\).*/\\1/p'; "
                           "systemctl is-enabled clusterctl-wireguard-wg-clusterctl.service")  # fmt: skip
    mesh = {}
    for host, out in binds.items():
        addr, enabled = out.split()
        assert ipaddress.ip_address(addr) in ipaddress.ip_network("10.240.0.0/16") and enabled == "enabled", binds
        mesh[host] = addr
    # Between the two hosts, for a few seconds of Consul's gossip: WireGuard only (UDP 51820).
    addrs = [h["address"] for h in doc["hosts"]]
    dump = subprocess.run(["timeout", "6", "tcpdump", "-i", sd_lab.bridge(), "--immediate-mode", "-n", "-l", "host", addrs[0], "and", "host", addrs[1]],
                          capture_output=True, text=True)  # fmt: skip
    lines = [line for line in dump.stdout.splitlines() if " IP " in line]
    assert lines and all(re.search(r"\.51820 > [0-9.]+\.51820: UDP", line) for line in lines), dump.stdout[-2000:]
    # Consul knows each node by its mesh address (its DNS, as every container asks it).
    known = on_all(cli, f, "dig +short @127.0.0.1 node1.node.consul node2.node.consul")
    assert known == dict.fromkeys(mesh, f"{mesh['node1']} {mesh['node2']}"), (known, mesh)

    # A reboot of node2: systemd starts Docker, then the mesh's unit; `up` finds nothing to do.
    sd_lab.docker("restart", sd_lab.container("node2"))
    deadline = time.monotonic() + 60
    while cli("exec", "-f", str(f), "--host", "node2", "--", "systemctl", "is-active", "clusterctl-wireguard-wg-clusterctl.service").returncode:
        assert time.monotonic() < deadline, "the mesh did not come back after the reboot"
        time.sleep(1)
    code, report = cli.json("up", "-f", str(f))
    assert code == 0 and report["changed"] is False, json.dumps(report, indent=1)[-3000:]
    assert [h["round_trips"] for h in report["hosts"]] == [1, 1]
    # down takes the mesh away too: the link (and wireguard-go with it), the unit, the key.
    code, report = cli.json("down", "-f", str(f), "--yes")
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    gone = on_all(cli, f, "ip link show wg-clusterctl >/dev/null 2>&1 && echo link; pgrep -x wireguard-go && echo go; "
                          "ls /etc/systemd/system/clusterctl-wireguard-* /etc/systemd/system/*/clusterctl-wireguard-* 2>/dev/null; "
                          "ls /etc/clusterctl/wireguard 2>/dev/null; ip -4 route show 10.240.0.0/16 | head -1; echo done")  # fmt: skip
    assert set(gone.values()) == {"done"}, gone
