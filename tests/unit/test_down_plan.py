"""`clusterctl down`: each phase removes only what the facts show this cluster made."""

import json
from dataclasses import replace
from pathlib import Path

from clusterctl.commands import consul as consul_build
from clusterctl.commands import weave as weave_build
from clusterctl.commands.swarm import leave_for_good
from clusterctl.commands.teardown import TEARDOWN, teardown
from clusterctl.config.loader import load_text
from clusterctl.facts.parser import parse_probe_output
from clusterctl.network.drivers import OverlayDriver, RoutedDriver, WeaveDriver, WireguardDriver
from clusterctl.phases.base import Context
from clusterctl.phases.down import ConsulDown, EngineDown, FileboxDown, NetworkDown, ServicesDown

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"
FILE = """
name: c1
hosts:
  - {name: n1, address: 10.0.0.1}
  - {name: n2, address: 10.0.0.2}
"""


def labels(**kw):
    return ",".join(f"{k.replace('_', '.')}={v}" for k, v in kw.items())


def facts(containers=(), images=(), managed=None, daemon_json="", swarm=None, nodes=None, networks=()):
    data = json.loads(FIXTURE.read_text())
    data["addresses"] = [{"ifname": "eth0", "family": "inet", "cidr": "10.0.0.1/24"},
                         {"ifname": "docker0", "family": "inet", "cidr": "172.17.0.1/16"}]  # fmt: skip
    data["docker"]["containers"] = [{"ID": n, "Names": n, "Image": "i", "State": "running", "Labels": lab} for n, lab in containers]
    data["docker"]["images"] = [{"Id": i, "RepoTags": [], "Labels": lab, "Layers": []} for i, lab in images]
    data["managed_files"] = [{"path": p, "sha256": "x"} for p in (managed or [])]
    data["daemon_json"] = daemon_json
    if swarm:
        data["docker"]["info"]["Swarm"] = swarm
    data["docker"]["network"] = {"networks": list(networks), "swarm_nodes": nodes}
    return parse_probe_output(json.dumps(data))


def plan(phase, f):
    cluster = load_text(FILE, "c.yaml")
    ctx = Context(cluster, {"n1": f})
    return [c.render() for c in phase.plan(ctx, cluster.hosts[0], f)]


CLUSTER = "clusterctl.cluster=c1"


def test_a_clean_host_plans_nothing_in_every_phase():
    clean = facts()
    for phase in (ServicesDown(), ConsulDown(), FileboxDown(), NetworkDown(), EngineDown()):
        assert plan(phase, clean) == [], phase.name


def test_services_of_this_cluster_only():
    f = facts(containers=[
        ("clusterctl-svc-web", f"{CLUSTER},clusterctl.role=service,clusterctl.service=web"),
        ("clusterctl-svc-api", "clusterctl.cluster=other,clusterctl.role=service,clusterctl.service=api"),
    ])  # fmt: skip
    assert plan(ServicesDown(), f) == ["docker rm -f clusterctl-svc-web || true"]


def test_every_replica_slot_and_what_rollouts_kept_go():
    svc = f"{CLUSTER},clusterctl.role=service,clusterctl.service=web"
    f = facts(containers=[("clusterctl-svc-web", svc), ("clusterctl-svc-web.2", svc + ",clusterctl.slot=2"), ("clusterctl-svc-web.prev", svc)])
    assert plan(ServicesDown(), f) == [f"docker rm -f clusterctl-svc-{n} || true" for n in ("web", "web.2", "web.prev")]


def test_consul_agent_volume_and_config_and_another_clusters_agent_is_left():
    mine = facts(containers=[(consul_build.CONTAINER, f"{CLUSTER},clusterctl.role=consul")],
                 managed=[consul_build.GOSSIP_FILE])  # fmt: skip
    assert plan(ConsulDown(), mine) == [
        "docker rm -f clusterctl-consul || true",
        "sh -c 'if docker volume inspect \"$1\" >/dev/null 2>&1; then docker volume rm \"$1\" >/dev/null; fi' sh clusterctl-consul-data",
        "rm -rf /etc/clusterctl/consul",
    ]
    other = facts(containers=[(consul_build.CONTAINER, "clusterctl.cluster=other,clusterctl.role=consul")],
                  managed=[consul_build.GOSSIP_FILE])  # fmt: skip
    assert plan(ConsulDown(), other) == []


def test_filebox_containers_and_labelled_images():
    f = facts(
        containers=[("clusterctl-filebox-abc", f"{CLUSTER},clusterctl.role=filebox")],
        images=[("sha256:1", {"clusterctl.role": "filebox"}), ("sha256:2", {"clusterctl.role": "app"}), ("sha256:3", {})],
    )
    cmds = plan(FileboxDown(), f)
    assert cmds[0] == "docker rm -f clusterctl-filebox-abc"
    assert cmds[1].endswith("sh sha256:1 sha256:2 || true")


def test_network_leader_goes_last_and_managers_one_at_a_time():
    swarm = {"NodeID": "me", "LocalNodeState": "active", "ControlAvailable": True}
    ours = {"clusterctl.host": "n1"}
    leader = facts(swarm=swarm, nodes=[{"ID": "me", "ManagerStatus": {"Leader": True}, "Spec": {"Role": "manager", "Labels": ours}}])
    follower = facts(swarm=swarm, nodes=[{"ID": "me", "ManagerStatus": {"Reachability": "reachable"}, "Spec": {"Role": "manager"}}])
    cluster = load_text(FILE, "c.yaml")
    ctx = Context(cluster, {"n1": leader, "n2": follower})
    phase = NetworkDown()
    assert phase.wave(ctx, cluster.hosts[0], leader) == 1 and phase.wave(ctx, cluster.hosts[1], follower) == 0
    assert phase.rolling(ctx, cluster.hosts[0], leader)
    # The overlay driver leaves the swarm; no network of this cluster is left for the shared part.
    assert plan(phase, leader) == [leave_for_good().render()]
    assert OverlayDriver().teardown(ctx, leader) == [leave_for_good()]


def test_down_leaves_another_clusters_network_and_swarm_alone():
    swarm = {"NodeID": "me", "LocalNodeState": "active", "ControlAvailable": True}
    foreign_node = [{"ID": "me", "ManagerStatus": {"Leader": True}, "Spec": {"Role": "manager", "Labels": {"team": "x"}}}]
    other_net = {"Name": "othernet", "Driver": "overlay", "Scope": "swarm", "Labels": {"clusterctl.cluster": "other"}}
    # Someone else's swarm, with another cluster's overlay: nothing to do here.
    assert plan(NetworkDown(), facts(swarm=swarm, nodes=foreign_node, networks=[other_net])) == []
    # This cluster's network on a host in someone else's swarm: the network goes, the swarm stays.
    mine = {"Name": "clusterctl", "Driver": "bridge", "Scope": "local", "Labels": {"clusterctl.cluster": "c1"}}
    cmds = plan(NetworkDown(), facts(swarm=swarm, nodes=foreign_node, networks=[other_net, mine]))
    assert len(cmds) == 1 and cmds[0].endswith(" sh c1 - - || true")
    # A worker whose managers are this cluster's managers (another host of the file): ours.
    worker = facts(swarm={"NodeID": "w", "LocalNodeState": "active", "ControlAvailable": False,
                          "RemoteManagers": [{"NodeID": "me", "Addr": "10.0.0.9:2377"}]})  # fmt: skip
    cluster = load_text(FILE, "c.yaml")
    manager = facts(swarm=swarm, nodes=[{"ID": "me", "ManagerStatus": {"Leader": True}, "Spec": {"Role": "manager", "Labels": {"clusterctl.host": "n2"}}}])
    ctx = Context(cluster, {"n1": worker, "n2": manager})
    assert NetworkDown().plan(ctx, cluster.hosts[0], worker) == [leave_for_good()]
    ctx = Context(cluster, {"n1": worker, "n2": facts(swarm=swarm, nodes=foreign_node)})
    assert NetworkDown().plan(ctx, cluster.hosts[0], worker) == []


def test_each_driver_takes_only_its_own_state_of_this_cluster():
    swarm = {"NodeID": "me", "LocalNodeState": "active", "ControlAvailable": True}
    ours_node = [{"ID": "me", "ManagerStatus": {"Leader": True}, "Spec": {"Role": "manager", "Labels": {"clusterctl.host": "n1"}}}]
    mesh = {"Name": "clusterctl", "Driver": "weavemesh", "Scope": "local", "Labels": {"clusterctl.cluster": "c1", "clusterctl.cidr": "10.240.0.0/16"}}
    other_mesh = {**mesh, "Labels": {"clusterctl.cluster": "other", "clusterctl.cidr": "10.241.0.0/16"}}
    cluster = load_text(FILE, "c.yaml")

    def own(driver, f):
        return driver.teardown(Context(cluster, {"n1": f}), f)

    weave_here = facts(networks=[mesh])
    assert own(WeaveDriver(), weave_here) == [weave_build.remove("c1")]
    assert own(WeaveDriver(), facts(networks=[other_mesh])) == []
    assert own(OverlayDriver(), weave_here) == [] and own(RoutedDriver(), weave_here) == [] and own(WireguardDriver(), weave_here) == []
    in_swarm = facts(swarm=swarm, nodes=ours_node)
    assert own(OverlayDriver(), in_swarm) == [leave_for_good()] and own(WeaveDriver(), in_swarm) == []
    # An engine that is not running: nothing of the swarm or Weave can be taken.
    f = facts(swarm=swarm, nodes=ours_node, networks=[mesh])
    stopped = replace(f, docker=replace(f.docker, running=False))
    assert own(OverlayDriver(), stopped) == [] and own(WeaveDriver(), stopped) == []


def test_network_down_runs_the_drivers_pieces_first_then_the_shared_part():
    mesh = {"Name": "clusterctl", "Driver": "weavemesh", "Scope": "local", "Labels": {"clusterctl.cluster": "c1", "clusterctl.cidr": "10.240.0.0/16"}}
    bad = {"Name": "odd", "Driver": "bridge", "Scope": "local", "Labels": {"clusterctl.cluster": "c1", "clusterctl.cidr": "nonsense"}}
    # Weave's network and reset first; then the other networks, and the routes and rules of
    # every CIDR the probe saw (Weave's network is gone by then, its label with it).
    assert plan(NetworkDown(), facts(networks=[mesh, bad])) == [weave_build.remove("c1").render(), teardown("c1", "10.240.0.0/16").render()]
    swarm = {"NodeID": "me", "LocalNodeState": "active", "ControlAvailable": True}
    overlay_net = {"Name": "clusterctl", "Driver": "overlay", "Scope": "swarm", "Labels": {"clusterctl.cluster": "c1", "clusterctl.cidr": "10.240.0.0/16"}}
    assert plan(NetworkDown(), facts(swarm=swarm, nodes=[], networks=[overlay_net])) == [leave_for_good().render(), teardown("c1", "10.240.0.0/16").render()]


def test_teardown_for_callers_without_facts_keeps_the_old_order():
    """Leave the swarm (gateway bridge, port 7946), remove the networks, reset Weave, then routes and rules."""
    steps = ("docker swarm leave --force", "docker network rm docker_gwbridge", "ss -ltn", 'docker network rm "$id"', "weave reset", "ip route del", "iptables -w -D DOCKER-USER")
    at = [TEARDOWN.index(s) for s in steps]
    assert at == sorted(at)
    assert TEARDOWN.count("docker swarm leave") == 1 and TEARDOWN.count("weave reset") == 1
    assert teardown("c1", leave_swarm=True).render().endswith(" sh c1 swarm - || true")


def test_weave_remove_takes_the_cluster_as_data():
    cmd = weave_build.remove("c1")
    assert cmd.argv[-2:] == ("sh", "c1") and "c1" not in cmd.argv[2] and not cmd.check
    script = cmd.argv[2]
    assert script.index("docker network rm") < script.index("weave reset") and "driver=weavemesh" in script


def test_engine_dns_taken_out_keeping_other_keys_and_files_removed():
    ours = json.dumps({"dns": ["172.17.0.1", "192.0.2.53"], "log-driver": "journald"})
    cmds = plan(EngineDown(), facts(daemon_json=ours, managed=["/etc/clusterctl/consul/gossip.json"]))
    assert "log-driver" in cmds[0] and '"dns"' not in cmds[0]
    assert cmds[1] == "service docker restart" and cmds[-1] == "rm -rf /etc/clusterctl /var/lib/clusterctl"
    only_ours = plan(EngineDown(), facts(daemon_json=json.dumps({"dns": ["172.17.0.1"]})))
    assert only_ours[0] == "rm -f /etc/docker/daemon.json"
    # A dns the operator set (not the docker0 address) is not ours: left alone.
    assert plan(EngineDown(), facts(daemon_json=json.dumps({"dns": ["192.0.2.53"]}))) == []


def test_an_image_a_foreign_container_runs_stays():
    """Someone's container created from a clusterctl image by its short ID: the image stays (the
    containerd store may not refuse its removal, and the container could not start again)."""
    data = json.loads(FIXTURE.read_text())
    data["docker"]["containers"] = [{"ID": "f", "Names": "foreign", "Image": "abcdef012345", "State": "running", "Labels": ""}]
    data["docker"]["images"] = [{"Id": "sha256:abcdef012345" + "0" * 52, "RepoTags": ["clusterctl/base:x"], "Labels": {"clusterctl.role": "base"}, "Layers": []},
                                {"Id": "sha256:" + "1" * 64, "RepoTags": [], "Labels": {"clusterctl.role": "app"}, "Layers": []}]  # fmt: skip
    cmds = plan(FileboxDown(), parse_probe_output(json.dumps(data)))
    assert len(cmds) == 1 and cmds[0].endswith("sh sha256:" + "1" * 64 + " || true")
