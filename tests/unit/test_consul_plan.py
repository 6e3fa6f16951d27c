"""The consul command builders and the consul/engine phase plans, from recorded facts."""

import json
from dataclasses import replace
import shlex
from pathlib import Path

import pytest

from clusterctl.commands import consul as build
from clusterctl.commands.files import sha256, write_file, write_secret
from clusterctl.config.loader import load_text
from clusterctl.facts.parser import parse_probe_output
from clusterctl.images.archive import File, ImageConfig, ImageSpec, Layer
from clusterctl.phases.base import Context, Inputs, PlanError
from clusterctl.phases.consul import ConsulPhase, agent_config, agent_files, config_digest, files_digest
from clusterctl.phases.consul_acl import ACLMaterial
from clusterctl.phases.consul_tls import TLSMaterial
from clusterctl.secrets import Secret
from clusterctl.pki import issue, make_ca
from clusterctl.phases.engine import EnginePhase, desired_daemon_config

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"
KEY = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="
CA = make_ca("c1")


class _EveryHost(dict):
    """Test TLS material: a certificate for any host name asked for (made once a name)."""

    def __contains__(self, name):
        return True

    def __missing__(self, name):
        self[name] = issue(CA, "server", "dc1")
        return self[name]


class _EveryAgent(dict):
    """Test ACL tokens: one for any host name asked for."""

    def __contains__(self, name):
        return True

    def __missing__(self, name):
        import uuid

        self[name] = Secret(str(uuid.uuid4()))
        return self[name]


# The microcontainer base, run by its ID (the fixture host runs the classic store).
BASE = ImageSpec((Layer([File.from_bytes("/bin/x", b"x")]),), ImageConfig(), tag="clusterctl/base:abc")
INPUTS = Inputs(gossip_key=KEY, base_image=BASE, filebox_container="clusterctl-filebox-abc",
                tls=TLSMaterial(CA.cert_pem, _EveryHost()), acl=ACLMaterial(_EveryAgent()))  # fmt: skip


def converged(ctx, host, cfg):
    """The clusterctl.config digest and the managed files of an agent that `up` started."""
    files = agent_files(ctx, host, cfg)
    managed = {f"{build.CONFIG_DIR}/{n}": sha256(d) for n, d in files.items()}
    return config_digest(cfg, files_digest(files)), managed
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
    # The HTTP API on loopback only (containers could read the keyring, register services, write
    # KV); DNS on loopback and docker0 only, never 0.0.0.0.
    assert "-client=127.0.0.1" in argv and "-dns-port=53" in argv
    assert argv[argv.index('addresses { dns = "127.0.0.1 172.17.0.1" }') - 1] == "-hcl"
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
    assert argv[argv.index(BASE.image_id) + 1 :][:2] == ["consul", "agent"]


def test_fresh_host_plan_writes_key_secretly_then_runs_and_waits():
    ctx = ctx_for()
    cmds = ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])
    assert [c.description for c in cmds][0] == "write the gossip encryption key, TLS certificate and settings, ACL settings and token (0600)"
    assert cmds[0].stdin.names == ("acl.json", "agent-key.pem", "agent.pem", "agent.token", "ca.pem", "gossip.json", "tls.json")
    token = INPUTS.acl.agents["n1"]
    assert KEY not in cmds[0].display() and "PRIVATE" not in cmds[0].display() and token not in cmds[0].display()
    assert not any(token in c.render() for c in cmds)
    acl = json.loads(agent_files(ctx, ctx.cluster.hosts[0], agent_config(ctx, ctx.cluster.hosts[0], ctx.facts["n1"]))["acl.json"])
    assert acl == {"acl": {"enabled": True, "default_policy": "deny", "down_policy": "extend-cache",
                           "enable_token_persistence": True, "tokens": {"agent": token}}}  # fmt: skip
    assert "-config-file=/consul/config/tls.json" in cmds[-2].argv and "clusterctl.consul.tls=3" in cmds[-2].argv
    assert "-config-file=/consul/config/acl.json" in cmds[-2].argv and "clusterctl.consul.acl=2" in cmds[-2].argv
    assert cmds[-2].argv[:2] == ("docker", "run") and "leader" in cmds[-1].description
    assert not ConsulPhase().rolling(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])


def _raft(**voters):
    return {"Servers": [{"ID": n, "Node": n, "Address": "x:8300", "Leader": False, "Voter": v} for n, v in voters.items()], "Index": 7}


def _converged_facts(ctx, name, running=True, digest=None, raft=None):
    host = ctx.cluster.spec.host(name)
    cfg = agent_config(ctx, host, ctx.facts[name])
    good, managed = converged(ctx, host, cfg)
    digest = digest or good
    container = {"ID": "x", "Names": build.CONTAINER, "Image": "i", "State": "running" if running else "exited",
                 "Labels": f"clusterctl.cluster=c1,clusterctl.role=consul,clusterctl.consul.tls=3,clusterctl.consul.acl=2,clusterctl.config={digest}"}
    if raft is None and running:
        raft = _raft(n1=True, n2=True, n3=True)
    return facts_for(host.address, [container], managed, raft=raft)


def test_converged_agent_plans_nothing_and_a_stopped_one_is_started():
    ctx = ctx_for()
    ctx = ctx_for(n1=_converged_facts(ctx, "n1"))
    assert ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"]) == []
    ctx = ctx_for(n1=_converged_facts(ctx, "n1", running=False))
    cmds = ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])
    assert [c.render() for c in cmds][0] == "docker start clusterctl-consul"


@pytest.mark.parametrize(
    "raft, why",
    [
        (_raft(n1=False, n2=True, n3=True), "(raft counts it as a non-voter)"),
        (_raft(n2=True, n3=True), "(raft lists n2, n3, not this host)"),
        ("no answer", "(its agent's raft view could not be read: no answer within 2 s)"),
    ],
)
def test_up_to_date_server_that_is_not_a_voter_is_waited_for_not_restarted(raft, why):
    # E.g. its host rebooted: the container came back by itself, but autopilot has not promoted
    # it yet (or it has no raft view at all). `up` waits; it neither restarts it nor calls it done,
    # and says what the probe read.
    ctx = ctx_for()
    facts = _converged_facts(ctx, "n1", raft=raft if raft != "no answer" else {})
    if raft == "no answer":
        facts = replace(facts, docker=replace(facts.docker, consul_raft_error="no answer within 2 s"))
    ctx = ctx_for(n1=facts)
    cmds = ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])
    assert len(cmds) == 1 and "voter" in cmds[0].description and "n1" in cmds[0].render()
    assert cmds[0].description.endswith(why)


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


def test_engine_restarts_when_daemon_json_is_newer_than_the_engine():
    """A run that wrote daemon.json and stopped before the restart: the file is as wanted but
    the engine never read it, so the next run restarts it (planned from the running engine)."""
    from dataclasses import replace

    ctx = ctx_for()
    done = facts_for("10.0.0.1", daemon_json=json.dumps(desired_daemon_config(facts_for("10.0.0.1"))))
    pending = replace(done, daemon_json_mtime=1_700_000_100, engine_started=1_700_000_000)
    cmds = EnginePhase().plan(ctx, ctx.cluster.hosts[0], pending)
    assert [c.description.split()[0] for c in cmds] == ["restart", "wait"] and "changed after the engine started" in cmds[0].description
    # Restarted since (or within the 2 s the start time may read early), or times unknown: nothing.
    for mtime, started in ((1_700_000_000, 1_700_000_100), (1_700_000_002, 1_700_000_000), (None, 1_700_000_000), (1_700_000_100, None)):
        assert EnginePhase().plan(ctx, ctx.cluster.hosts[0], replace(done, daemon_json_mtime=mtime, engine_started=started)) == []


def test_file_builders_keep_content_as_data():
    c = write_file("/etc/x y", "a'b $(rm)")
    assert shlex.split(c.render())[-3:] == ["/etc/x y", "a'b $(rm)", "0644"]
    s = write_secret("/etc/k", b"secret")
    assert "secret" not in s.render() and s.stdin == b"secret"


# --- which hosts are servers (clusterctl/schedule/servers.py), through the planner -------------

SEVEN = """
name: c1
hosts:
""" + "".join(
    f"  - {{name: {n}, address: 10.0.1.{i}, labels: {{provider: {p}}}}}\n"
    for i, (n, p) in enumerate([("h1", "hetzner"), ("h2", "hetzner"), ("h3", "hetzner"), ("h4", "hetzner"),
                                ("a1", "aws"), ("a2", "aws"), ("a3", "aws")], 1)
)  # fmt: skip


def _running_agent(ctx, name, raft=None):
    """Facts of a host whose agent runs as `up` would have started it for ctx's file."""
    host = ctx.cluster.spec.host(name)
    cfg = agent_config(ctx, host, ctx.facts[name])
    digest, managed = converged(ctx, host, cfg)
    mode = "server" if cfg.server else "client"
    container = {"ID": "x", "Names": build.CONTAINER, "Image": "i", "State": "running",
                 "Labels": f"clusterctl.cluster=c1,clusterctl.role=consul,clusterctl.consul.mode={mode},"
                           f"clusterctl.consul.tls=3,clusterctl.consul.acl=2,clusterctl.config={digest}"}  # fmt: skip
    return facts_for(host.address, [container], managed, raft=raft)


def _roles(ctx):
    out = {}
    for h in ctx.cluster.hosts:
        if h.name not in ctx.facts:
            continue
        argv = agent_config(ctx, h, ctx.facts[h.name]).args()
        out[h.name] = ("server", next(a for a in argv if a.startswith("-bootstrap-expect="))) if "-server" in argv else "client"
    return out


def test_seven_hosts_without_roles_get_five_servers_over_both_providers():
    ctx = ctx_for(SEVEN)
    roles = _roles(ctx)
    assert [n for n, r in roles.items() if r != "client"] == ["h1", "h2", "h3", "a1", "a2"]
    assert {r for r in roles.values() if r != "client"} == {("server", "-bootstrap-expect=5")}
    assert [n for n, r in roles.items() if r == "client"] == ["h4", "a3"]
    # `plan` names each host's role in its consul step.
    descriptions = {h.name: [c.description for c in ConsulPhase().plan(ctx, h, ctx.facts[h.name])] for h in ctx.cluster.hosts}
    assert "start consul server" in descriptions["a2"] and "start consul client" in descriptions["a3"]


def test_an_eighth_host_anywhere_in_the_file_moves_no_server():
    fresh = ctx_for(SEVEN)
    servers = ["h1", "h2", "h3", "a1", "a2"]
    raft = _raft(**dict.fromkeys(servers, True))
    running = {h.name: _running_agent(fresh, h.name, raft) for h in fresh.cluster.hosts}
    # From the file alone, an aws host at the top would take a2's place (aws gets the first pick).
    eight = SEVEN.replace("hosts:\n", "hosts:\n  - {name: a0, address: 10.0.1.8, labels: {provider: aws}}\n")
    assert [n for n, r in _roles(ctx_for(eight)).items() if r != "client"] == ["a0", "h1", "h2", "h3", "a1"]
    ctx = ctx_for(eight, **running)
    roles = _roles(ctx)
    assert [n for n, r in roles.items() if r != "client"] == servers and roles["a0"] == "client"
    # The seven are converged (their agents run as they should); only a0 gets a client agent.
    plans = {h.name: ConsulPhase().plan(ctx, h, ctx.facts[h.name]) for h in ctx.cluster.hosts}
    assert {n for n, p in plans.items() if p} == {"a0"}
    assert "start consul client" in [c.description for c in plans["a0"]]
    # A server that did not answer the probe is known from the others' raft view: it stays one.
    del running["a2"]
    ctx = Context(ctx.cluster, {h.name: running.get(h.name) or facts_for(h.address) for h in ctx.cluster.hosts if h.name != "a2"}, INPUTS)
    assert [n for n, r in _roles(ctx).items() if r != "client"] == ["h1", "h2", "h3", "a1"]
    from clusterctl.phases.consul import chosen_servers

    assert chosen_servers(ctx).servers == tuple(servers)


def test_the_old_default_keeps_its_servers():
    # A cluster made when every host defaulted to server: 4 hosts, 4 servers. The new default
    # would be 3; nothing is demoted, every agent is left alone, and the choice says so.
    file = FILE.replace("{name: w1, address: 10.0.0.4, roles: [client]}", "{name: w1, address: 10.0.0.4}")
    old = ctx_for(file.replace("}", ", roles: [server]}"))  # what the old default meant
    raft = _raft(n1=True, n2=True, n3=True, w1=True)
    running = {h.name: _running_agent(old, h.name, raft) for h in old.cluster.hosts}
    ctx = ctx_for(file, **running)
    assert all(ConsulPhase().plan(ctx, h, ctx.facts[h.name]) == [] for h in ctx.cluster.hosts)
    from clusterctl.phases.consul import server_choice

    choice = server_choice(ctx.cluster, ctx.facts)
    assert choice.servers == ("n1", "n2", "n3", "w1") and "set roles: [client]" in choice.note()


def test_a_server_made_a_client_leaves_gracefully_first():
    servers_file = FILE.replace(", roles: [client]}", "}").replace("}", ", roles: [server]}")
    old = ctx_for(servers_file)
    raft = _raft(n1=True, n2=True, n3=True, w1=True)
    running = {h.name: _running_agent(old, h.name, raft) for h in old.cluster.hosts}
    ctx = ctx_for(FILE, **running)  # w1's roles now say client; n1-n3 have none (and run servers)
    w1 = ctx.cluster.spec.host("w1")
    cmds = [c.render() for c in ConsulPhase().plan(ctx, w1, ctx.facts["w1"])]
    assert cmds[:3] == ["docker update --restart no clusterctl-consul", build.consul_cli("leave", description="").render(),
                        "docker rm -f clusterctl-consul || true"]  # fmt: skip
    assert "-server" not in cmds[4] and "consul.mode=client" in cmds[4]
    assert ConsulPhase().rolling(ctx, w1, ctx.facts["w1"])
    # The other servers are untouched; a client made a server needs no leave.
    assert all(ConsulPhase().plan(ctx, h, ctx.facts[h.name]) == [] for h in ctx.cluster.hosts if h.name != "w1")
    back = ctx_for(servers_file, w1=_running_agent(ctx, "w1", raft))
    assert not any("leave" in c.render() for c in ConsulPhase().plan(back, w1, back.facts["w1"]))
    # Not while another server is down (its raft entry would be needed for the removal's quorum),
    # nor without a raft view.
    down = Context(ctx.cluster, {n: f for n, f in ctx.facts.items() if n != "n2"}, INPUTS)
    with pytest.raises(PlanError, match="every other server runs; unknown or not running: n2"):
        ConsulPhase().plan(down, w1, down.facts["w1"])
    blind = ctx_for(FILE, **{**running, "w1": _running_agent(old, "w1", raft={})})
    with pytest.raises(PlanError, match="raft's servers"):
        ConsulPhase().plan(blind, w1, blind.facts["w1"])


def test_a_host_run_cannot_pick_a_new_server_blind():
    # `up --host a0` on a running cluster: no agent answers, so where the servers run is unknown;
    # a0 would be a server from the file alone, which could move one: refused, with what to do.
    eight = SEVEN.replace("hosts:\n", "hosts:\n  - {name: a0, address: 10.0.1.8, labels: {provider: aws}}\n")
    cluster = load_text(eight, "c.yaml")
    a0 = cluster.spec.host("a0")
    ctx = Context(cluster, {"a0": facts_for(a0.address)}, INPUTS, outside=frozenset(h.name for h in cluster.hosts) - {"a0"})
    with pytest.raises(PlanError, match="unknown in this --host run"):
        ConsulPhase().plan(ctx, a0, ctx.facts["a0"])
    # With one running server in the run, its raft view tells: a0 is a client.
    fresh = ctx_for(SEVEN)
    raft = _raft(**dict.fromkeys(["h1", "h2", "h3", "a1", "a2"], True))
    ctx = Context(cluster, {"a0": facts_for(a0.address), "h1": _running_agent(fresh, "h1", raft)}, INPUTS,
                  outside=frozenset(h.name for h in cluster.hosts) - {"a0", "h1"})  # fmt: skip
    assert "start consul client" in [c.description for c in ConsulPhase().plan(ctx, a0, ctx.facts["a0"])]


def test_swarm_managers_are_the_chosen_servers():
    from clusterctl.phases.network import plan_network

    ctx = ctx_for(SEVEN)
    plan = plan_network(ctx)
    joins = {n: next((c for c in cmds if "POST /swarm/join" in c.render()), None) for n, cmds in plan.cmds.items()}
    assert plan.cmds["h1"][0].argv[:3] == ("docker", "swarm", "init")
    managers = {n for n, c in joins.items() if c is not None and "manager token" in c.display()}
    workers = {n for n, c in joins.items() if c is not None and "worker token" in c.display()}
    assert (managers, workers) == ({"h2", "h3", "a1", "a2"}, {"h4", "a3"})
