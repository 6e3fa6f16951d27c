"""The services phase's plans and the replica builders, from recorded facts."""

import json
import shlex
from pathlib import Path

import pytest

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


def facts_for(ip, containers=(), managed=None, checks=None):
    data = json.loads(FIXTURE.read_text())
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


def test_replicas_spread_over_providers_and_start_registered_and_waited_for():
    ctx = ctx_for()
    assert plan(ctx, "n2") == []  # n1 (aws) and n3 (gcp) run the two replicas
    cmds = plan(ctx, "n1")
    # The definition carries the service's token: written 0600 from stdin, shown nowhere.
    assert "register web" in cmds[0].description and cmds[0].argv[-1] == build.ROOT
    assert cmds[0].stdin.names == ("consul/services/web.json",) and WEB_TOKEN.encode() in cmds[0].stdin._data
    run = shlex.split(cmds[1].render())
    assert run[:4] == ["docker", "run", "-d", "--name"] and "clusterctl-svc-web" in run
    assert ["-p", "10.0.0.1:8080:8080"] == run[run.index("-p") : run.index("-p") + 2]
    assert ["-e", "GREETING=hi; rm -rf /"] == run[run.index("-e") : run.index("-e") + 2]  # one argv word
    assert ["--volumes-from", "clusterctl-filebox-abc:ro"] == run[run.index("--volumes-from") :][:2]
    assert ["--network", "clusterctl"] == run[run.index("--network") :][:2]
    assert run[-1] == "nginx:1.25"
    assert not any(WEB_TOKEN in c.display() or WEB_TOKEN in repr(c) for c in cmds)
    assert cmds[2].argv[:3] == ("docker", "exec", "clusterctl-consul") and cmds[2].argv[-1] == "reload"
    assert "CONSUL_HTTP_TOKEN_FILE=/consul/config/agent.token" in cmds[2].render()
    assert "healthy" in cmds[3].description and len(cmds) == 4


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
        "reload consul's service definitions",
        "wait until consul reports web healthy",
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
    # Stopped with SIGTERM first, 10 s (stop_grace) for in-flight requests, then removed.
    assert "register web" in cmds[0].description  # the file first; consul loads it once the replica runs
    assert cmds[1].argv[-2:] == ("clusterctl-svc-web", "10") and "docker stop -t" in cmds[1].render()
    assert cmds[2].argv[:2] == ("docker", "run")
    # A replica whose definition is registered is drained first.
    registered = facts_for("10.0.0.1", [container("web", "0ld")], {build.definition_path("web"): "x"})
    ctx = ctx_for(n1=registered)
    descriptions = [c.description for c in phase.plan(ctx, ctx.cluster.spec.host("n1"), registered)]
    assert descriptions[:6] == ["deregister web from this host's consul agent", "reload consul's service definitions",
                                "wait until the catalog no longer hands out web here",
                                "register web with consul (0600: with their tokens)",
                                "remove the web container (stopped first: up to 10s for in-flight requests)",
                                "start web on 10.0.0.1:8080"]  # fmt: skip
    assert phase.rolling(ctx, ctx.cluster.spec.host("n1"), ctx.facts["n1"])
    assert not phase.rolling(ctx, ctx.cluster.spec.host("n3"), ctx.facts["n3"])  # a first start


def test_running_replica_stays_and_a_surplus_one_is_removed_and_deregistered():
    # web runs on n1 and n2 (both aws): n1 keeps it, n2's goes to gcp's n3.
    ctx = ctx_for()
    old = facts_for("10.0.0.2", [container("web", "x")], {build.definition_path("web"): "y"})
    ctx = ctx_for(n1=converged(ctx, "n1"), n2=old)
    assert plan(ctx, "n1") == []
    assert [c.render() for c in plan(ctx, "n2")] == [
        f"rm -f {build.definition_path('web')}",
        build.reload_agent().render(),
        build.wait_deregistered("web", "n2").render(),
        """sh -c 'docker stop -t "$2" "$1" >/dev/null 2>&1; docker rm -f "$1" >/dev/null' sh clusterctl-svc-web 10 || true""",
    ]
    assert plan(ctx, "n3")[1].argv[:2] == ("docker", "run")


def test_another_clusters_containers_are_left_alone():
    ctx = ctx_for()
    ctx = ctx_for(n2=facts_for("10.0.0.2", [container("web", "x", cluster="other")]))
    assert plan(ctx, "n2") == []


def test_a_host_down_moves_its_replica_and_too_few_hosts_refuse_the_phase():
    ctx = ctx_for(n1="down")
    assert plan(ctx, "n2")[1].argv[:2] == ("docker", "run")
    ctx = ctx_for(n1="down", n2="down")
    with pytest.raises(PhaseError, match=r"services\.web: 2 replicas need 2 hosts \(one per host\), but 1 is up \(n1, n2 did not answer\)"):
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
    wait = plan(ctx, "n1")[-1]
    assert "healthy" in wait.description and wait.argv[-3:-1] == ("360", "180")


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
    assert bundle.stdin.names == ("consul/services/web.json", "env/web.env")
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
    assert descriptions[0] == "deregister web from this host's consul agent"
    assert descriptions[3].endswith("write the secret env of web (0600)")
    assert descriptions[4].startswith("remove the web container") and descriptions[5].startswith("start web")


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
    assert run.argv[run.argv.index("--cpus") : run.argv.index("--cpus") + 4] == ("--cpus", "0.25", "--memory", "64M")
    limited = replica(ctx, ctx.cluster.spec.services[0], ctx.cluster.spec.host("n1"), ctx.facts["n1"])
    plain = replica(ctx_for(), ctx_for().cluster.spec.services[0], ctx.cluster.spec.host("n1"), ctx.facts["n1"])
    assert limited.digest() != plain.digest() and "--cpus" not in plain.run().argv


def test_replicas_are_sized_from_dockers_facts_less_the_reserve_else_the_files_capacity():
    # The fixture's engine has 2 CPUs; 0.5 is reserved: 1.5 left, short of 2 on every host.
    too_big = FILE.replace("    port: 8080\n", "    port: 8080\n    resources: {cpu: 2}\n")
    with pytest.raises(PhaseError, match=r"services\.web: 2 replicas need 2 hosts \(one per host\), but 0 are up with room for 2 cpu \(n1 lacks 0.5 cpu, n2 lacks 0.5 cpu, n3 lacks 0.5 cpu\)"):
        ServicesPhase().check(ctx_for(too_big))
    ServicesPhase().check(ctx_for(too_big.replace("placement:", "").replace("services:", "placement: {reserve: {cpu: 0}}\nservices:")))
    bigger = too_big.replace("labels: {provider: gcp}}", "labels: {provider: gcp}, capacity: {cpu: 4}}")
    bigger = bigger.replace("labels: {provider: aws}}\n  - {name: n2", "labels: {provider: aws}, capacity: {cpu: 4}}\n  - {name: n2")
    ctx = ctx_for(bigger)
    assert plan(ctx, "n2") == [] and plan(ctx, "n1") and plan(ctx, "n3")
