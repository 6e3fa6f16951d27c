"""End to end on the shared lab, last: `clusterctl down` removes what `up` made, Docker stays;
a second `down` changes nothing; `up` afterwards brings the whole cluster back."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import on_all

pytestmark = pytest.mark.e2e

LEFTOVERS = (
    "docker ps -aq --filter label=clusterctl.cluster | wc -l; "
    "docker images -q --filter label=clusterctl.role | wc -l; "
    "docker network ls -q --filter label=clusterctl.cluster | wc -l; "
    "docker info --format '{{.Swarm.LocalNodeState}}'; "
    "ls -d /etc/clusterctl /var/lib/clusterctl 2>/dev/null | wc -l; "
    "{ grep -s dns /etc/docker/daemon.json || true; } | wc -l"
)


def _per_host(cli, f) -> list[str]:
    return [v for _, v in sorted(on_all(cli, f, LEFTOVERS).items())]


def test_down_needs_yes_off_a_terminal_and_dry_run_changes_nothing(cli, lab):
    proc = cli("down", "-f", str(lab.cluster_file))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith("pass --yes (or --dry-run to see what it would remove)")
    before = _per_host(cli, lab.cluster_file)
    code, report = cli.json("down", "-f", str(lab.cluster_file), "--dry-run")
    assert code == 0 and report["dry_run"] and [h["round_trips"] for h in report["hosts"]] == [1, 1, 1]
    assert any(p["commands"] for h in report["hosts"] for p in h["phases"] if p["phase"] == "consul")
    assert _per_host(cli, lab.cluster_file) == before


FOREIGN = (
    "docker network create --label clusterctl.cluster=other --label clusterctl.cidr=10.77.0.0/24 "
    "--subnet 10.77.0.0/24 othernet >/dev/null && "
    "docker network create --subnet 10.78.0.0/24 plainnet >/dev/null && "
    'docker run -d --name foreign --restart unless-stopped --network othernet --entrypoint busybox "$(docker images clusterctl/base -q | head -n 1)" sleep 600 >/dev/null'
)


def test_down_removes_everything_but_docker_and_a_second_down_changes_nothing(cli, lab):
    # node2 also carries another cluster's network with a container on it, and a plain network.
    assert cli("exec", "-f", str(lab.cluster_file), "--host", "node2", "--", "sh", "-c", FOREIGN).returncode == 0
    code, report = cli.json("down", "-f", str(lab.cluster_file), "--yes")
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    left = cli("exec", "-f", str(lab.cluster_file), "--host", "node2", "--", "sh", "-c",
               "docker inspect -f '{{.State.Running}} {{.State.Status}}:{{.State.Error}}' foreign; docker network ls --format '{{.Name}}' | grep -c -e othernet -e plainnet")  # fmt: skip
    cleanup = "docker rm -f foreign >/dev/null; docker network rm othernet plainnet >/dev/null; docker image prune -af --filter label=clusterctl.role >/dev/null"
    try:
        # The foreign container and both networks are still there. (down restarts the engine to
        # drop its DNS setting, which stops running containers: seen here even with
        # --restart unless-stopped; so only its existence is checked.)
        words = left.stdout.split()
        assert words[0] in ("true", "false") and words[-1] == "2", left.stdout + left.stderr
    finally:
        assert cli("exec", "-f", str(lab.cluster_file), "--host", "node2", "--", "sh", "-c", cleanup).returncode == 0
    assert _per_host(cli, lab.cluster_file) == ["0 0 0 inactive 0 0"] * 3
    code, report = cli.json("down", "-f", str(lab.cluster_file), "--yes")
    assert code == 0 and report["changed"] is False and [h["round_trips"] for h in report["hosts"]] == [1, 1, 1]
    # Docker is still there and running.
    out = cli("exec", "-f", str(lab.cluster_file), "--all", "--", "docker", "info", "--format", "{{.ServerVersion}}")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3


def test_up_after_down_brings_the_cluster_back(cli, lab):
    code, report = cli.json("up", "-f", str(lab.cluster_file))
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    # down dropped the engine's DNS setting, so the engine restarts: each host received the
    # filebox's archive meanwhile, and the filebox phase loaded it from there (then removed it).
    for host in report["hosts"]:
        steps = {p["phase"]: p["message"] for p in host["phases"]}
        assert "image(s) (" in steps["engine"] and "for the filebox phase meanwhile" in steps["engine"], steps["engine"]
        assert "received ahead into /var/lib/clusterctl/spool/" in steps["filebox"], steps["filebox"]
    left = cli("exec", "-f", str(lab.cluster_file), "--all", "--", "sh", "-c", "ls -A /var/lib/clusterctl/spool | wc -l")
    assert left.returncode == 0 and [line.split("|")[-1].strip() for line in left.stdout.splitlines()] == ["0"] * 3, left.stdout
    code, st = cli.json("status", "-f", str(lab.cluster_file))
    assert code == 0 and [h["alive"] for h in st["hosts"]] == ["alive"] * 3 and st["leader"], st
