"""End to end on hosts that run systemd as PID 1, as real hosts do: Debian 12 and Debian 13 (the
containerd image store on 13), both bare. `up` installs Docker from each host's archive, enables
and starts it with systemctl, writes daemon.json before that first start (so the engine phase
has nothing to restart), and brings up Consul; a second `up` changes nothing.

Debian sid is left out: its systemd (258 and later) refuses the cgroup v1 hierarchy of this
machine's kernel, and `clusterctl lab up --init systemd` says so.
"""

from __future__ import annotations

import json
import os

import pytest

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
