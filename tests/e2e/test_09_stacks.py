"""End to end on the shared mixed lab, after test_07: the whole cluster on the stacks users run.

node1 runs Debian 12 with Docker 20.10 (classic image store), node2 Debian 13 with Docker 26 and
node3 Debian sid with Docker 28, both on the containerd image store, where images are named by
their manifest digest and an archive that leaves out the layers a host holds must be in the OCI
layout. One hello replica on every host: up, DNS from every host, a no-op in one round trip (on
the containerd store it would otherwise call every image missing), a code change that ships only
its layer to every host, then down.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import MIXED_STACKS
from tests.e2e.test_06_services import HELLO, _on, _up

pytestmark = pytest.mark.e2e


def _file(lab, tmp: Path, app: Path) -> Path:
    doc = yaml.safe_load(lab.cluster_file.read_text())
    doc["filebox"] = {"binaries": ["consul", "/usr/bin/node"]}
    doc["services"] = [{"name": "hello", "app": str(app), "replicas": 3, "check": {"http": "/"}}]
    path = tmp / "stacks.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(cli, lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stacks")
    app = tmp / "hello"
    shutil.copytree(HELLO, app, symlinks=True)
    return _file(lab, tmp, app)


def test_every_stack_runs_the_cluster_and_finds_hello_by_name(cli, lab, stack):
    report = _up(cli, stack)
    assert all(h["ok"] for h in report["hosts"])
    proc = cli("exec", "-f", str(stack), "--all", "--", "docker", "info", "--format", "{{.ServerVersion}} {{json .DriverStatus}}")
    for line in proc.stdout.splitlines():
        host, _, info = (part.strip() for part in line.partition("|"))
        version, store = MIXED_STACKS[host]
        assert info.startswith(version) and ("io.containerd.snapshotter.v1" in info) == (store == "containerd"), line
    for host in MIXED_STACKS:
        out = _on(lab, host, "wget -qO- http://hello.service.consul:3000/")
        assert out.strip() == "Hello world", (host, out)


def test_second_up_is_a_no_op_in_one_round_trip_on_every_store(cli, stack):
    code, report = cli.json("up", "-f", str(stack))
    assert code == 0 and report["changed"] is False, json.dumps(report, indent=1)[-3000:]
    assert [(h["round_trips"], h["bytes_sent"]) for h in report["hosts"]] == [(1, 0)] * 3


def test_a_code_change_ships_only_its_layer_to_every_host(cli, lab, stack):
    app = Path(yaml.safe_load(stack.read_text())["services"][0]["app"])
    (app / "express.js").write_text((app / "express.js").read_text().replace("Hello world", "Hello stacks"))
    report = _up(cli, stack)
    sent = {h["name"]: h["bytes_sent"] for h in report["hosts"]}
    # The code layer (about 40 kB with the archive's own files); node_modules, base, filebox stay.
    assert all(0 < n < 200_000 for n in sent.values()), sent
    for host in MIXED_STACKS:
        assert _on(lab, host, "wget -qO- http://hello.service.consul:3000/").strip() == "Hello stacks", host


def test_down_removes_the_cluster_from_every_stack(cli, lab, stack):
    code, report = cli.json("down", "-f", str(stack), "--yes")
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    out = cli("exec", "-f", str(stack), "--all", "--", "sh", "-c",
              "docker ps -aq --filter label=clusterctl.cluster | wc -l; docker images -q --filter label=clusterctl.role | wc -l")  # fmt: skip
    assert [line.split("|", 1)[1].strip() for line in out.stdout.splitlines()] == ["0", "0"] * 3, out.stdout
    code, again = cli.json("down", "-f", str(stack), "--yes")
    assert code == 0 and again["changed"] is False
