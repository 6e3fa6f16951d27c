"""End to end on the shared lab (Consul running after test_02): an `up` stopped by Ctrl-C or
SIGTERM during the filebox transfer, during the Consul roll and during a service roll ends its
remote commands, removes the relay, releases the lock, says what it did, exits 130; the next
`up` converges, with one container of each kind per host and no relay left."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest
import yaml

from tests.conftest import ended

pytestmark = pytest.mark.e2e

HOSTS = ("node1", "node2", "node3")


def _on(lab, host: str, script: str) -> str:
    return lab.docker("exec", lab.container(host), "sh", "-c", script, check=False).stdout


def _file(lab, tmp_path, name: str, services=()) -> object:
    """The lab's file with a filebox of its own (a marker file: a new version every call)."""
    doc = yaml.safe_load(lab.cluster_file.read_text())
    marker = tmp_path / f"{name}-marker.txt"
    marker.write_text(f"{name} {uuid.uuid4()}\n")
    # relay: true, so an interrupt finds a relay to remove (`auto` skips it on the lab).
    doc["filebox"] = {"binaries": ["consul"], "files": [f"{marker}:/etc/interrupt-marker.txt"], "relay": True}
    if services:
        doc["services"] = list(services)
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    return f


def _interrupt_when(cli, f, ready, sig, timeout: float = 300) -> dict:
    """`up -v -f F -o json` in the background, sent `sig` as soon as ready() is true; its report
    (with `_stderr` and `_times`: what a failing test shows)."""
    proc = cli.start("up", "-v", "-f", str(f), "-o", "json")
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"up ended before the moment to interrupt: {proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "the moment to interrupt never came"
            time.sleep(0.2)
        sent = time.strftime("%H:%M:%S", time.gmtime())
        proc.send_signal(sig)
        out, err = ended(proc, 120)
        done = time.strftime("%H:%M:%S", time.gmtime())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert "interrupted" in err, err[-2000:]
    report = json.loads(out)
    report["_stderr"], report["_times"] = err, f"signal sent {sent} UTC, up ended {done} UTC"
    return report


def _why_left(lab, report: dict) -> str:
    """What a failing leftovers check shows: the relay's times, the run's own lines."""
    seen = {h: _on(lab, h, "date -u +%T.%N; docker ps -a --filter name=clusterctl-relay "
                           "--format '{{.ID}} {{.Status}} {{.CreatedAt}}'") for h in HOSTS}  # fmt: skip
    return f"{report['_times']}; on the hosts: {seen}; up -v printed:\n{report['_stderr'][-6000:]}"


def _leftovers(lab) -> dict[str, str]:
    """What an interrupted run must not leave running: its scripts, loads, relay."""
    script = ("docker ps -aq --filter name=clusterctl-relay; "
              "ps -eo args | grep -E '^(sh -c .*run-|docker load|busybox wget)' | grep -v grep; "
              "ls ~/.cache/clusterctl 2>/dev/null")  # fmt: skip
    return {h: out for h in HOSTS if (out := _on(lab, h, script).strip())}


def _converged(cli, lab, f) -> dict:
    code, report = cli.json("up", "-f", str(f))
    failed = [(h["name"], p["phase"], p["message"]) for h in report["hosts"] for p in h["phases"] if p["status"] == "failed"]
    assert code == 0, failed or json.dumps(report)[-3000:]
    for host in HOSTS:
        counts = _on(lab, host, "for r in consul filebox relay service; do docker ps -aq --filter label=clusterctl.role=$r | wc -l; done").split()
        assert counts[0] == "1" and counts[2] == "0", (host, counts)
    code, again = cli.json("up", "-f", str(f))
    assert code == 0 and again["changed"] is False, json.dumps(again, indent=1)[-3000:]
    return report


def _consul_ids(lab) -> dict[str, str]:
    return {h: _on(lab, h, "docker inspect -f '{{.Id}}' clusterctl-consul 2>/dev/null").strip() for h in HOSTS}


def test_interrupted_during_the_filebox_transfer(cli, lab, tmp_path):
    f = _file(lab, tmp_path, "transfer")
    report = _interrupt_when(cli, f, lambda: "docker load" in _on(lab, "node1", "ps -eo args"), signal.SIGINT)
    assert report["interrupted"] == "filebox", report["interrupted"]
    steps = {h["name"]: [p["phase"] for p in h["phases"]] for h in report["hosts"]}
    assert all("consul" not in s for s in steps.values()), steps  # nothing after the filebox started
    time.sleep(1)
    assert _leftovers(lab) == {}, _why_left(lab, report)
    _converged(cli, lab, f)


def test_interrupted_during_the_consul_roll(cli, lab, tmp_path):
    f = _file(lab, tmp_path, "roll")
    before = _consul_ids(lab)
    report = _interrupt_when(cli, f, lambda: any(i not in ("", before[h]) for h, i in _consul_ids(lab).items()), signal.SIGTERM)
    assert report["interrupted"] == "consul", report["interrupted"]
    time.sleep(1)
    assert _leftovers(lab) == {}, _why_left(lab, report)
    _converged(cli, lab, f)
    code, st = cli.json("status", "-f", str(f))
    assert code == 0 and st["leader"], st


def test_interrupted_during_a_service_roll(cli, lab, tmp_path):
    app = tmp_path / "web"
    app.mkdir()
    (app / "clusterctl-app.yaml").write_text('name: web\ncommand: [httpd, -f, -p, "8080", -h, /app]\nport: 8080\n')
    (app / "index.html").write_text("one\n")
    web = {"name": "web", "app": str(app), "replicas": 3, "check": {"http": "/", "interval": "1s"}}
    try:
        f = _file(lab, tmp_path, "svc", [web])
        _converged(cli, lab, f)
        ids = {h: _on(lab, h, "docker inspect -f '{{.Id}}' clusterctl-svc-web").strip() for h in HOSTS}
        (app / "index.html").write_text("two\n")  # a new app image: every replica rolls, one host at a time

        def replaced_one() -> bool:
            return any(_on(lab, h, "docker inspect -f '{{.Id}}' clusterctl-svc-web 2>/dev/null").strip() not in ("", ids[h]) for h in HOSTS)

        report = _interrupt_when(cli, f, replaced_one, signal.SIGTERM)
        assert report["interrupted"] == "services", report["interrupted"]
        time.sleep(1)
        assert _leftovers(lab) == {}, _why_left(lab, report)
        _converged(cli, lab, f)
        for host in HOSTS:
            assert _on(lab, host, "docker ps -q --filter label=clusterctl.role=service | wc -l").strip() == "1", host
            assert _on(lab, host, "docker exec clusterctl-svc-web busybox wget -qO- http://127.0.0.1:8080/").strip() == "two", host
    finally:
        code, report = cli.json("up", "-f", str(lab.cluster_file))  # the lab's own file: no service
        assert code == 0, json.dumps(report)[-3000:]
