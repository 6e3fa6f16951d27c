"""End to end on the shared 3-host lab: the article's express app as a service of microcontainers.

Placed by label (spread over a `provider` label: two hosts "red", one "blue"), started from the
filebox, registered with Consul with an HTTP health check, found by name from any container on
any host, replaced one host at a time without a failed request, scaled, constrained, restarted.
The module ends by converging the lab's own file again, which removes the service.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from clusterctl.lab import example
from clusterctl.lab import lab as lab_mod
from tests.e2e.conftest import watching_processes

pytestmark = pytest.mark.e2e

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"
# Requests from a BusyBox container on node2, 10 a second, while an `up` runs.
LOOP = """
ok=0; bad=0; end=$(($(date +%s)+$1))
while [ "$(date +%s)" -lt "$end" ]; do
  if timeout 3 wget -qO- http://hello.service.consul:3000/ >/dev/null 2>&1; then ok=$((ok+1)); else bad=$((bad+1)); fi
  sleep 0.1
done
echo "ok=$ok bad=$bad"
"""


def _file(lab, tmp: Path, name: str, app: Path = HELLO, **service) -> Path:
    doc = yaml.safe_load(lab.cluster_file.read_text())
    doc["filebox"] = {"binaries": ["consul", "/usr/bin/node"]}
    for host, provider in zip(doc["hosts"], ("red", "red", "blue")):
        host["labels"] = {"provider": provider}
    doc["services"] = [{"name": "hello", "app": str(app), "replicas": 2, "spread": "provider", "check": {"http": "/"}} | service]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _up(cli, f: Path) -> dict:
    code, report = cli.json("up", "-f", str(f))
    assert code == 0, json.dumps(report, indent=1)[-4000:]
    return report


def _services(report: dict) -> dict[str, dict]:
    return {h["name"]: next((p for p in h["phases"] if p["phase"] == "services"), {}) for h in report["hosts"]}


def _on(lab, host: str, script: str, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
    """A shell script run by a BusyBox container (the cluster's base image) on a lab host."""
    docker = (
        'img=$(docker images clusterctl/base -q | head -n 1); '
        'docker run --rm -i --network "$NET" --entrypoint busybox "$img" sh -c "$0" "$@"'
    )
    proc = subprocess.run(
        [lab_mod.docker_cli(), "exec", "-i", "-e", f"NET={args[0] if args else 'bridge'}", lab.container(host),
         "sh", "-c", docker, script, *args[1:]],
        capture_output=True, text=True, input=stdin, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _passing(cli, f: Path) -> list[str]:
    """Addresses of the hello instances Consul reports passing (asked on node1)."""
    proc = cli("exec", "-f", str(f), "--host", "node1", "--", "docker", "exec", "clusterctl-consul",
               "wget", "-qO-", "http://127.0.0.1:8500/v1/health/service/hello?passing")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return sorted(e["Service"]["Address"] for e in json.loads(proc.stdout))


def _addresses(lab) -> dict[str, str]:
    return {h["name"]: h["address"] for h in yaml.safe_load(lab.cluster_file.read_text())["hosts"]}


@pytest.fixture(scope="module")
def svc(cli, lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("services")
    yield tmp
    # Back to the lab's own file: no services, the lab's filebox.
    report = _up(cli, lab.cluster_file)
    assert all("remove the old filebox container" in next(p for p in h["phases"] if p["phase"] == "prune")["message"]
               for h in report["hosts"])  # fmt: skip
    # No replica, no definition; one filebox container; two images: the filebox and its base
    # (the node filebox, its base and the app images were pruned).
    out = cli("exec", "-f", str(lab.cluster_file), "--all", "--", "sh", "-c",
              "docker ps -aq --filter label=clusterctl.role=service | wc -l; ls /etc/clusterctl/consul/services | wc -l; "
              "docker ps -aq --filter label=clusterctl.role=filebox | wc -l; docker images -q --filter label=clusterctl.role | wc -l")  # fmt: skip
    counts = [line.split("|", 1)[1].strip() for line in out.stdout.splitlines()]
    assert counts == ["0", "0", "1", "2"] * 3, out.stdout
    code, again = cli.json("up", "-f", str(lab.cluster_file))
    assert code == 0 and again["changed"] is False, json.dumps(again, indent=1)[-3000:]


def test_replicas_spread_over_providers_and_pass_their_checks(cli, lab, svc):
    report = _up(cli, _file(lab, svc, "two"))
    steps = _services(report)
    assert steps["node2"]["status"] == "ok"  # red already has node1
    for host in ("node1", "node3"):
        assert steps[host]["status"] == "changed" and "register hello" in steps[host]["message"]
        assert "wait until consul reports hello healthy" in steps[host]["message"]
    addr = _addresses(lab)
    logs = lab.docker("exec", lab.container("node3"), "docker", "logs", "--tail", "20", "clusterctl-consul", check=False)
    assert _passing(cli, lab.cluster_file) == sorted([addr["node1"], addr["node3"]]), (logs.stdout + logs.stderr)[-4000:]


def test_any_container_finds_hello_by_name(lab, svc):
    addr = _addresses(lab)
    # A plain `docker run` on node2 (which runs no replica), and one on the cluster network.
    for network in ("bridge", "clusterctl"):
        out = _on(lab, "node2", "nslookup hello.service.consul; wget -qO- http://hello.service.consul:3000/", network)
        found = sorted(line.split()[-1] for line in out.splitlines() if line.startswith("Address:") and ":53" not in line)
        assert found == sorted([addr["node1"], addr["node3"]]), out
        assert out.rstrip().endswith("Hello world"), out
    # The line the local lab 'default' ends its `up` with (lab/example.py), on node2.
    asked = lab.docker("exec", lab.container("node2"), "sh", "-c", example.ask_line(), check=False)
    assert asked.returncode == 0 and asked.stdout.strip() == "Hello world", asked


def test_second_up_changes_nothing_in_one_round_trip(cli, lab, svc):
    code, report = cli.json("up", "-f", str(svc / "two.yaml"))
    assert code == 0 and report["changed"] is False, json.dumps(report, indent=1)[-3000:]
    assert [h["round_trips"] for h in report["hosts"]] == [1, 1, 1]


def test_half_done_states_are_planned_from_the_running_engine_and_agent(cli, lab, svc):
    """A service deregistered behind clusterctl's back (its definition still on disk) is loaded
    again instead of waited for until the deadline; a daemon.json newer than the engine (a run
    that stopped before the restart) restarts the engine. Then `up` is a no-op again."""
    from tests.e2e.consul_helpers import as_operator

    f = svc / "two.yaml"
    out = as_operator(lab, "node1", "services", "deregister", "-id", "hello")
    assert "Deregistered" in out, out
    lab.docker("exec", lab.container("node2"), "touch", "/etc/docker/daemon.json")
    report = _up(cli, f)
    steps = _services(report)
    assert "load hello into consul: defined on disk, unknown to the agent" in steps["node1"]["message"], steps
    engine = {h["name"]: next(p for p in h["phases"] if p["phase"] == "engine") for h in report["hosts"]}
    assert "changed after the engine started" in engine["node2"]["message"] and engine["node1"]["status"] == "ok", engine
    addr = _addresses(lab)
    assert _passing(cli, lab.cluster_file) == sorted([addr["node1"], addr["node3"]])
    code, again = cli.json("up", "-f", str(f))
    assert code == 0 and again["changed"] is False, json.dumps(again, indent=1)[-3000:]
    assert [h["round_trips"] for h in again["hosts"]] == [1, 1, 1]


def test_a_secret_env_value_is_on_no_command_line_plan_report_or_label(cli, lab, svc):
    """env: {KEY: {from_env: NAME}}: read from the operator's environment, on stdin into a 0600
    env file on the host, `--env-file` for docker; a poll of every host's processes during `up`
    never shows it, nor do `plan -o json`, the report or the container's labels."""
    import uuid

    from tests.conftest import CLI

    secret = f"pw-{uuid.uuid4().hex}"
    f = _file(lab, svc, "secret", env={"GREETING": "hi", "HELLO_SECRET": {"from_env": "CLUSTERCTL_E2E_SECRET"}})
    proc = cli("up", "-f", str(f))
    assert proc.returncode == 2 and "services[0].env.HELLO_SECRET: CLUSTERCTL_E2E_SECRET is not set" in proc.stderr, proc.stderr
    operator = CLI(dict(cli.env, CLUSTERCTL_E2E_SECRET=secret))
    code, plan = operator.json("plan", "-f", str(f))
    assert code == 0 and secret not in json.dumps(plan)
    assert any("--env-file /etc/clusterctl/env/hello.env" in c for h in plan["hosts"] for p in h["phases"] for c in p["commands"])
    with watching_processes(lab) as seen:
        code, report = operator.json("up", "-f", str(f))
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    assert len(seen) > 10 and not any(secret in s for s in seen)
    assert secret not in json.dumps(report)
    for host in ("node1", "node3"):
        script = ("printf '%s|' \"$(stat -c %a /etc/clusterctl/env/hello.env)\" \"$(docker exec clusterctl-svc-hello busybox sh -c 'echo \"$HELLO_SECRET\"')\"; "
                  "docker inspect -f '{{json .Config.Labels}}' clusterctl-svc-hello")  # fmt: skip
        out = lab.docker("exec", lab.container(host), "sh", "-c", script).stdout
        mode, value, labels = out.split("|", 2)
        assert (mode, value) == ("600", secret) and secret not in labels, out
    code, again = operator.json("up", "-f", str(f))
    assert code == 0 and again["changed"] is False, json.dumps(again, indent=1)[-3000:]


def test_logs_shows_each_replica_prefixed_by_its_host(cli, lab, svc):
    proc = cli("logs", "hello", "-f", str(svc / "two.yaml"), "--tail", "5")
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert sorted({r.split("|")[0].strip() for r in rows}) == ["node1", "node3"], proc.stdout
    assert all(r.split("|", 1)[1].strip() == "hello: listening on port 3000" for r in rows), proc.stdout
    proc = cli("logs", "nope", "-f", str(svc / "two.yaml"))
    assert proc.returncode == 2 and proc.stderr.strip().endswith("no service named 'nope' (services: hello)")


def test_changed_code_ships_one_small_layer_and_rolls_without_a_failed_request(cli, lab, svc):
    app = svc / "hello"
    shutil.copytree(HELLO, app, symlinks=True)
    (app / "express.js").write_text((app / "express.js").read_text().replace("Hello world", "Hello again"))
    f = _file(lab, svc, "changed", app=app)
    loop = subprocess.Popen(
        [lab_mod.docker_cli(), "exec", lab.container("node2"), "sh", "-c",
         'docker run --rm --entrypoint busybox "$(docker images clusterctl/base -q | head -n 1)" sh -c "$0" loop 25', LOOP],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        report = _up(cli, f)
        out, err = loop.communicate(timeout=60)
    finally:
        loop.kill()
    steps = _services(report)
    sent = {h["name"]: h["bytes_sent"] for h in report["hosts"]}
    for host in ("node1", "node3"):
        message = steps[host]["message"]
        assert "deregister hello" in message and "stop hello" in message and "wait until hello passes its check, else roll back to hello" in message
        assert sent[host] < 200_000, sent  # the code layer only; dependencies and base stay
    assert steps["node2"]["status"] == "ok"
    ok, bad = (int(part.split("=")[1]) for part in out.split())
    assert ok > 50 and bad == 0, (out, err)
    assert _on(lab, "node2", "wget -qO- http://hello.service.consul:3000/").strip() == "Hello again"


def test_scale_up_keeps_replicas_and_constraints_move_them(cli, lab, svc):
    addr = _addresses(lab)
    app = svc / "hello"  # the code as the previous test left it
    steps = _services(_up(cli, _file(lab, svc, "three", app=app, replicas=3)))
    assert steps["node1"]["status"] == steps["node3"]["status"] == "ok"
    assert steps["node2"]["status"] == "changed"
    assert _passing(cli, lab.cluster_file) == sorted(addr.values())
    steps = _services(_up(cli, _file(lab, svc, "blue", app=app, replicas=1, constraints={"provider": "blue"})))
    assert steps["node3"]["status"] == "ok"
    for host in ("node1", "node2"):
        assert "deregister hello" in steps[host]["message"] and "remove the hello container" in steps[host]["message"]
    assert _passing(cli, lab.cluster_file) == [addr["node3"]]


def test_stopped_replica_is_started_again(cli, lab, svc):
    f = svc / "blue.yaml"
    proc = cli("exec", "-f", str(f), "--host", "node3", "--", "docker", "stop", "-t", "1", "clusterctl-svc-hello")
    assert proc.returncode == 0, proc.stderr
    code, st = cli.json("status", "-f", str(f))
    assert code == 0 and [h["services"] for h in st["hosts"]] == [{}, {}, {"hello": "stopped"}], st
    steps = _services(_up(cli, f))
    assert "start the stopped hello container" in steps["node3"]["message"]
    assert _passing(cli, lab.cluster_file) == [_addresses(lab)["node3"]]
    code, st = cli.json("status", "-f", str(f))
    assert [h["services"] for h in st["hosts"]] == [{}, {}, {"hello": "passing"}], st


def test_a_host_that_goes_down_loses_its_replica_and_gets_it_back(cli, lab, svc):
    addr = _addresses(lab)
    f = _file(lab, svc, "spread", app=svc / "hello")
    _up(cli, f)
    assert _passing(cli, lab.cluster_file) == sorted([addr["node1"], addr["node3"]])
    lab.docker("stop", "-t", "1", lab.container("node3"))
    try:
        code, report = cli.json("up", "-f", str(f))
        assert code == 1 and report["failed_hosts"] == ["node3"], json.dumps(report, indent=1)[-3000:]
        steps = _services(report)
        # blue is gone: its replica goes to the other red host.
        assert steps["node1"]["status"] == "ok" and "start hello" in steps["node2"]["message"]
        assert _passing(cli, lab.cluster_file) == sorted([addr["node1"], addr["node2"]])
    finally:
        lab.docker("start", lab.container("node3"))
    # Back (its replica restarts with its host): spread wants blue again, and a replica that runs
    # is preferred, so node3 keeps its own and node2's extra one goes.
    deadline = time.monotonic() + 90
    while True:
        code, report = cli.json("up", "-f", str(f))
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    assert "remove the hello container" in _services(report)["node2"]["message"]
    assert _passing(cli, lab.cluster_file) == sorted([addr["node1"], addr["node3"]])


def test_more_replicas_than_hosts_is_one_line_and_sends_nothing(cli, lab, svc):
    f = _file(lab, svc, "four", replicas=4)
    proc = cli("up", "-f", str(f))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {f}:") and "services[0].replicas: 4 replicas need 4 hosts" in line, line


def test_resources_that_do_not_fit_are_refused_and_ones_that_fit_are_enforced(cli, lab, svc):
    """Each lab host reports this machine's size (2 cores): 3 cpus a replica fit nowhere, one line
    naming the service and what each host lacks, nothing changed; 0.25 cpu and 64M fit and are
    Docker's limits on each replica."""
    f = _file(lab, svc, "huge", resources={"cpu": 3, "memory": "64M"})
    code, report = cli.json("up", "-f", str(f))
    assert code == 1 and report["changed"] is False, json.dumps(report)[-3000:]
    why = report["refused"]["services"]
    assert why.startswith("services.hello: 2 replicas need 2 hosts") and "lacks" in why and "node1" in why, why
    report = _up(cli, _file(lab, svc, "small", resources={"cpu": 0.25, "memory": "64M"}))
    limits = {h: lab.docker("exec", lab.container(h), "docker", "inspect", "-f", "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}",
                            "clusterctl-svc-hello", check=False).stdout.strip() for h in ("node1", "node3")}  # fmt: skip
    # Memory and swap alike: no swap beyond the limit.
    assert limits == {"node1": "250000000 67108864 67108864", "node3": "250000000 67108864 67108864"}, limits


# Every SRV record of hello from a plain container, each fetched: "ok|bad TARGET PORT" lines.
# Consul's DNS answers UDP with 3 records at most, shuffled: asked 40 times, the union is all.
SRV = """
i=0; while [ $i -lt 40 ]; do nslookup -type=srv hello.service.consul 2>/dev/null; i=$((i+1)); done |
  sed -n 's/.*service = [0-9]* [0-9]* \\([0-9]*\\) \\([^ ]*\\)$/\\2 \\1/p' | sort -u |
  while read -r t p; do
    if timeout 3 wget -qO- "http://${t%.}:$p/" 2>/dev/null | grep -q "Hello"; then echo "ok $t $p"; else echo "bad $t $p"; fi
  done
"""


def _catalog(cli, f: Path) -> list[tuple[str, str, int]]:
    """(node, service ID, port) of each hello instance in the catalog."""
    proc = cli("exec", "-f", str(f), "--host", "node1", "--", "docker", "exec", "clusterctl-consul",
               "wget", "-qO-", "http://127.0.0.1:8500/v1/catalog/service/hello")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return sorted((e["Node"], e["ServiceID"], e["ServicePort"]) for e in json.loads(proc.stdout))


def _replicas(lab) -> dict[str, list[str]]:
    out = {}
    for h in ("node1", "node2", "node3"):
        ps = lab.docker("exec", lab.container(h), "docker", "ps", "--filter", "label=clusterctl.service=hello", "--format", "{{.Names}}")
        out[h] = sorted(ps.stdout.split())
    return out


def test_six_replicas_on_three_hosts_each_found_through_its_own_srv_port(cli, lab, svc):
    """ports: dynamic: two replicas a host, each its own container, host port and Consul
    registration; from a plain container on every host the SRV records lead to all six."""
    f = _file(lab, svc, "six", replicas=6, ports="dynamic", spread=None)
    _up(cli, f)
    assert _replicas(lab) == {h: ["clusterctl-svc-hello", "clusterctl-svc-hello.2"] for h in ("node1", "node2", "node3")}
    catalog = _catalog(cli, f)
    assert [(node, rid) for node, rid, _ in catalog] == [(h, r) for h in ("node1", "node2", "node3") for r in ("hello", "hello.2")]
    assert all(20000 <= port <= 32000 for *_, port in catalog), catalog
    for host in ("node1", "node2", "node3"):
        rows = [line.split() for line in _on(lab, host, SRV).splitlines()]
        assert len(rows) == 6 and all(r[0] == "ok" for r in rows), (host, rows)
        assert sorted(int(r[2]) for r in rows) == sorted(port for *_, port in catalog), (host, rows, catalog)
    code, again = cli.json("up", "-f", str(f))
    assert code == 0 and again["changed"] is False, json.dumps(again, indent=1)[-3000:]


def test_up_rebalance_moves_replicas_to_a_host_that_joined_and_only_when_asked(cli, lab, svc):
    """Four replicas on node1 and node2 (a `pool` label); node3 joins the pool: a normal up
    leaves them (its plan names the move), `up --rebalance` moves one to node3."""

    def pool_file(name: str, members: tuple[str, ...]) -> Path:
        f = _file(lab, svc, name, replicas=4, ports="dynamic", spread=None, constraints={"pool": "a"})
        doc = yaml.safe_load(f.read_text())
        for h in doc["hosts"]:
            if h["name"] in members:
                h["labels"]["pool"] = "a"
        f.write_text(yaml.safe_dump(doc, sort_keys=False))
        return f

    _up(cli, pool_file("pool2", ("node1", "node2")))
    two = {"node1": ["clusterctl-svc-hello", "clusterctl-svc-hello.2"], "node2": ["clusterctl-svc-hello", "clusterctl-svc-hello.2"], "node3": []}
    assert _replicas(lab) == two
    f = pool_file("pool3", ("node1", "node2", "node3"))
    code, planned = cli.json("plan", "-f", str(f))
    move = "services.hello: a rebalance (up --rebalance) would move 1 replica from node2 to node3"
    assert code == 0 and move in planned["notes"], planned["notes"]
    code, report = cli.json("up", "-f", str(f))  # (node3's new label may change its engine's labels)
    assert code == 0 and {s["status"] for s in _services(report).values()} == {"ok"}, json.dumps(report, indent=1)[-3000:]
    assert _replicas(lab) == two
    code, report = cli.json("up", "-f", str(f), "--rebalance")
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    assert "services.hello: rebalancing, 1 replica from node2 to node3" in report["notes"]
    assert _replicas(lab) == {"node1": two["node1"], "node2": ["clusterctl-svc-hello"], "node3": ["clusterctl-svc-hello"]}
    assert [node for node, *_ in _catalog(cli, f)] == ["node1", "node1", "node2", "node3"]
    code, again = cli.json("up", "-f", str(f), "--rebalance")
    assert code == 0 and again["changed"] is False and not again["notes"], json.dumps(again, indent=1)[-3000:]


# Requests from a BusyBox container, 10 a second: each finds hello through its SRV record; until
# /tmp/stop exists in the container (or $1 seconds passed).
SRV_LOOP = """
ok=0; bad=0; end=$(($(date +%s)+$1))
while [ "$(date +%s)" -lt "$end" ] && [ ! -e /tmp/stop ]; do
  set -- $(nslookup -type=srv hello.service.consul 2>/dev/null | sed -n 's/.*service = [0-9]* [0-9]* \\([0-9]*\\) \\([^ ]*\\)$/\\2 \\1/p' | head -n 1) x
  if [ "$1" != x ] && timeout 3 wget -qO- "http://${1%.}:$2/" >/dev/null 2>&1; then ok=$((ok+1)); else bad=$((bad+1)); fi
  sleep 0.1
done
echo "ok=$ok bad=$bad"
"""


# What the first SRV record of hello answers.
GREETING = r"""
set -- $(nslookup -type=srv hello.service.consul 2>/dev/null | sed -n 's/.*service = [0-9]* [0-9]* \([0-9]*\) \([^ ]*\)$/\2 \1/p' | head -n 1)
wget -qO- "http://${1%.}:$2/"
"""


def _start_first_file(lab, svc, name: str, app: Path, **more) -> Path:
    return _file(lab, svc, name, app=app, replicas=1, ports="dynamic", spread=None, constraints={"provider": "blue"},
                 update={"order": "start-first"}, **more)  # fmt: skip


def _new_code(svc: Path, name: str, greeting: str) -> Path:
    app = svc / name
    shutil.copytree(HELLO, app, symlinks=True)
    (app / "express.js").write_text((app / "express.js").read_text().replace("Hello world", greeting))
    return app


def test_start_first_rollout_of_a_single_replica_fails_no_request(cli, lab, svc):
    """One replica on node3; its code changes: the successor starts on a port of its own and
    passes before the old one is deregistered and stopped; a client on node2 finding hello
    through SRV sees no failure."""
    first = _new_code(svc, "sf1", "Hello first")
    _up(cli, _start_first_file(lab, svc, "sf1", first))
    (old,) = _replicas(lab)["node3"]  # the slot depends on what ran before
    old = old.removeprefix("clusterctl-svc-")
    second = _new_code(svc, "sf2", "Hello second")
    f = _start_first_file(lab, svc, "sf2", second)
    loop = subprocess.Popen(
        [lab_mod.docker_cli(), "exec", "-i", lab.container("node2"), "sh", "-c",
         'img=$(docker images clusterctl/base -q | head -n 1); docker run --rm -i --name srv-loop --entrypoint busybox "$img" sh -c "$0" loop 90',
         SRV_LOOP],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(3)
        report = _up(cli, f)
        time.sleep(3)  # requests go on a while after the old replica went
        lab.docker("exec", lab.container("node2"), "docker", "exec", "srv-loop", "touch", "/tmp/stop", check=False)
        out, err = loop.communicate(timeout=120)
    finally:
        loop.kill()
    message = _services(report)["node3"]["message"]
    (new,) = _replicas(lab)["node3"]
    new = new.removeprefix("clusterctl-svc-")
    assert new != old and f"wait until {new} passes its check, else roll back to {old}" in message, message
    ok, bad = (int(part.split("=")[1]) for part in out.split())
    assert ok > 30 and bad == 0, (out, err)
    assert [rid for _, rid, _ in _catalog(cli, f)] == [new]
    code, again = cli.json("up", "-f", str(f))
    assert code == 0 and again["changed"] is False, json.dumps(again, indent=1)[-3000:]


def test_a_new_version_that_fails_its_check_is_rolled_back_and_up_exits_1_naming_it(cli, lab, svc):
    """start-first: the failing successor is removed, the old replica never stopped serving.
    stop-first (two hosts, one at a time): the first host's old replica, kept aside, runs
    again with its registration; the second host is not touched."""
    second = svc / "sf2"
    broken = {"command": ["sh", "-c", "sleep 3600"], "check": {"http": "/", "deadline": "8s"}}
    f = _start_first_file(lab, svc, "sf-broken", second, **broken)
    code, report = cli.json("up", "-f", str(f))
    assert code == 1, json.dumps(report, indent=1)[-3000:]
    (serving,) = _replicas(lab)["node3"]
    serving = serving.removeprefix("clusterctl-svc-")
    step = _services(report)["node3"]
    assert step["status"] == "failed" and re.search(
        rf"hello(\.\d+)? did not pass its check within 8s; rolled back: {re.escape(serving)} keeps serving the previous version", step["message"]
    ), step
    assert _on(lab, "node2", SRV).split()[0] == "ok"
    # The version the last good rollout replaced is still kept: `rollback` returns to it, and a
    # second rollback goes forward again.
    greeting = GREETING
    assert _on(lab, "node2", greeting).strip() == "Hello second"
    code, back = cli.json("rollback", "hello", "-f", str(f))
    assert code == 0, json.dumps(back, indent=1)[-3000:]
    assert any(n.startswith("services.hello: back on the previous version on node3") for n in back["notes"]), back["notes"]
    assert _replicas(lab)["node3"] != [f"clusterctl-svc-{serving}"] and _on(lab, "node2", greeting).strip() == "Hello first"
    code, forward = cli.json("rollback", "hello", "-f", str(f))
    assert code == 0 and _on(lab, "node2", greeting).strip() == "Hello second", json.dumps(forward, indent=1)[-3000:]
    proc = cli("rollback", "nope", "-f", str(f))
    assert proc.returncode == 2 and proc.stderr.strip().endswith("no service named 'nope' (services: hello)"), proc.stderr
    # stop-first: hello on node1 and node3 (red, blue), then a version that never answers.
    good = _file(lab, svc, "sf-two", app=second, replicas=2)
    _up(cli, good)
    names = {h: _replicas(lab)[h] for h in ("node1", "node3")}  # one each; its slot depends on what ran before
    assert all(len(n) == 1 for n in names.values()), names

    def ids() -> dict[str, str]:
        return {h: lab.docker("exec", lab.container(h), "docker", "inspect", "-f", "{{.Id}}", names[h][0]).stdout.strip() for h in names}

    before = ids()
    f = _file(lab, svc, "sf-two-broken", app=second, replicas=2, **broken)
    code, report = cli.json("up", "-f", str(f))
    assert code == 1, json.dumps(report, indent=1)[-3000:]
    steps = _services(report)
    failed = [h for h in ("node1", "node3") if steps[h]["status"] == "failed"]
    rid = names[failed[0]][0].removeprefix("clusterctl-svc-") if failed else "?"
    assert len(failed) == 1 and f"{rid} did not pass its check within 8s; rolled back: {rid} runs the previous version again" in (
        steps[failed[0]]["message"]
    ), steps
    other = ({"node1", "node3"} - set(failed)).pop()
    assert steps[other]["status"] == "skipped", steps
    assert {h: _replicas(lab)[h] for h in names} == names
    assert ids() == before  # the very containers that ran: kept aside, then started again
    addr = _addresses(lab)
    deadline = time.monotonic() + 30
    while _passing(cli, lab.cluster_file) != sorted([addr["node1"], addr["node3"]]) and time.monotonic() < deadline:
        time.sleep(1)
    assert _passing(cli, lab.cluster_file) == sorted([addr["node1"], addr["node3"]])
    _up(cli, good)  # nothing left of the rollout: a no-op
    code, again = cli.json("up", "-f", str(good))
    assert code == 0 and again["changed"] is False, json.dumps(again, indent=1)[-3000:]
