import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from clusterctl.facts.parser import ProbeError, parse_probe_output, probe_script

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"


def test_recorded_probe_of_a_running_docker_host():
    f = parse_probe_output(FIXTURE.read_text())
    assert f.os_id == "debian" and f.arch == "x86_64" and f.is_root and f.sudo == ""
    assert f.docker.installed and f.docker.running and f.docker.server_version.startswith("20.10")
    assert f.default_ifname == "eth0"
    # The address SSH reached is on the host, so it is the cluster address.
    assert f.cluster_address() == "10.77.0.11"
    assert [a.ip for a in f.global_addresses()] == ["10.77.0.11"]  # docker0 and lo are skipped


def test_the_hosts_size_is_dockers_else_the_oses():
    data = json.loads(FIXTURE.read_text())
    assert parse_probe_output(json.dumps(data)).engine_size() == (2, 25276510208)  # NCPU, MemTotal
    data.update(cpus=4, mem_kb=2048)
    data["docker"]["info"] = {"ServerErrors": ["Cannot connect to the Docker daemon"]}
    assert parse_probe_output(json.dumps(data)).engine_size() == (4, 2 << 20)  # nproc, /proc/meminfo
    data.update(cpus=None, mem_kb="x")
    assert parse_probe_output(json.dumps(data)).engine_size() == (None, None)


def test_docker_down_and_containers_with_labels():
    data = json.loads(FIXTURE.read_text())
    data["docker"]["info"] = {"ServerErrors": ["Cannot connect to the Docker daemon"]}
    data["docker"]["containers"] = [
        {"ID": "abc", "Names": "consul", "Image": "x", "State": "exited", "Labels": "clusterctl.cluster=c1,clusterctl.role=consul"}
    ]
    f = parse_probe_output(json.dumps(data))
    assert f.docker.installed and not f.docker.running
    assert f.docker.error == "Cannot connect to the Docker daemon"
    c = f.docker.containers[0]
    assert c.labels == {"clusterctl.cluster": "c1", "clusterctl.role": "consul"} and not c.running


def test_consul_raft_view_becomes_voters_by_node():
    data = json.loads(FIXTURE.read_text())
    assert parse_probe_output(json.dumps(data)).docker.consul_voters is None
    data["docker"]["consul_raft"] = {
        "Servers": [{"Node": "n1", "Voter": True, "Leader": True}, {"Node": "n2", "Voter": False}], "Index": 9
    }
    assert parse_probe_output(json.dumps(data)).docker.consul_voters == {"n1": True, "n2": False}
    data["docker"]["consul_raft"] = {"Servers": None}
    assert parse_probe_output(json.dumps(data)).docker.consul_voters is None


def test_consul_checks_become_the_worst_status_per_service():
    data = json.loads(FIXTURE.read_text())
    data["docker"]["consul_checks"] = {
        "serfHealth": {"CheckID": "serfHealth", "ServiceID": "", "Status": "passing"},
        "web-alive": {"CheckID": "web-alive", "ServiceID": "web", "Status": "passing"},
        "web-disk": {"CheckID": "web-disk", "ServiceID": "web", "Status": "warning"},
        "api-alive": {"CheckID": "api-alive", "ServiceID": "api", "Status": "maintenance?"},
    }
    assert parse_probe_output(json.dumps(data)).docker.consul_checks == {"web": "warning", "api": "critical"}


def test_no_docker_no_sudo():
    data = json.loads(FIXTURE.read_text())
    data.update(uid=1000, sudo="none", ssh_connection="")
    data["docker"] = {"cli": "", "info": None}
    f = parse_probe_output(json.dumps(data))
    assert not f.docker.installed and f.sudo is None and not f.is_root
    # Without SSH_CONNECTION, the default route's interface gives the cluster address.
    assert f.cluster_address() == "10.77.0.11"
    assert f.cluster_address("192.0.2.7") == "192.0.2.7"


@pytest.mark.parametrize("text", ["", "sh: 1: syntax error", '{"probe": 2}', "[1,2]"])
def test_garbage_is_a_probe_error(text):
    with pytest.raises(ProbeError):
        parse_probe_output(text)


def test_probe_script_is_read_only():
    code = [line for line in probe_script().splitlines() if not line.lstrip().startswith("#")]
    for verb in ("docker run", "docker rm", "apt-get install", "systemctl", "service ", "python"):
        assert not any(verb in line for line in code), verb


@pytest.mark.skipif(not shutil.which("dash"), reason="dash (a strict POSIX sh) is not installed")
def test_probe_runs_under_posix_dash_and_parses():
    # Run for real on this machine: dash refuses bashisms, the parser must take the output.
    out = subprocess.run(["dash", "-c", probe_script()], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    f = parse_probe_output(out.stdout)
    assert f.kernel == os.uname().release and f.arch == os.uname().machine
    assert any(a.interface.ip.is_loopback for a in f.addresses)


def test_engine_and_daemon_json_times_and_odd_nameservers():
    data = json.loads(FIXTURE.read_text())
    data.update(daemon_json_mtime=1_700_000_100, engine_started=1_700_000_000,
                nameservers=[{"ip": "10.0.0.53"}, {"ip": '"q\\'}, {"ip": "::1"}, {"ip": 7}])  # fmt: skip
    f = parse_probe_output(json.dumps(data))
    assert (f.daemon_json_mtime, f.engine_started) == (1_700_000_100, 1_700_000_000)
    assert f.nameservers == ("10.0.0.53", "::1") and f.skipped_nameservers == ('"q\\',)
    for odd in (None, -1, True, "12", 1.5):
        data.update(daemon_json_mtime=odd, engine_started=odd)
        f = parse_probe_output(json.dumps(data))
        assert (f.daemon_json_mtime, f.engine_started) == (None, None), odd
