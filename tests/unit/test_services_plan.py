"""The services phase's plans and the replica builders, from recorded facts."""

import json
from dataclasses import replace
import shlex
from pathlib import Path

import pytest

from clusterctl.commands import consul as consul_build
from clusterctl.commands import service as build
from clusterctl.commands.files import sha256
from clusterctl.config.loader import load_text
from clusterctl.facts.parser import parse_probe_output
from clusterctl.phases.base import Context, Inputs, PhaseError
from clusterctl.phases.services import ServicesPhase, replica
from clusterctl.phases.consul_acl import ACLMaterial
from clusterctl.secrets import Secret
from tests.unit.test_consul_plan import BASE

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"
WEB_TOKEN = "6c1a3b52-1f0e-4d33-9a4e-2b7f3f6de111"
INPUTS = Inputs(gossip_key="k", base_image=BASE, filebox_container="clusterctl-filebox-abc",
                acl=ACLMaterial(services={"web": Secret(WEB_TOKEN)}))  # fmt: skip
FILE = """
name: c1
hosts:
  - {name: n1, address: 10.0.0.1, labels: {provider: aws}}
  - {name: n2, address: 10.0.0.2, labels: {provider: aws}}
  - {name: n3, address: 10.0.0.3, labels: {provider: gcp}}
services:
  - name: web
    image: nginx:1.25
    replicas: 2
    port: 8080
    spread: provider
    env: {GREETING: "hi; rm -rf /"}
    check: {http: /healthz}
"""


def facts_for(ip, containers=(), managed=None, checks=None, listening=()):
    data = json.loads(FIXTURE.read_text())
    data["listening"] = [f"{p:04X}" for p in listening]
    data["ssh_connection"] = f"10.0.0.100 5555 {ip} 22"
    data["addresses"] = [{"ifname": "eth0", "family": "inet", "cidr": f"{ip}/24"}]
    data["docker"]["containers"] = list(containers)
    data["managed_files"] = [{"path": p, "sha256": h} for p, h in (managed or {}).items()]
    data["docker"]["consul_checks"] = {
        f"{svc}-alive": {"CheckID": f"{svc}-alive", "ServiceID": svc, "Status": status} for svc, status in (checks or {}).items()
    }
    return parse_probe_output(json.dumps(data))


def ctx_for(file=FILE, **facts):
    cluster = load_text(file, "c.yaml")
    all_facts = {h.name: facts.get(h.name) or facts_for(h.address) for h in cluster.hosts}
    return Context(cluster, {k: v for k, v in all_facts.items() if v != "down"}, INPUTS)


def container(service, digest, state="running", cluster="c1"):
    return {"ID": service, "Names": build.container_name(service), "Image": "i", "State": state,
            "Labels": f"clusterctl.cluster={cluster},clusterctl.role=service,clusterctl.service={service},clusterctl.config={digest}"}  # fmt: skip


def converged(ctx, name, status="passing"):
    host = ctx.cluster.spec.host(name)
    r = replica(ctx, ctx.cluster.spec.services[0], host, ctx.facts[name])
    return facts_for(host.address, [container("web", r.digest())], {build.definition_path("web"): sha256(r.definition(WEB_TOKEN))},
                     {"web": status})  # fmt: skip


def plan(ctx, name):
    return ServicesPhase().plan(ctx, ctx.cluster.spec.host(name), ctx.facts[name])


def checked(rids):
    """The description of the reload that registers replicas clusterctl checks itself first."""
    return f"reload consul's service definitions ({rids}: passing at once if it answers its check from this host)"


def test_replicas_spread_over_providers_and_start_registered_and_waited_for():
    ctx = ctx_for()
    assert plan(ctx, "n2") == []  # n1 (aws) and n3 (gcp) run the two replicas
    cmds = plan(ctx, "n1")
    # The definition carries the service's token: written 0600 from stdin, shown nowhere.
    assert "register web" in cmds[0].description and cmds[0].argv[-2] == build.ROOT and cmds[0].stdin_bounded
    # Beside it, the same definition with its check passing from the start (staged outside
    # consul's config dir): in place for the reload only if the replica answers its check.
    # And its catalog entry with the service's token, for the catalog wait to register it with
    # should the agent's own sync be held back.
    assert cmds[0].stdin.names == ("catalog/web.json", "catalog/web.token", "consul/services/web.json", "passing/web.json")
    assert WEB_TOKEN.encode() in cmds[0].stdin._data
    entry = json.loads(replica(ctx, ctx.cluster.spec.services[0], ctx.cluster.spec.host("n1"), ctx.facts["n1"]).catalog_entry("n1"))
    assert entry["Node"] == "n1" and entry["SkipNodeUpdate"] is True and entry["Check"]["Status"] == "passing"
    assert (entry["Service"]["ID"], entry["Service"]["Address"], entry["Service"]["Port"]) == ("web", "10.0.0.1", 8080)
    run = shlex.split(cmds[1].render())
    assert run[:4] == ["docker", "run", "-d", "--name"] and "clusterctl-svc-web" in run
    assert ["-p", "10.0.0.1:8080:8080"] == run[run.index("-p") : run.index("-p") + 2]
    assert ["-e", "GREETING=hi; rm -rf /"] == run[run.index("-e") : run.index("-e") + 2]  # one argv word
    assert ["--volumes-from", "clusterctl-filebox-abc:ro"] == run[run.index("--volumes-from") :][:2]
    assert ["--network", "clusterctl"] == run[run.index("--network") :][:2]
    assert run[-1] == "nginx:1.25"
    assert not any(WEB_TOKEN in c.display() or WEB_TOKEN in repr(c) for c in cmds)
    assert cmds[2].description == checked("web")
    assert cmds[2].argv[-8:-5] == ("docker", "exec", "clusterctl-consul") and cmds[2].argv[-1] == "reload"
    assert "CONSUL_HTTP_TOKEN_FILE=/consul/config/agent.token" in cmds[2].render()
    assert "healthy" in cmds[3].description and len(cmds) == 5
    # Passing on the agent is not yet in DNS: up waits until the catalog lists it.
    assert cmds[4].description == "wait until the catalog hands out web" and cmds[4].argv[7:9] == ("45", "1") and cmds[4].argv[-1] == "web"


def test_definition_registers_the_host_address_with_an_http_check():
    ctx = ctx_for()
    r = replica(ctx, ctx.cluster.spec.services[0], ctx.cluster.spec.host("n3"), ctx.facts["n3"])
    doc = json.loads(r.definition())["service"]
    assert (doc["name"], doc["address"], doc["port"]) == ("web", "10.0.0.3", 8080)
    assert doc["check"]["http"] == "http://10.0.0.3:8080/healthz" and doc["check"]["interval"] == "5s"
    assert doc["meta"] == {"host": "n3", "container": "clusterctl-svc-web"}
    assert "GREETING" not in r.definition() and "token" not in doc
    assert json.loads(r.definition(WEB_TOKEN))["service"]["token"] == WEB_TOKEN


def test_converged_replica_plans_nothing_and_a_stopped_one_is_started_and_waited_for():
    ctx = ctx_for()
    ctx = ctx_for(n1=converged(ctx, "n1"))
    assert plan(ctx, "n1") == []
    facts = converged(ctx, "n1")
    stopped = facts_for("10.0.0.1", [container("web", json.loads(json.dumps(facts.docker.containers[0].labels))["clusterctl.config"], "exited")],
                        facts.managed_files)  # fmt: skip
    ctx = ctx_for(n1=stopped)
    cmds = plan(ctx, "n1")
    # Deregistered before it changes, registered again once it runs: the wait sees a fresh check.
    assert [c.description for c in cmds] == [
        "deregister web from this host's consul agent",
        "reload consul's service definitions",
        "wait until the catalog no longer hands out web here",
        "register web with consul (0600: with their tokens)",
        "start the stopped web container",
        checked("web"),
        "wait until consul reports web healthy",
        "wait until the catalog hands out web",
    ]


def test_up_to_date_replica_whose_check_does_not_pass_is_waited_for_not_restarted():
    # E.g. it came back with its host and its agent has not run the check yet.
    ctx = ctx_for()
    ctx = ctx_for(n1=converged(ctx, "n1", status="critical"))
    assert [c.description for c in plan(ctx, "n1")] == ["wait until consul reports web healthy"]


def test_a_definition_the_agent_does_not_hold_is_loaded_again_then_waited_for():
    # Written by a run that stopped before its reload, or deregistered behind clusterctl's back.
    ctx = ctx_for()
    facts = converged(ctx, "n1")
    unknown = facts_for("10.0.0.1", [container("web", facts.docker.containers[0].labels["clusterctl.config"])], facts.managed_files, {})
    cmds = plan(ctx_for(n1=unknown), "n1")
    assert [c.description for c in cmds] == [
        "load web into consul: defined on disk, unknown to the agent",
        "wait until consul reports web healthy",
    ]
    assert cmds[0].argv == build.reload_agent().argv


def test_changed_setting_replaces_the_replica_one_host_at_a_time():
    ctx = ctx_for()
    ctx = ctx_for(n1=facts_for("10.0.0.1", [container("web", "0ld")]))
    phase = ServicesPhase()
    cmds = phase.plan(ctx, ctx.cluster.spec.host("n1"), ctx.facts["n1"])
    # Stopped with SIGTERM first, 10 s (stop_grace) for in-flight requests, and kept aside until
    # its successor passes (else it runs again); then removed.
    assert "register web" in cmds[0].description  # the file first; consul loads it once the replica runs
    assert cmds[1].argv[-3:] == ("clusterctl-svc-web", "10", ".prev") and "docker stop -t" in cmds[1].render()
    assert cmds[2].argv[:2] == ("docker", "run")
    assert cmds[-2].description == "wait until web passes its check, else roll back to web"
    assert cmds[-1].description == "wait until the catalog hands out web"
    # The old one stays (stopped) as the previous version: converged, that is a no-op.
    # A replica whose definition is registered is drained first (its definition kept aside).
    registered = facts_for("10.0.0.1", [container("web", "0ld")], {build.definition_path("web"): "x"})
    ctx = ctx_for(n1=registered)
    descriptions = [c.description for c in phase.plan(ctx, ctx.cluster.spec.host("n1"), registered)]
    assert descriptions[:6] == ["deregister web from this host's consul agent (definitions kept: the previous version)",
                                "reload consul's service definitions",
                                "wait until the catalog no longer hands out web here",
                                "register web with consul (0600: with their tokens)",
                                "stop web (up to 10s for in-flight requests) and keep it as the previous version",
                                "start web on 10.0.0.1:8080"]  # fmt: skip
    assert phase.rolling(ctx, ctx.cluster.spec.host("n1"), ctx.facts["n1"])
    assert not phase.rolling(ctx, ctx.cluster.spec.host("n3"), ctx.facts["n3"])  # a first start


def test_running_replicas_stay_off_target_and_a_rebalance_moves_one_after_its_new_one_serves():
    # web runs on n1 and n2 (both aws) while its spread wants aws and gcp: a normal up leaves
    # them; a rebalance moves n2's to gcp's n3, and n2 drains only once n3's serves (wave 1).
    ctx = ctx_for()
    both = {"n1": converged(ctx, "n1"), "n2": converged(ctx, "n2")}
    ctx = ctx_for(**both)
    phase = ServicesPhase()
    assert plan(ctx, "n1") == plan(ctx, "n2") == plan(ctx, "n3") == []
    rebalance = Context(ctx.cluster, ctx.facts, replace(INPUTS, rebalance=True))
    assert plan(rebalance, "n1") == []
    assert [c.render() for c in plan(rebalance, "n2")] == [
        f"rm -f {build.definition_path('web')}",
        build.reload_agent().render(),
        build.wait_deregistered(["web"], "n2").render(),
        """sh -c 'docker stop -t "$2" "$1" >/dev/null 2>&1; docker rm -f "$1" >/dev/null' sh clusterctl-svc-web 10 || true""",
    ]
    assert plan(rebalance, "n3")[1].argv[:2] == ("docker", "run")
    assert [phase.wave(rebalance, rebalance.cluster.spec.host(n), rebalance.facts[n]) for n in ("n1", "n2", "n3")] == [0, 1, 0]
    # Once n3's runs, n2's is a surplus: it goes in the first wave.
    moved = Context(ctx.cluster, {**ctx.facts, "n3": converged(ctx, "n3")}, replace(INPUTS, rebalance=True))
    assert phase.wave(moved, moved.cluster.spec.host("n2"), moved.facts["n2"]) == 0
    assert plan(moved, "n2")[0].render() == f"rm -f {build.definition_path('web')}"


def test_another_clusters_containers_are_left_alone():
    ctx = ctx_for()
    ctx = ctx_for(n2=facts_for("10.0.0.2", [container("web", "x", cluster="other")]))
    assert plan(ctx, "n2") == []


def test_a_host_down_moves_its_replica_and_too_few_hosts_refuse_the_phase():
    ctx = ctx_for(n1="down")
    assert plan(ctx, "n2")[1].argv[:2] == ("docker", "run")
    ctx = ctx_for(n1="down", n2="down")
    with pytest.raises(PhaseError, match=r"services\.web: 2 replicas need 2 hosts \(one per host: a fixed port\), but 1 is up \(n1, n2 did not answer\)"):
        ServicesPhase().check(ctx)


def test_hosts_outside_a_host_limited_run_are_not_taken_for_down():
    # `up --host n3`: n1 and n2 were not probed; web's replicas stay planned on n1 (aws) and
    # n3 (gcp), so n3 starts its one and nothing is moved onto it.
    cluster = load_text(FILE, "c.yaml")
    ctx = Context(cluster, {"n3": facts_for("10.0.0.3")}, INPUTS, outside=frozenset({"n1", "n2"}))
    assert plan(ctx, "n3")[1].argv[:2] == ("docker", "run")
    ServicesPhase().check(ctx)


def test_without_consul_replicas_are_not_registered_but_still_waited_for():
    file = FILE.replace("services:", "consul: {enabled: false}\nservices:")
    ctx = ctx_for(file)
    cmds = plan(ctx, "n1")
    assert [c.argv[:2] for c in cmds][0] == ("docker", "run") and "keeps running" in cmds[-1].description
    assert not any("consul" in c.render() for c in cmds)


def test_no_services_no_plan():
    file = FILE.split("services:")[0]
    ctx = ctx_for(file)
    assert plan(ctx, "n1") == []
    ServicesPhase().check(ctx)


def test_check_deadline_bounds_the_wait():
    ctx = ctx_for(FILE.replace("check: {http: /healthz}", "check: {http: /healthz, deadline: 3m}"))
    wait = plan(ctx, "n1")[-2]
    assert "healthy" in wait.description and wait.argv[6:8] == ("360", "180")


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("5s", 5.0), ("2m", 120.0)])
def test_duration_seconds(text, seconds):
    from clusterctl.config.models import duration_seconds

    assert duration_seconds(text) == seconds


# --- secret env values: {from_env: NAME} -------------------------------------------------------

SECRET_FILE = FILE.replace('env: {GREETING: "hi; rm -rf /"}', 'env: {GREETING: hi, DB_PASSWORD: {from_env: E2E_DB_PW}}')
PASSWORD = "s3cr3t p@ss 'quoted' $(not run)"


def secret_ctx(password=PASSWORD, **facts):
    from dataclasses import replace

    from clusterctl.phases.services import secret_env_inputs

    ctx = ctx_for(SECRET_FILE, **facts)
    return replace(ctx, inputs=replace(INPUTS, service_env=secret_env_inputs(ctx.cluster, {"E2E_DB_PW": password})))


def test_a_secret_env_value_reaches_the_host_only_on_stdin_into_a_0600_env_file():
    ctx = secret_ctx()
    cmds = plan(ctx, "n1")
    bundle = next(c for c in cmds if c.stdin is not None)
    assert bundle.stdin.names == ("catalog/web.json", "catalog/web.token", "consul/services/web.json", "env/web.env", "passing/web.json")
    assert f"DB_PASSWORD={PASSWORD}\n".encode() in bundle.stdin._data
    assert "write the secret env of web (0600)" in bundle.description
    run = next(c for c in cmds if c.argv[:2] == ("docker", "run"))
    assert run.argv[run.argv.index("--env-file") + 1] == build.env_file_path("web") == "/etc/clusterctl/env/web.env"
    assert ("-e", "GREETING=hi") == run.argv[run.argv.index("-e") :][:2] and "DB_PASSWORD" not in run.render()
    # In no plan line, repr or label: the digest knows the name only.
    shown = " ".join(c.display() + repr(c) for c in cmds) + repr(ctx.inputs) + repr(replica(ctx, ctx.cluster.spec.services[0], ctx.cluster.hosts[0], ctx.facts["n1"]))
    assert "s3cr3t" not in shown
    assert bundle.render().count("s3cr3t") == 0
    assert cmds.index(bundle) < cmds.index(run)  # docker reads the file when it creates the container


def _with_env(ctx, name, password):
    """Facts of a host whose replica runs with `password` in its env file."""
    from clusterctl.phases.services import env_file

    host = ctx.cluster.spec.host(name)
    r = replica(ctx, ctx.cluster.spec.services[0], host, ctx.facts[name])
    managed = {build.definition_path("web"): sha256(r.definition(WEB_TOKEN)),
               build.env_file_path("web"): sha256(env_file(secret_ctx(password), r))}  # fmt: skip
    return facts_for(host.address, [container("web", r.digest())], managed, {"web": "passing"})


def test_a_changed_secret_recreates_the_replica_an_unchanged_one_is_a_no_op():
    ctx = secret_ctx()
    same = _with_env(ctx, "n1", PASSWORD)
    assert plan(secret_ctx(n1=same), "n1") == []
    # The label is the same whatever the value: the change is seen in the file's content.
    old = _with_env(ctx, "n1", "old password")
    assert old.docker.containers[0].labels == same.docker.containers[0].labels
    descriptions = [c.description for c in plan(secret_ctx(n1=old), "n1")]
    # Drained, then recreated with the new file, as for any change of the replica.
    assert descriptions[0] == "deregister web from this host's consul agent (definitions kept: the previous version)"
    assert descriptions[3].endswith("write the secret env of web (0600)")
    assert descriptions[4].startswith("stop web") and descriptions[5].startswith("start web")


def test_a_secret_env_file_of_a_service_gone_from_the_host_is_removed():
    ctx = ctx_for()
    f = converged(ctx, "n1")
    gone = facts_for("10.0.0.1", [container("web", f.docker.containers[0].labels["clusterctl.config"])],
                     {**f.managed_files, build.env_file_path("old"): "abc"}, {"web": "passing"})  # fmt: skip
    assert [c.render() for c in plan(ctx_for(n1=gone), "n1")] == ["rm -f /etc/clusterctl/env/old.env"]


def test_secret_env_inputs_name_the_key_and_refuse_what_an_env_file_cannot_hold():
    from clusterctl.errors import UserError
    from clusterctl.phases.services import secret_env_inputs

    cluster = load_text(SECRET_FILE, "c.yaml")
    with pytest.raises(UserError, match=r"^c\.yaml:13: services\[0\]\.env\.DB_PASSWORD: E2E_DB_PW is not set in this environment$"):
        secret_env_inputs(cluster, {})
    with pytest.raises(UserError, match="holds a line break") as err:
        secret_env_inputs(cluster, {"E2E_DB_PW": "two\nlines"})
    assert "two" not in str(err.value)
    got = secret_env_inputs(cluster, {"E2E_DB_PW": "x"})
    assert got == {"web": {"DB_PASSWORD": "x"}} and repr(got["web"]["DB_PASSWORD"]) == "<secret>"


def test_secret_bundle_paths_stay_under_their_root():
    from clusterctl.commands.files import secrets_bundle

    for bad in ("../x", "env/../../x", ".hidden", "env//x", "/abs"):
        with pytest.raises(ValueError):
            secrets_bundle({bad: b"x"}, nested=True)
    with pytest.raises(ValueError):
        secrets_bundle({"env/x": b"x"})  # flat only, unless nested


def test_resources_become_docker_limits_and_change_the_digest():
    ctx = ctx_for(FILE.replace("    port: 8080\n", "    port: 8080\n    resources: {cpu: 0.25, memory: 64M}\n"))
    run = next(c for c in plan(ctx, "n1") if c.argv[:2] == ("docker", "run"))
    assert run.argv[run.argv.index("--cpus") : run.argv.index("--cpus") + 6] == ("--cpus", "0.25", "--memory", "64M", "--memory-swap", "64M")
    limited = replica(ctx, ctx.cluster.spec.services[0], ctx.cluster.spec.host("n1"), ctx.facts["n1"])
    plain = replica(ctx_for(), ctx_for().cluster.spec.services[0], ctx.cluster.spec.host("n1"), ctx.facts["n1"])
    assert limited.digest() != plain.digest() and "--cpus" not in plain.run().argv


def test_replicas_are_sized_from_dockers_facts_less_the_reserve_else_the_files_capacity():
    # The fixture's engine has 2 CPUs; 0.5 is reserved: 1.5 left, short of 2 on every host.
    too_big = FILE.replace("    port: 8080\n", "    port: 8080\n    resources: {cpu: 2}\n")
    with pytest.raises(PhaseError, match=r"services\.web: 2 replicas need 2 hosts \(one per host: a fixed port\), but 0 are up with room for 2 cpu \(n1 lacks 0.5 cpu, n2 lacks 0.5 cpu, n3 lacks 0.5 cpu\)"):
        ServicesPhase().check(ctx_for(too_big))
    ServicesPhase().check(ctx_for(too_big.replace("placement:", "").replace("services:", "placement: {reserve: {cpu: 0}}\nservices:")))
    bigger = too_big.replace("labels: {provider: gcp}}", "labels: {provider: gcp}, capacity: {cpu: 4}}")
    bigger = bigger.replace("labels: {provider: aws}}\n  - {name: n2", "labels: {provider: aws}, capacity: {cpu: 4}}\n  - {name: n2")
    ctx = ctx_for(bigger)
    assert plan(ctx, "n2") == [] and plan(ctx, "n1") and plan(ctx, "n3")


DYNAMIC = FILE.split("services:")[0] + """services:
  - {name: api, image: nginx:1.25, replicas: 5, port: 8080, ports: dynamic}
"""


def replica_container(rid, digest, port, state="running"):
    service, _, slot = rid.partition(".")
    labels = f"clusterctl.cluster=c1,clusterctl.role=service,clusterctl.service={service},clusterctl.config={digest},clusterctl.port={port}"
    return {"ID": rid, "Names": build.container_name(rid), "Image": "i", "State": state,
            "Labels": labels + (f",clusterctl.slot={slot}" if slot else "")}  # fmt: skip


def test_dynamic_ports_run_several_replicas_a_host_each_on_its_own_port_and_registration():
    ctx = ctx_for(DYNAMIC, n1=facts_for("10.0.0.1", listening=(22, 20000)))
    ctx = Context(ctx.cluster, ctx.facts, replace(INPUTS, acl=None))
    cmds = plan(ctx, "n1")
    runs = [c for c in cmds if c.argv[:2] == ("docker", "run")]
    # Two of five here (spread: n1, n2 two each, n3 one); 20000 is taken by some other socket.
    assert [r.argv[r.argv.index("--name") + 1] for r in runs] == ["clusterctl-svc-api", "clusterctl-svc-api.2"]
    assert [r.argv[r.argv.index("-p") + 1] for r in runs] == ["10.0.0.1:20001:8080", "10.0.0.1:20002:8080"]
    assert "clusterctl.slot=2" in runs[1].argv and "clusterctl.port=20002" in runs[1].argv
    assert [len([c for c in plan(ctx, n) if c.argv[:2] == ("docker", "run")]) for n in ("n2", "n3")] == [2, 1]
    # Each replica its own Consul service ID and port under the one name (SRV: every replica).
    placed = ServicesPhase()._wanted(ctx, ctx.cluster.spec.host("n1"), ctx.facts["n1"])
    docs = [json.loads(r.definition())["service"] for r in placed]
    assert [(d["id"], d["name"], d["port"], d["check"]["tcp"]) for d in docs] == [
        ("api", "api", 20001, "10.0.0.1:20001"), ("api.2", "api", 20002, "10.0.0.1:20002"),
    ]  # fmt: skip
    assert [c.description for c in cmds if "healthy" in c.description] == [
        "wait until consul reports api healthy", "wait until consul reports api.2 healthy",
    ]  # fmt: skip


def test_replicas_keep_their_slots_and_ports_and_a_scale_down_removes_the_highest_slots():
    # Three run on n1; scaled to two, the normal placement keeps two there (running ones stay).
    ctx = ctx_for(DYNAMIC.replace("replicas: 5", "replicas: 2"))
    n1 = ctx.cluster.spec.host("n1")
    api = ctx.cluster.spec.services[0]
    running = [replica(ctx, api, n1, ctx.facts["n1"], slot, port) for slot, port in ((1, 20007), (2, 20003), (3, 20009))]
    facts = facts_for("10.0.0.1", [replica_container(r.id, r.digest(), r.host_port) for r in running],
                      {build.definition_path(r.id): sha256(r.definition()) for r in running},
                      {r.id: "passing" for r in running})  # fmt: skip
    # No ACLs in this context's inputs: definitions without a token.
    inputs = replace(INPUTS, acl=None)
    ctx = Context(ctx.cluster, {**ctx.facts, "n1": facts}, inputs)
    wanted = ServicesPhase()._wanted(ctx, n1, facts)
    assert [(r.id, r.host_port) for r in wanted] == [("api", 20007), ("api.2", 20003)]
    cmds = [c.render() for c in plan(ctx, "n1")]
    assert cmds[0] == f"rm -f {build.definition_path('api.3')}"
    assert cmds[2] == build.wait_deregistered(["api.3"], "n1").render()
    assert "clusterctl-svc-api.3" in cmds[3] and not any("docker run" in c for c in cmds)


START_FIRST = DYNAMIC.replace("replicas: 5, port: 8080, ports: dynamic}", "replicas: 1, port: 8080, ports: dynamic, update: {order: start-first}}")


def test_start_first_runs_the_successor_on_its_own_slot_and_port_before_the_old_one_goes():
    ctx = ctx_for(START_FIRST)
    ctx = Context(ctx.cluster, {**ctx.facts, "n1": facts_for("10.0.0.1", [replica_container("api", "0ld", 20000)],
                                                             {build.definition_path("api"): "x"}, {"api": "passing"})},
                  replace(INPUTS, acl=None))  # fmt: skip
    phase = ServicesPhase()
    assert phase.rolling(ctx, ctx.cluster.spec.host("n1"), ctx.facts["n1"])
    cmds = plan(ctx, "n1")
    assert [c.description for c in cmds] == [
        "register api.2 with consul (0600: with their tokens)",
        "start api.2 on 10.0.0.1:20001",
        checked("api.2"),
        "wait until api.2 passes its check, else roll back to api",
        "wait until the catalog hands out api.2",
        "deregister api from this host's consul agent (definitions kept: the previous version)",
        "reload consul's service definitions",
        "wait until the catalog no longer hands out api here",
        "stop api (up to 10s for in-flight requests) and keep it as the previous version",
    ]
    # The successor's check fails: it goes, the old one keeps serving, the command fails naming both.
    check = cmds[3].render()
    assert "hello" not in check and "api.2" in check and "api keeps serving the previous version" in check
    # A run stopped once the successor served, before the old one went: the successor stays.
    r = ServicesPhase()._wanted(ctx, ctx.cluster.spec.host("n1"), ctx.facts["n1"])[0]
    new = replace(r, slot=2, host_port=20001)
    both = facts_for("10.0.0.1", [replica_container("api", "0ld", 20000), replica_container("api.2", new.digest(), 20001)],
                     {build.definition_path("api"): "x", build.definition_path("api.2"): sha256(new.definition())},
                     {"api": "passing", "api.2": "passing"})  # fmt: skip
    ctx = Context(ctx.cluster, {**ctx.facts, "n1": both}, ctx.inputs)
    assert [c.description for c in plan(ctx, "n1")] == [
        "deregister api from this host's consul agent", "reload consul's service definitions",
        "wait until the catalog no longer hands out api here", "remove the api container (stopped first: up to 10s for in-flight requests)",
    ]  # fmt: skip


def test_start_first_needs_dynamic_ports_and_parallel_sets_the_rolling_batch():
    with pytest.raises(Exception, match=r"start-first .* needs ports: dynamic"):
        ctx_for(FILE.replace("    check: {http: /healthz}", "    check: {http: /healthz}\n    update: {order: start-first}"))
    ctx = ctx_for(START_FIRST.replace("order: start-first}", "order: start-first, parallel: 3}"))
    assert ServicesPhase().rolling_batch(ctx) == 3
    assert ServicesPhase().rolling_batch(ctx_for()) == 1


def retired_container(rid, digest, port, service="api"):
    c = replica_container(rid, digest, port, state="exited")
    c["Names"] = build.retired_name(rid)
    return c


def test_a_rollout_keeps_the_previous_version_until_the_next_rollout_and_rollback_returns_to_it():
    from clusterctl.phases.rollback import RollbackPhase

    ctx = ctx_for(START_FIRST)
    inputs = replace(INPUTS, acl=None)
    n1 = ctx.cluster.spec.host("n1")
    r = ServicesPhase()._wanted(Context(ctx.cluster, ctx.facts, inputs), n1, ctx.facts["n1"])[0]
    new = replace(r, slot=2, host_port=20001)
    # After a start-first rollout: api.2 runs, api is kept (stopped) with its definition aside.
    after = facts_for("10.0.0.1", [replica_container("api.2", new.digest(), 20001), retired_container("api", "0ld", 20000)],
                      {build.definition_path("api.2"): sha256(new.definition()), build.rollback_path("api"): "x"},
                      {"api.2": "passing"})  # fmt: skip
    ctx = Context(ctx.cluster, {**ctx.facts, "n1": after}, inputs)
    assert plan(ctx, "n1") == []  # kept while the service runs here: converged
    # The next rollout keeps its own previous version: the older one goes first.
    changed = Context(load_text(START_FIRST.replace("nginx:1.25", "nginx:1.27"), "c.yaml"), ctx.facts, inputs)
    cmds = [c.description for c in plan(changed, "n1")]
    assert cmds[1] == "start api.3 on 10.0.0.1:20002"  # 20000 is the kept one's
    # ... once api.3 passes (a rollout that fails leaves it for `clusterctl rollback`).
    assert cmds.index("remove the previous api (a newer rollout passed)") > cmds.index("wait until the catalog hands out api.3")
    # Gone from this host: what was kept goes too.
    gone = Context(load_text(START_FIRST.replace("replicas: 1", "replicas: 0"), "c.yaml"), ctx.facts, inputs)
    assert [c.description for c in plan(gone, "n1")][0] == "remove the previous api (a newer rollout or none to go back to)"
    # rollback: the kept api starts beside api.2, registers and passes; then api.2 is kept in its place.
    phase = RollbackPhase("api")
    phase.check(ctx)
    assert phase.rolling(ctx, n1, after)
    assert [c.description for c in phase.plan(ctx, n1, after)] == [
        "start the previous api again",
        "reload consul's service definitions",
        "wait until consul reports api healthy",
        "wait until the catalog hands out api",
        "deregister api.2 from this host's consul agent (definitions kept: the previous version)",
        "reload consul's service definitions",
        "wait until the catalog no longer hands out api.2 here",
        "stop api.2 (up to 10s for in-flight requests) and keep it as the previous version",
    ]
    assert phase.plan(ctx, ctx.cluster.spec.host("n2"), ctx.facts["n2"]) == []
    with pytest.raises(PhaseError, match=r"services\.api: no host keeps a previous version of it"):
        phase.check(Context(ctx.cluster, {"n2": ctx.facts["n2"]}, inputs))


def test_rollback_of_a_stop_first_rollout_trades_places_with_the_kept_replica():
    from clusterctl.phases.rollback import RollbackPhase

    ctx = ctx_for()
    n1 = ctx.cluster.spec.host("n1")
    f = converged(ctx, "n1")
    web = replica_container("web", f.docker.containers[0].labels["clusterctl.config"], 8080)
    kept = retired_container("web", "0ld", 8080, service="web")
    kept["Labels"] = kept["Labels"].replace("clusterctl.service=api", "clusterctl.service=web")
    web["Labels"] = web["Labels"].replace("clusterctl.service=api", "clusterctl.service=web")
    facts = facts_for("10.0.0.1", [web, kept], {**f.managed_files, build.rollback_path("web"): "x"}, {"web": "passing"})
    ctx = Context(ctx.cluster, {**ctx.facts, "n1": facts}, INPUTS)
    assert plan(ctx, "n1") == []
    cmds = RollbackPhase("web").plan(ctx, n1, facts)
    assert [c.description for c in cmds] == [
        "deregister web from this host's consul agent (kept: the version to go forward to)",
        "reload consul's service definitions",
        "wait until the catalog no longer hands out web here",
        "stop web (up to 10s for in-flight requests), start its previous version in its place",
        "register the previous web with consul",
        "reload consul's service definitions",
        "wait until consul reports web healthy",
        "wait until the catalog hands out web",
    ]
    assert cmds[3].argv[-3:] == ("clusterctl-svc-web", "10", ".prev")


# --- a replica registered passing once clusterctl saw it answer its check ------------------------


def test_each_new_definition_is_staged_again_with_its_check_passing_and_checked_as_the_agent_would():
    ctx = ctx_for()
    cmds = plan(ctx, "n1")
    r = replica(ctx, ctx.cluster.spec.services[0], ctx.cluster.spec.host("n1"), ctx.facts["n1"])
    plain, passing = json.loads(r.definition(WEB_TOKEN)), json.loads(r.definition(WEB_TOKEN, passing=True))
    assert "status" not in plain["service"]["check"] and passing["service"]["check"].pop("status") == "passing"
    assert passing == plain  # nothing else differs
    # The check the agent runs (HTTP GET of the registered address), as argv words: never shell text.
    reload = next(c for c in cmds if c.description == checked("web"))
    assert ("web", "http", "http://10.0.0.1:8080/healthz", "10.0.0.1", "8080", "2") == reload.argv[15:21]
    assert reload.argv[4:7] == ("clusterctl-consul", build.SERVICES_DIR, build.PASSING_DIR)
    # Without check.http the agent connects over TCP; so does clusterctl.
    tcp = ctx_for(FILE.replace("    check: {http: /healthz}\n", ""))
    r = replica(tcp, tcp.cluster.spec.services[0], tcp.cluster.spec.host("n1"), tcp.facts["n1"])
    assert r.own_check() == ("web", "tcp", "", "10.0.0.1", "8080", "2")
    # A converged replica is not checked again: nothing is registered.
    assert plan(ctx_for(n1=converged(ctx, "n1")), "n1") == []


def test_definitions_a_stopped_run_left_staged_are_removed_first():
    ctx = ctx_for()
    left = {build.passing_path("web"): "x"}
    f = converged(ctx, "n1")
    done = facts_for("10.0.0.1", [container("web", f.docker.containers[0].labels["clusterctl.config"])],
                     {**f.managed_files, **left}, {"web": "passing"})  # fmt: skip
    assert [c.render() for c in plan(ctx_for(n1=done), "n1")] == [f"rm -rf {build.PASSING_DIR} {build.CATALOG_DIR}"]
    fresh = facts_for("10.0.0.1", [], left)
    descriptions = [c.description for c in plan(ctx_for(n1=fresh), "n1")]
    assert descriptions.index("remove the definitions an earlier run left staged") < descriptions.index(
        "register web with consul (0600: with their tokens)"
    )


def _http_server(port_holder):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path.startswith("/ok") else 500)
            self.end_headers()
            self.wfile.write(b"hi")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_holder.append(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _reload_agent(live, snap, status=200):
    """The agent's API for PUT /v1/agent/reload: records each call's token and copies what the
    agent would load (the live definitions) to `snap`."""
    import http.server
    import shutil
    import threading

    calls: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802 - http.server's name
            calls.append(self.headers.get("X-Consul-Token"))
            if self.path == "/v1/agent/reload" and status == 200:
                for p in live.iterdir():
                    shutil.copy(p, snap / p.name)
            self.send_response(status if self.path == "/v1/agent/reload" else 404)
            self.end_headers()
            self.wfile.write(b"" if status == 200 else b"agent down")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, calls


def _no_bash_path(bin_, busybox) -> None:
    """`bin_` as a whole PATH of BusyBox applets (no bash): the hosts where the agent's container
    runs the checks and the consul CLI reloads."""
    for applet in ("sh", "mv", "rm", "cat", "cp", "sleep", "date", "timeout", "wget", "nc", "[", "test", "echo", "true", "mkdir"):
        if not (bin_ / applet).exists():
            (bin_ / applet).symlink_to(busybox)


@pytest.mark.parametrize("with_bash", [True, False], ids=["bash on the host", "no bash"])
def test_register_checked_puts_in_place_only_what_answered_and_the_plain_files_back(tmp_path, with_bash):
    """For real in a local shell. With bash: the checks from the host through /dev/tcp and the
    reload through the agent's API (a stand-in), with the agent's token; no docker exec. Without:
    docker and consul faked (the one `exec`s the command here, the other records what the agent
    would load), BusyBox's wget and nc as in the agent's container. A replica answering 200, one
    answering 500, one listening for TCP only from a moment after the start, one with nothing
    listening: the first and third are loaded passing; after the reload every definition on disk
    is the plain one again and nothing is left staged."""
    import shutil
    import socket
    import subprocess
    import threading
    import time

    busybox = shutil.which("busybox")
    if not busybox:
        pytest.skip("no busybox here")
    live, staged, snap, bin_ = (tmp_path / d for d in ("live", "staged", "snap", "bin"))
    for d in (live, staged, snap, bin_):
        d.mkdir()
    execs = tmp_path / "docker-execs"
    (bin_ / "docker").write_text(f'#!/bin/sh\necho "$*" >> {execs}\n[ "$1" = exec ] || exit 1\nshift 2\nexec "$@"\n')
    (bin_ / "consul").write_text('#!/bin/sh\n[ "$1" = reload ] && cp "$LIVE"/*.json "$SNAP"/ && echo "Configuration reload triggered"\n')
    for name in ("docker", "consul"):
        (bin_ / name).chmod(0o755)
    for applet in ("wget", "nc"):
        (bin_ / applet).symlink_to(busybox)
    ports: list[int] = []
    server = _http_server(ports)
    agent, tokens = _reload_agent(live, snap)
    token_file = tmp_path / "agent.token"
    token_file.write_text("agent-secret\n")
    late = socket.socket()
    late.bind(("127.0.0.1", 0))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
    pwned = tmp_path / "pwned"
    base = build.Replica(service="x", host="n1", image="i", address="127.0.0.1", port=None, command=None, env=(),
                         filebox_container=None, network=None, cluster="c1")  # fmt: skip
    replicas = [
        replace(base, service="good", port=ports[0], check_http=f"/ok?q=$(touch${{IFS}}{pwned})"),
        replace(base, service="bad", port=ports[0], check_http="/fail"),
        replace(base, service="late", port=late.getsockname()[1]),
        replace(base, service="closed", port=closed.getsockname()[1]),
    ]
    for r in replicas:
        (live / f"{r.id}.json").write_text(r.definition())
        (staged / f"{r.id}.json").write_text(r.definition(passing=True))
    cmd = build.register_checked(replicas)
    argv = list(cmd.argv)
    assert argv[4:7] == ["clusterctl-consul", build.SERVICES_DIR, build.PASSING_DIR]
    assert argv[12] == str(build.AGENT_PORT) and argv[14] == consul_build.AGENT_TOKEN_FILE
    argv[5:8] = [str(live), str(staged), "10"]  # the dirs here; up to 10 rounds (about a second)
    argv[12], argv[14] = str(agent.server_address[1]), str(token_file)  # the agent: the stand-in
    if with_bash:
        path = f"{bin_}:/usr/bin:/bin"
    else:
        _no_bash_path(bin_, busybox)
        path = str(bin_)
    threading.Timer(0.3, lambda: late.listen(5)).start()
    env = {"PATH": path, "LIVE": str(live), "SNAP": str(snap)}
    started = time.monotonic()
    proc = subprocess.run([busybox, "sh", "-c", shlex.join(argv)], capture_output=True, text=True, env=env, timeout=30)
    took = time.monotonic() - started
    server.shutdown()
    agent.shutdown()
    late.close()
    closed.close()
    assert proc.returncode == 0, proc.stderr
    loaded = {p.stem: json.loads(p.read_text())["service"]["check"].get("status") for p in snap.iterdir()}
    assert loaded == {"good": "passing", "bad": None, "late": "passing", "closed": None}
    assert "registered passing, having answered the check from this host: good late" in proc.stdout
    assert {p.name: p.read_text() for p in live.iterdir()} == {f"{r.id}.json": r.definition() for r in replicas}
    assert not staged.exists() and not pwned.exists()
    assert took < 5  # bounded: the two that never answer are left to the agent after about a second
    if with_bash:
        assert not execs.exists() and tokens == ["agent-secret"]
    else:
        assert [l.split()[:2] for l in execs.read_text().splitlines() if l.startswith("exec ")] == [["exec", "clusterctl-consul"]] * 2 and tokens == []


@pytest.mark.parametrize("with_bash", [True, False], ids=["bash on the host", "no bash"])
def test_register_checked_fails_with_the_reload_and_still_puts_the_plain_files_back(tmp_path, with_bash):
    import shutil
    import subprocess

    busybox = shutil.which("busybox")
    if not busybox:
        pytest.skip("no busybox here")
    live, staged, bin_ = (tmp_path / d for d in ("live", "staged", "bin"))
    for d in (live, staged, bin_):
        d.mkdir()
    (bin_ / "docker").write_text('#!/bin/sh\nshift 2\ncase "$*" in *reload*) echo "agent down" >&2; exit 1 ;; esac\necho web\n')
    (bin_ / "docker").chmod(0o755)
    agent, _ = _reload_agent(live, tmp_path, status=500)
    r = build.Replica(service="web", host="n1", image="i", address="127.0.0.1", port=1, command=None, env=(),
                      filebox_container=None, network=None, cluster="c1")  # fmt: skip
    (live / "web.json").write_text(r.definition())
    (staged / "web.json").write_text(r.definition(passing=True))
    argv = list(build.register_checked([r]).argv)
    argv[5:7] = [str(live), str(staged)]
    argv[12], argv[14] = str(agent.server_address[1]), str(tmp_path / "no-token")
    if with_bash:
        path = f"{bin_}:/usr/bin:/bin"
    else:
        _no_bash_path(bin_, busybox)
        path = str(bin_)
    proc = subprocess.run([busybox, "sh", "-c", shlex.join(argv)], capture_output=True, text=True, env={"PATH": path}, timeout=30)
    agent.shutdown()
    assert proc.returncode == 1 and "agent down" in proc.stderr and "registered passing" not in proc.stdout
    assert (live / "web.json").read_text() == r.definition() and not staged.exists()
