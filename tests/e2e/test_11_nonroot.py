"""End to end as a user other than root, with passwordless sudo, as a cloud image's default user:
a 2-host lab of its own (`lab up --bare --user ops`: root has no login). `up` installs Docker
through sudo and converges with two services, whose Consul definitions live in /etc/clusterctl
(root's alone, as is daemon.json here); a second `up` reads them back through `sudo -n` and
changes nothing, in one round trip a host; a service taken out of the file is deregistered and
its definition removed on the next `up`.

The services are BusyBox httpd on the cluster's base (no runtime in the filebox but Consul's),
so the lab's whole run stays short (about 2 minutes on 2 busy cores).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from clusterctl.commands.service import definition_path
from tests.e2e.conftest import lab_for_tests, on_all
from tests.e2e.consul_helpers import as_operator

pytestmark = pytest.mark.e2e

USER = "ops"


@pytest.fixture(scope="module")
def nr_lab(cli):
    with lab_for_tests(cli, f"e2enr{os.getpid()}", "--bare", "--user", USER, hosts=2) as lab:
        yield lab


@pytest.fixture(scope="module")
def files(nr_lab, tmp_path_factory) -> dict[str, Path]:
    """The lab's file with services web and spare (both on both hosts), and with web alone."""
    tmp = tmp_path_factory.mktemp("nonroot")
    app = tmp / "web"
    app.mkdir()
    (app / "index.html").write_text("hello from httpd\n")
    (app / "clusterctl-app.yaml").write_text('name: web\ncommand: [httpd, -f, -p, "8080", -h, /app]\nport: 8080\n')
    doc = yaml.safe_load(nr_lab.cluster_file.read_text())
    assert doc["ssh"]["user"] == USER
    web = {"name": "web", "app": str(app), "replicas": 2, "check": {"http": "/", "interval": "1s"}}
    spare = {"name": "spare", "app": str(app), "replicas": 2, "port": 8081, "command": ["httpd", "-f", "-p", "8081", "-h", "/app"],
             "check": {"interval": "1s"}}  # fmt: skip
    out = {}
    for name, services in (("both", [web, spare]), ("web", [web])):
        out[name] = tmp / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump({**doc, "services": services}, sort_keys=False))
    return out


def _up(cli, f: Path) -> dict:
    code, report = cli.json("up", "-f", str(f))
    assert code == 0, json.dumps(report, indent=1)[-4000:]
    return report


def test_up_as_a_sudo_user_converges_with_root_only_definitions(cli, nr_lab, files):
    _up(cli, files["both"])
    # What the probe must read through sudo: clusterctl's files, and daemon.json (written
    # before Docker was installed, so /etc/docker was made under umask 077).
    readable = [f"{{ test -r {p} && echo readable || echo root-only; }}" for p in ("/etc/clusterctl/consul", "/etc/docker/daemon.json")]
    script = "; ".join(["id -un", *readable, f"sudo -n test -f {definition_path('spare')} && echo defined"])
    assert on_all(cli, files["both"], script) == {h: f"{USER} root-only root-only defined" for h in ("node1", "node2")}


def test_second_up_changes_nothing_in_one_round_trip(cli, files):
    report = _up(cli, files["both"])
    assert report["changed"] is False, json.dumps(report, indent=1)[-3000:]
    assert [h["round_trips"] for h in report["hosts"]] == [1, 1]


def test_a_service_taken_out_is_deregistered_and_its_definition_removed(cli, nr_lab, files):
    report = _up(cli, files["web"])
    for host in report["hosts"]:
        services = next(p for p in host["phases"] if p["phase"] == "services")
        assert services["status"] == "changed" and "deregister spare" in services["message"], services
    assert on_all(cli, files["web"], f"sudo -n test -e {definition_path('spare')} && echo defined || echo gone") == {
        "node1": "gone", "node2": "gone",
    }  # fmt: skip
    # The catalog follows the agents' sync: after both hosts reloaded their definitions at once,
    # a busy CI machine was once seen with web briefly absent (see the closing note).
    deadline = time.monotonic() + 30
    while True:
        catalog = as_operator(nr_lab, "node1", "catalog", "services", check=True).split()
        if ("web" in catalog and "spare" not in catalog) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "web" in catalog and "spare" not in catalog, catalog
    again = _up(cli, files["web"])
    assert again["changed"] is False and [h["round_trips"] for h in again["hosts"]] == [1, 1], json.dumps(again, indent=1)[-3000:]


def test_down_as_a_sudo_user_removes_it_all_and_a_second_down_changes_nothing(cli, files):
    code, report = cli.json("down", "-f", str(files["web"]), "--yes")
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    left = ("sudo -n sh -c \"docker ps -aq --filter label=clusterctl.cluster | wc -l; "
            "docker images -q --filter label=clusterctl.role | wc -l; "
            "ls -d /etc/clusterctl /var/lib/clusterctl 2>/dev/null | wc -l\"")  # fmt: skip
    assert on_all(cli, files["web"], left) == {"node1": "0 0 0", "node2": "0 0 0"}
    code, again = cli.json("down", "-f", str(files["web"]), "--yes")
    assert code == 0 and again["changed"] is False and [h["round_trips"] for h in again["hosts"]] == [1, 1], json.dumps(again)[-3000:]
