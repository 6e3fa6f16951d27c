"""The consul command builders and the consul/engine phase plans, from recorded facts."""

import json
import shlex
from pathlib import Path

import pytest

from clusterctl.commands import consul as build
from clusterctl.commands.files import sha256, write_file, write_secret
from clusterctl.config.loader import load_text
from clusterctl.facts.parser import parse_probe_output
from clusterctl.phases.base import Context, Inputs, PlanError
from clusterctl.phases.consul import ConsulPhase, agent_config, config_digest
from clusterctl.phases.engine import EnginePhase, desired_daemon_config

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"
KEY = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="
INPUTS = Inputs(gossip_key=KEY, base_image="clusterctl/base:abc", filebox_container="clusterctl-filebox-abc")
FILE = """
name: c1
hosts:
  - {name: n1, address: 10.0.0.1}
  - {name: n2, address: 10.0.0.2}
  - {name: n3, address: 10.0.0.3}
  - {name: w1, address: 10.0.0.4, roles: [client]}
"""


def facts_for(ip: str, containers=(), managed=None, daemon_json="", docker0="172.17.0.1", raft=None):
    data = json.loads(FIXTURE.read_text())
    data["ssh_connection"] = f"10.0.0.100 5555 {ip} 22"
    data["addresses"] = [
        {"ifname": "lo", "family": "inet", "cidr": "127.0.0.1/8"},
        {"ifname": "eth0", "family": "inet", "cidr": f"{ip}/24"},
    ] + ([{"ifname": "docker0", "family": "inet", "cidr": f"{docker0}/16"}] if docker0 else [])
    data["nameservers"] = [{"ip": "127.0.0.11"}, {"ip": "192.0.2.53"}]
    data["daemon_json"] = daemon_json
    data["managed_files"] = [{"path": p, "sha256": h} for p, h in (managed or {}).items()]
    data["docker"]["containers"] = list(containers)
    data["docker"]["consul_raft"] = raft
    return parse_probe_output(json.dumps(data))


def ctx_for(file=FILE, **per_host):
    cluster = load_text(file, "c.yaml")
    facts = {h.name: per_host.get(h.name) or facts_for(h.address) for h in cluster.hosts}
    return Context(cluster, facts, INPUTS)


def test_agent_argv_for_a_server():
    ctx = ctx_for()
    cfg = agent_config(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])
    argv = cfg.args()
    assert argv[:2] == ("consul", "agent")
    assert "-server" in argv and "-bootstrap-expect=3" in argv
    assert "-bind=10.0.0.1" in argv and "-advertise=10.0.0.1" in argv
    assert [a for a in argv if a.startswith("-retry-join=")] == ["-retry-join=10.0.0.2", "-retry-join=10.0.0.3"]
    # HTTP/DNS on loopback and docker0 only, never 0.0.0.0.
    assert "-client=127.0.0.1 172.17.0.1" in argv and "-dns-port=53" in argv
    assert "-recursor=127.0.0.11" in argv and "-recursor=192.0.2.53" in argv
    assert not any("encrypt" in a for a in argv)  # the key is in a 0600 file, not on the command line


def test_client_agent_has_no_server_flags():
    ctx = ctx_for()
    argv = agent_config(ctx, ctx.cluster.hosts[3], ctx.facts["w1"]).args()
    assert "-server" not in argv and not any(a.startswith("-bootstrap-expect") for a in argv)
    assert len([a for a in argv if a.startswith("-retry-join=")]) == 3


def test_run_agent_renders_as_one_quoted_docker_run():
    ctx = ctx_for()
    cfg = agent_config(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])
    line = build.run_agent(cfg, "d1g3st").render()
    argv = shlex.split(line)
    assert argv[:4] == ["docker", "run", "-d", "--name"] and "--net" in argv and "host" in argv
    assert ["--volumes-from", "clusterctl-filebox-abc"] == argv[argv.index("--volumes-from") : argv.index("--volumes-from") + 2]
    assert "clusterctl.config=d1g3st" in argv and "clusterctl.role=consul" in argv
    assert argv[argv.index("clusterctl/base:abc") + 1 :][:2] == ["consul", "agent"]


def test_fresh_host_plan_writes_key_secretly_then_runs_and_waits():
    ctx = ctx_for()
    cmds = ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])
    assert [c.description for c in cmds][0] == "write the gossip encryption key"
    assert cmds[0].stdin == build.gossip_file(KEY) and KEY not in cmds[0].display()
    assert cmds[-2].argv[:2] == ("docker", "run") and "leader" in cmds[-1].description
    assert not ConsulPhase().rolling(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])


def _raft(**voters):
    return {"Servers": [{"ID": n, "Node": n, "Address": "x:8300", "Leader": False, "Voter": v} for n, v in voters.items()], "Index": 7}


def _converged_facts(ctx, name, running=True, digest=None, raft=None):
    host = ctx.cluster.spec.host(name)
    cfg = agent_config(ctx, host, ctx.facts[name])
    gossip_sha = sha256(build.gossip_file(KEY))
    digest = digest or config_digest(cfg, gossip_sha)
    container = {"ID": "x", "Names": build.CONTAINER, "Image": "i", "State": "running" if running else "exited",
                 "Labels": f"clusterctl.cluster=c1,clusterctl.role=consul,clusterctl.config={digest}"}
    if raft is None and running:
        raft = _raft(n1=True, n2=True, n3=True)
    return facts_for(host.address, [container], {build.GOSSIP_FILE: gossip_sha}, raft=raft)


def test_converged_agent_plans_nothing_and_a_stopped_one_is_started():
    ctx = ctx_for()
    ctx = ctx_for(n1=_converged_facts(ctx, "n1"))
    assert ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"]) == []
    ctx = ctx_for(n1=_converged_facts(ctx, "n1", running=False))
    cmds = ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])
    assert [c.render() for c in cmds][0] == "docker start clusterctl-consul"


@pytest.mark.parametrize("raft", [_raft(n1=False, n2=True, n3=True), _raft(n2=True, n3=True), "no answer"])
def test_up_to_date_server_that_is_not_a_voter_is_waited_for_not_restarted(raft):
    # E.g. its host rebooted: the container came back by itself, but autopilot has not promoted
    # it yet (or it has no raft view at all). `up` waits; it neither restarts it nor calls it done.
    ctx = ctx_for()
    ctx = ctx_for(n1=_converged_facts(ctx, "n1", raft=raft if raft != "no answer" else {}))
    cmds = ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])
    assert len(cmds) == 1 and "voter" in cmds[0].description and "n1" in cmds[0].render()


def test_a_client_needs_no_raft_view():
    ctx = ctx_for()
    ctx = ctx_for(w1=_converged_facts(ctx, "w1", raft={}))
    assert ConsulPhase().plan(ctx, ctx.cluster.hosts[3], ctx.facts["w1"]) == []


def test_a_down_server_does_not_make_the_others_restart():
    ctx = ctx_for()
    converged = _converged_facts(ctx, "n1")
    cluster = ctx.cluster
    # n3 did not answer the probe: it has no facts; n1's plan must stay empty.
    facts = {"n1": converged, "n2": ctx.facts["n2"], "w1": ctx.facts["w1"]}
    ctx2 = Context(cluster, facts, INPUTS)
    assert ConsulPhase().plan(ctx2, cluster.hosts[0], converged) == []


def test_changed_setting_replaces_the_agent_rolling():
    ctx = ctx_for()
    stale = _converged_facts(ctx, "n1", digest="0ld")
    ctx = ctx_for(n1=stale)
    cmds = ConsulPhase().plan(ctx, ctx.cluster.hosts[0], stale)
    assert [c.render() for c in cmds][0] == "docker rm -f clusterctl-consul || true"
    assert ConsulPhase().rolling(ctx, ctx.cluster.hosts[0], stale)


def test_no_servers_or_no_filebox_is_a_plan_error():
    ctx = ctx_for(FILE.replace("{name: n1, address: 10.0.0.1}", "{name: n1, address: 10.0.0.1, roles: [client]}")
                  .replace("{name: n2, address: 10.0.0.2}", "{name: n2, address: 10.0.0.2, roles: [client]}")
                  .replace("{name: n3, address: 10.0.0.3}", "{name: n3, address: 10.0.0.3, roles: [client]}"))
    with pytest.raises(PlanError, match="at least one host with role server"):
        ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])
    ctx = Context(ctx_for().cluster, ctx_for().facts, Inputs(gossip_key=KEY))
    with pytest.raises(PlanError, match="filebox"):
        ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])


def test_engine_phase_sets_dns_keeps_other_keys_and_is_idempotent():
    ctx = ctx_for()
    f = facts_for("10.0.0.1", daemon_json='{"log-driver": "json-file"}')
    desired = desired_daemon_config(f)
    assert desired == {"log-driver": "json-file", "dns": ["172.17.0.1", "192.0.2.53"]}
    cmds = EnginePhase().plan(ctx, ctx.cluster.hosts[0], f)
    assert [c.description.split()[0] for c in cmds] == ["set", "restart", "wait"]
    done = facts_for("10.0.0.1", daemon_json=json.dumps(desired))
    assert EnginePhase().plan(ctx, ctx.cluster.hosts[0], done) == []
    # Before docker0 exists (a dry run on a bare host), Docker's bip or default is used.
    assert desired_daemon_config(facts_for("10.0.0.1", docker0=None, daemon_json='{"bip": "10.9.0.1/24"}'))["dns"][0] == "10.9.0.1"
    with pytest.raises(PlanError, match="not valid JSON"):
        EnginePhase().plan(ctx, ctx.cluster.hosts[0], facts_for("10.0.0.1", daemon_json="{oops"))


def test_file_builders_keep_content_as_data():
    c = write_file("/etc/x y", "a'b $(rm)")
    assert shlex.split(c.render())[-3:] == ["/etc/x y", "a'b $(rm)", "0644"]
    s = write_secret("/etc/k", b"secret")
    assert "secret" not in s.render() and s.stdin == b"secret"
