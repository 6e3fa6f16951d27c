"""The docker and engine phases' plans: on a host without Docker, daemon.json is written before
Docker is installed, so the package starts the engine with it (Debian's postinst, systemd's
enable --now) and the engine phase, probing again, has nothing to restart; a host that has
Docker already is planned as before (started if stopped, daemon.json changed and the engine
restarted by the engine phase)."""

from __future__ import annotations

import json
from pathlib import Path

from clusterctl.config.loader import load_text
from clusterctl.facts.parser import parse_probe_output
from clusterctl.phases.base import Context, Inputs
from clusterctl.phases.docker import DockerPhase
from clusterctl.phases.engine import DAEMON_JSON, EnginePhase

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"
FILE = """
name: c1
hosts:
  - {name: n1, address: 10.0.0.1}
"""


def facts(*, installed=True, running=True, daemon_json="", docker0=True, init="systemd", sudo="", started=None, mtime=None):
    data = json.loads(FIXTURE.read_text())
    data.update(init=init, apt=True, sudo=sudo, nameservers=[{"ip": "127.0.0.53"}, {"ip": "192.0.2.53"}], daemon_json=daemon_json)
    data["addresses"] = [{"ifname": "eth0", "family": "inet", "cidr": "10.0.0.1/24"}]
    if docker0:
        data["addresses"].append({"ifname": "docker0", "family": "inet", "cidr": "172.17.0.1/16"})
    data.update(engine_started=started, daemon_json_mtime=mtime)
    if not installed:
        data["docker"] = {"cli": None, "info": None, "containers": [], "images": []}
    elif not running:
        data["docker"]["info"] = None
    return parse_probe_output(json.dumps(data))


def ctx(file=FILE, **kw):
    cluster = load_text(file, "c.yaml")
    return Context(cluster, {"n1": facts(**kw)}, Inputs())


def plan(phase, c):
    return phase.plan(c, c.cluster.spec.host("n1"), c.facts["n1"])


def test_a_bare_host_gets_daemon_json_before_docker_is_installed_and_started():
    c = ctx(installed=False, docker0=False)
    cmds = plan(DockerPhase(), c)
    descriptions = [x.description for x in cmds]
    assert descriptions[0] == f"set the engine's default DNS to 172.17.0.1 in {DAEMON_JSON}"
    assert "install docker.io" in descriptions[1] and "apt-get install" in cmds[1].render()
    assert descriptions[2:] == ["enable and start docker (systemd)", "wait until `docker info` answers"]
    written = json.loads(cmds[0].argv[-2])
    assert written == {"dns": ["172.17.0.1", "192.0.2.53"]}  # the loopback resolver is left out
    # Probed again once Docker runs, with that file: the engine phase changes nothing (no restart).
    after = ctx(daemon_json=cmds[0].argv[-2], started=1_700_000_010, mtime=1_700_000_000)
    assert plan(EnginePhase(), after) == []


def test_the_upstream_script_and_sudo_get_the_same_order():
    c = ctx(FILE + "docker: {install: script}\n", installed=False, docker0=False, sudo="sudo -n", init="other")
    cmds = plan(DockerPhase(), c)
    assert [x.argv[:2] for x in cmds] == [("sudo", "-n")] * 4
    assert DAEMON_JSON in cmds[0].render() and "get-docker.sh" in cmds[1].render()
    assert cmds[2].description == "start docker (init script)"


def test_without_consul_no_daemon_json_is_written_at_all():
    c = ctx(FILE + "consul: {enabled: false}\n", installed=False, docker0=False)
    assert DAEMON_JSON not in " ".join(x.render() for x in plan(DockerPhase(), c))
    assert plan(EnginePhase(), ctx(FILE + "consul: {enabled: false}\n")) == []


def test_a_host_with_docker_installed_is_planned_as_before():
    # Running: nothing for the docker phase; the engine phase writes daemon.json and restarts.
    c = ctx()
    assert plan(DockerPhase(), c) == []
    engine = [x.description for x in plan(EnginePhase(), c)]
    assert engine == [f"set the engine's default DNS to 172.17.0.1 in {DAEMON_JSON}", "restart docker (systemd)",
                      "wait until `docker info` answers"]  # fmt: skip
    # Installed but stopped: only started (its daemon.json is the engine phase's, as before).
    stopped = [x.description for x in plan(DockerPhase(), ctx(running=False))]
    assert stopped == ["enable and start docker (systemd)", "wait until `docker info` answers"]
    # Kept keys: what the admin put in daemon.json stays.
    kept = ctx(daemon_json=json.dumps({"log-driver": "local"}))
    assert json.loads(plan(EnginePhase(), kept)[0].argv[-2]) == {"dns": ["172.17.0.1", "192.0.2.53"], "log-driver": "local"}
