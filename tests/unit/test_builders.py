import json
import shlex
from pathlib import Path

import pytest

from clusterctl.commands import docker as build
from clusterctl.commands.base import Cmd, Script, sh_args
from clusterctl.config.loader import load_text
from clusterctl.facts.parser import parse_probe_output
from clusterctl.phases.base import Context, PlanError
from clusterctl.phases.docker import DockerPhase

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"


def test_cmd_renders_argv_with_shlex():
    assert Cmd(("echo", "a b", "$(reboot)", "it's")).render() == "echo 'a b' '$(reboot)' 'it'\"'\"'s'"
    assert Cmd(("rm", "-f", "x"), check=False).render() == "rm -f x || true"
    with pytest.raises(TypeError):
        Cmd(("echo", 3))  # type: ignore[arg-type]


def test_sh_args_keeps_values_as_positional_data():
    c = sh_args('echo "$1"', "; rm -rf /")
    assert shlex.split(c.render()) == ["sh", "-c", 'echo "$1"', "sh", "; rm -rf /"]


def test_script_is_set_e_and_one_line_per_command():
    s = Script((Cmd(("true",)), Cmd(("false",), check=False)))
    assert s.render() == "set -e\ntrue\nfalse || true\n"


def test_docker_builders():
    assert build.start_engine(systemd=True).render() == "systemctl enable --now docker"
    assert build.start_engine(systemd=False).render() == "service docker start"
    install = build.install_package().render()
    assert "apt-get install -y -q --no-install-recommends" in install and "--force-confold" in install
    assert build.as_root(Cmd(("service", "docker", "start")), "sudo -n").render() == "sudo -n service docker start"
    assert build.as_root(Cmd(("true",)), "").render() == "true"
    assert build.wait_for_engine(30).argv[-2:] == ("300", "30")  # polled every 0.1 s


def _facts(**docker):
    data = json.loads(FIXTURE.read_text())
    data["docker"].update(docker)
    return parse_probe_output(json.dumps(data))


def _ctx(extra=""):
    cluster = load_text(f"hosts:\n  - name: a\n    address: 10.0.0.1\n{extra}", "c.yaml")
    return cluster, cluster.hosts[0]


def test_docker_phase_plans_nothing_when_running():
    cluster, host = _ctx()
    assert DockerPhase().plan(Context(cluster, {}), host, _facts()) == []


def test_docker_phase_installs_and_starts_when_absent():
    cluster, host = _ctx()
    cmds = DockerPhase().plan(Context(cluster, {}), host, _facts(cli="", info=None))
    # daemon.json (Consul DNS) is written before the engine's first start: no restart later.
    assert [c.description.split()[0] for c in cmds] == ["set", "install", "start", "wait"]
    assert "/etc/docker/daemon.json" in cmds[0].argv and '"172.17.0.1"' in cmds[0].argv[5]
    # From Debian 13 on, the client is a package of its own: named whenever the archive has it.
    assert "apt-cache show docker-cli" in cmds[1].argv[2] and "docker.io" in cmds[1].argv[2]
    no_consul, host = _ctx("consul:\n  enabled: false\nfilebox:\n  binaries: []\n")
    cmds = DockerPhase().plan(Context(no_consul, {}), host, _facts(cli="", info=None))
    assert [c.description.split()[0] for c in cmds] == ["install", "start", "wait"]


def test_docker_phase_only_starts_when_stopped():
    cluster, host = _ctx()
    cmds = DockerPhase().plan(Context(cluster, {}), host, _facts(info={"ServerErrors": ["down"]}))
    assert [c.render() for c in cmds][0] == "service docker start"


def test_docker_phase_refuses_without_a_way_to_install():
    cluster, host = _ctx("docker:\n  install: none\n")
    with pytest.raises(PlanError, match="install: none|'none'"):
        DockerPhase().plan(Context(cluster, {}), host, _facts(cli="", info=None))
