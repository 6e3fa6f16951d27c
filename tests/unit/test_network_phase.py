"""The network phase and the manager's passes, waves and lookups, without SSH.

A small simulated swarm stands in for the hosts: it runs the scripts the manager sends (init,
network create, joins that check their token on stdin, node labels, token reads) and answers
the probe with the facts a real engine would report. Also: the probe's network block parser,
the CIDR choice and checks, the routed nat rule order, teardown, the BusyBox rootfs, inputs.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from clusterctl.commands import routed
from clusterctl.commands import swarm as swarm_build
from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.commands.teardown import teardown
from clusterctl.config.loader import load_text
from clusterctl.errors import UserError
from clusterctl.facts.parser import parse_probe_output
from clusterctl.lab.busybox import rootfs_tar
from clusterctl.network.facts import parse_network_probe
from clusterctl.phases import PHASES
from clusterctl.phases.base import Context, Inputs, PhaseError, PlanError
from clusterctl.commands.base import STEP_MARK_SHELL
from clusterctl.phases.manager import RECORD_PGID, Manager, Options, execute
from clusterctl.phases.network import NetworkPhase, network_inputs, plan_network
from clusterctl.transport.ssh import RunResult

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"
ADDR = {"node1": "10.77.0.11", "node2": "10.77.0.12", "node3": "10.77.0.13"}
TOKENS = {"worker": "SWMTKN-1-abc123-worker456", "manager": "SWMTKN-1-abc123-manager789"}


def cluster_file(network: str = "", hosts=("node1", "node2", "node3"), roles=None) -> str:
    roles = roles or {}
    lines = ["name: lab", "hosts:"]
    for h in hosts:
        lines.append(f"  - {{name: {h}, address: {ADDR[h]}, roles: [{roles.get(h, 'server')}]}}")
    return "\n".join(lines) + "\n" + network


def probe_json(name: str, *, swarm=None, nodes=None, networks=(), routes=(), extra_addresses=(), rules=None, images=()):
    data = json.loads(FIXTURE.read_text())
    ip = ADDR[name]
    data["hostname"] = name
    data["ssh_connection"] = f"10.77.0.1 5555 {ip} 22"
    data["addresses"] = [
        {"ifname": "lo", "family": "inet", "cidr": "127.0.0.1/8"},
        {"ifname": "eth0", "family": "inet", "cidr": f"{ip}/24"},
        {"ifname": "docker0", "family": "inet", "cidr": "172.17.0.1/16"},
        *({"ifname": i, "family": "inet", "cidr": c} for i, c in extra_addresses),
    ]
    data["routes"] = [{"route": r} for r in ["default via 10.77.0.1 dev eth0", f"10.77.0.0/24 dev eth0 src {ip}", *routes]]
    if swarm is not None:
        data["docker"]["info"]["Swarm"] = swarm
    docker_user, nat = rules if rules is not None else (["-N DOCKER-USER", "-A DOCKER-USER -j RETURN"], ["-P POSTROUTING ACCEPT"])
    data["docker"]["network"] = {
        "docker_user": docker_user,
        "nat_postrouting": nat,
        "networks": list(networks),
        "swarm_nodes": nodes,
        "weave_images": list(images),
    }
    return data


def facts(name: str, **kw):
    return parse_probe_output(json.dumps(probe_json(name, **kw)))


# ---------------------------------------------------------------------------------------------
# A simulated swarm


@dataclass
class World:
    """What the hosts' engines hold; executes the scripts the manager sends."""

    cluster_id: str = ""
    leader: str = ""
    members: dict[str, str] = field(default_factory=dict)  # host -> role
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> node labels
    overlay: dict | None = None
    scripts: list[tuple[str, str]] = field(default_factory=list)  # (host, script text)
    stdins: list[bytes] = field(default_factory=list)

    def node_id(self, host: str) -> str:
        return f"id{host[-1]}"

    def probe(self, name: str) -> str:
        swarm, nodes, networks = None, None, []
        if name in self.members:
            manager = self.members[name] == "manager"
            swarm = {
                "NodeID": self.node_id(name), "NodeAddr": ADDR[name], "LocalNodeState": "active",
                "ControlAvailable": manager, "Error": "",
                "RemoteManagers": [{"NodeID": self.node_id(self.leader), "Addr": f"{ADDR[self.leader]}:2377"}],
                "Cluster": {"ID": self.cluster_id} if manager else None,
            }  # fmt: skip
            if manager:
                nodes = [
                    {
                        "ID": self.node_id(h), "Description": {"Hostname": h},
                        "Spec": {"Role": role, "Availability": "active", "Labels": self.labels.get(h, {})},
                        "Status": {"State": "ready", "Addr": ADDR[h]},
                        "ManagerStatus": {"Leader": h == self.leader, "Reachability": "reachable"} if role == "manager" else None,
                    }
                    for h, role in self.members.items()
                ]  # fmt: skip
                if self.overlay:
                    networks = [self.overlay]
        return json.dumps(probe_json(name, swarm=swarm, nodes=nodes, networks=networks))

    def run(self, host: str, script: str, stdin: bytes) -> RunResult:
        self.scripts.append((host, script))
        self.stdins.append(stdin)
        out = []
        for line in script.splitlines()[1:]:  # after `set -e`
            if line.startswith("sh -c '# clusterctl probe"):  # the host's own facts, last (many lines)
                out.append(self.probe(host))
                break
            argv = shlex.split(line)
            if argv[:2] == ["printf", STEP_MARK_SHELL + "%s\\n"]:  # a step mark, for progress output
                continue
            if argv[:2] == ["sh", "-c"] and "clusterctl-facts-follow" in argv[2]:  # the host's own facts follow
                out.append("\nclusterctl-facts-follow")
                continue
            if argv[:3] == ["docker", "swarm", "init"]:
                assert not self.cluster_id
                self.cluster_id, self.leader, self.members[host] = "C1", host, "manager"
            elif argv[:4] == ["docker", "network", "create", "-d"] and argv[4] == "overlay":
                subnet = argv[argv.index("--subnet") + 1]
                labels = {k: v for k, v in (argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--label")}
                self.overlay = {"Name": argv[-1], "Driver": "overlay", "Scope": "swarm", "Labels": labels,
                                "IPAM": {"Driver": "default", "Config": [{"Subnet": subnet}]}}  # fmt: skip
            elif argv[:2] == ["sh", "-c"] and "POST /swarm/join" in argv[2]:
                token = stdin.decode().strip()
                role = {v: k for k, v in TOKENS.items()}.get(token)
                if role is None or not self.cluster_id:
                    return RunResult(1, "", "Error response from daemon: invalid join token", 0.1)
                self.members[host] = role
            elif argv[:2] == ["sh", "-c"] and "GET /swarm " in argv[2]:
                assert self.members.get(host) == "manager"
                out += [TOKENS["worker"], TOKENS["manager"]]
            elif argv[:2] == ["sh", "-c"] and "Swarm.NodeID" in argv[2] and "docker node update" in argv[2]:
                assert self.members.get(host) == "manager"  # a worker cannot update nodes
                for i, a in enumerate(argv):
                    if a == "--label-add":
                        k, v = argv[i + 1].split("=", 1)
                        self.labels.setdefault(host, {})[k] = v
            elif argv[:3] == ["docker", "node", "update"]:
                node = argv[-1]
                target = next(h for h in self.members if self.node_id(h) == node)
                for i, a in enumerate(argv):
                    if a == "--label-add":
                        k, v = argv[i + 1].split("=", 1)
                        self.labels.setdefault(target, {})[k] = v
            else:
                raise AssertionError(f"unexpected command on {host}: {line}")
        return RunResult(0, "\n".join(out) + "\n", "", 0.1)


class FakeSession:
    def __init__(self, world: World, name: str):
        self.world, self.name, self.round_trips, self.bytes_sent = world, name, 0, 0

    def run(self, command: str, timeout=None, stdin=None, watch=None) -> RunResult:
        self.round_trips += 1
        argv = shlex.split(command)
        if argv[:2] == ["sh", "-c"] and argv[2].startswith("# clusterctl probe"):
            return RunResult(0, self.world.probe(self.name), "", 0.05)
        data = b""
        if isinstance(stdin, bytes):
            data = stdin
        elif stdin is not None:
            chunks: list[bytes] = []
            stdin.write_to(chunks.append)
            data = b"".join(chunks)
        assert argv[:2] == ["sh", "-c"] and argv[2].startswith(RECORD_PGID)  # recorded, so it can be ended
        return self.world.run(self.name, argv[2].removeprefix(RECORD_PGID), data)

    def close(self) -> None:
        pass


def run(world: World, text: str, dry_run: bool = False, phases=None):
    cluster = load_text(text, "lab.yaml")

    def connect(self: Manager) -> None:
        for name in self.reports:
            self.sessions[name] = FakeSession(world, name)  # type: ignore[assignment]

    orig = Manager.connect
    Manager.connect = connect  # type: ignore[method-assign]
    try:
        return execute(cluster, phases or [NetworkPhase()], {}, None, Options(dry_run=dry_run))  # type: ignore[arg-type]
    finally:
        Manager.connect = orig  # type: ignore[method-assign]


def steps(report, phase="network"):
    return {h.name: next(s for s in h.steps if s.phase == phase) for h in report.hosts}


# ---------------------------------------------------------------------------------------------
# The overlay through the manager


def test_phase_order():
    # engine restarts dockerd: before the swarm exists that costs ~2 s instead of ~14 s.
    assert [p.name for p in PHASES] == ["docker", "engine", "network", "filebox", "consul", "services", "prune"]


def test_dry_run_shows_init_and_joins_with_placeholders_and_sends_only_the_probe():
    world = World()
    report = run(world, cluster_file(), dry_run=True)
    assert world.scripts == [] and [h.round_trips for h in report.hosts] == [1, 1, 1]
    s = steps(report)
    assert s["node1"].status == "planned" and s["node1"].commands[0].startswith("docker swarm init --advertise-addr 10.77.0.11")
    assert s["node3"].commands == [
        shlex.join(["sh", "-c", swarm_build.JOIN, "sh"]) + " --advertise-addr 10.77.0.13 "
        "--listen-addr 10.77.0.13:2377 10.77.0.11:2377  # stdin: <manager token of node1>",
        shlex.join(["sh", "-c", swarm_build.LABEL_SELF, "sh", "--label-add", "clusterctl.host=node3"]),
    ]


def test_fresh_swarm_converges_in_passes_and_tokens_stay_secret():
    world = World()
    report = run(world, cluster_file(roles={"node3": "client"}))
    assert report.ok and not report.refused
    assert world.members == {"node1": "manager", "node2": "manager", "node3": "worker"}
    assert world.labels == {h: {"clusterctl.host": h} for h in ("node1", "node2", "node3")}
    assert world.overlay is not None and world.overlay["Labels"]["clusterctl.cidr"] == "10.240.0.0/16"
    # Pass 1: init + network + its own node's labels on node1 only; pass 2: token read on node1,
    # then the joins (node2, a manager, labels its own node); pass 3: node1 labels node3 (a
    # worker cannot); pass 4 plans nothing.
    order = [h for h, _ in world.scripts]
    assert order[:2] == ["node1", "node1"] and sorted(order[2:4]) == ["node2", "node3"] and order[4:] == ["node1"]
    assert "GET /swarm " in world.scripts[1][1] and "Swarm.NodeID" in world.scripts[0][1] and "Swarm.NodeID" in world.scripts[order.index("node2")][1]
    assert world.scripts[4][1].count("docker node update") == 1 and "clusterctl.host=node3" in world.scripts[4][1]
    # Round trips: the probe; node1's init (its own facts at the end: nobody else is in a swarm
    # yet, so no one is probed again); the token read and the joins, then every member probed
    # again (each saw another join); node1's labels for node3, whose peers are probed again
    # (their node lists changed), node1 not (its own script printed its facts).
    assert [h.round_trips for h in report.hosts] == [5, 4, 4]
    s = steps(report)
    assert {n: st.status for n, st in s.items()} == dict.fromkeys(("node1", "node2", "node3"), "changed")
    assert [st.phase for st in report.hosts[1].steps].count("network") == 1  # one step however many passes
    shown = json.dumps([(st.message, st.commands) for h in report.hosts for st in h.steps]) + repr(report)
    assert "SWMTKN" not in shown and all("SWMTKN" not in text for _, text in world.scripts)
    assert s["node3"].commands[-1].endswith("# stdin: worker token of node1, not shown")
    assert sorted(d for d in world.stdins if d) == [b"SWMTKN-1-abc123-manager789\n", b"SWMTKN-1-abc123-worker456\n"]

    # Converged: planned from the one probe, nothing run, no lookup.
    before = len(world.scripts)
    again = run(world, cluster_file(roles={"node3": "client"}))
    assert again.ok and not again.changed and len(world.scripts) == before
    assert [h.round_trips for h in again.hosts] == [1, 1, 1]


def test_managers_label_their_own_nodes_so_a_swarm_of_servers_needs_no_label_pass():
    world = World()
    report = run(world, cluster_file())
    assert report.ok and world.labels == {h: {"clusterctl.host": h} for h in ("node1", "node2", "node3")}
    # init (+ its labels), the token read, the joins (+ their labels); then nothing to plan.
    assert [h for h, _ in world.scripts][:2] == ["node1", "node1"] and len(world.scripts) == 4
    assert not any(line.startswith("docker node update") for _, text in world.scripts for line in text.splitlines())


def test_a_failed_join_stops_the_passes_and_names_the_host():
    world = World()
    original = world.run

    def flaky(host, script, stdin):
        if host == "node2" and "swarm join" in script:
            return RunResult(1, "", "Error response from daemon: rpc error: timeout", 0.1)
        return original(host, script, stdin)

    world.run = flaky  # type: ignore[method-assign]
    report = run(world, cluster_file())
    assert report.failed_hosts and [h.name for h in report.failed_hosts] == ["node2"]
    assert "rpc error" in steps(report)["node2"].message
    assert world.members.keys() == {"node1", "node3"}


def test_cluster_wide_refusal_runs_nothing_anywhere():
    world = World()
    text = cluster_file("network: {driver: routed, subnet: 10.77.0.0/16}\n")
    report = run(world, text, phases=PHASES)
    assert world.scripts == [] and not report.ok
    assert report.refused == {"network": "cluster CIDR 10.77.0.0/16 overlaps 10.77.0.0/24, already used by the hosts; "
                                         "set network.subnet to a free range"}  # fmt: skip
    for h in report.hosts:
        assert [(s.phase, s.status) for s in h.steps] == [("probe", "ok"), ("network", "failed")]
        assert h.round_trips == 1


# ---------------------------------------------------------------------------------------------
# plan_network: the CIDR, the drivers, per-host errors


def ctx(text: str, inputs: Inputs | None = None, **per_host) -> Context:
    cluster = load_text(text, "lab.yaml")
    f = {h.name: per_host.get(h.name) or facts(h.name) for h in cluster.hosts}
    f = {k: v for k, v in f.items() if v != "silent"}
    return Context(cluster, f, inputs or Inputs())


def test_cidr_default_skips_used_ranges_and_keeps_the_labelled_one():
    busy = facts("node1", extra_addresses=[("wg0", "10.240.3.1/24")])
    assert plan_network(ctx(cluster_file(), node1=busy)).cidr == IPv4Network("10.241.0.0/16")
    # Another Docker network's subnet counts too (e.g. a user's overlay on 10.240.0.0/16).
    other = {"Name": "apps", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.240.0.0/16"}]}}
    assert plan_network(ctx(cluster_file(), node1=facts("node1", networks=[other]))).cidr == IPv4Network("10.241.0.0/16")
    ours = {"Name": "clusterctl", "Driver": "bridge", "Labels": {"clusterctl.cluster": "lab", "clusterctl.cidr": "10.250.0.0/16"},
            "IPAM": {"Config": [{"Subnet": "10.250.0.0/24", "Gateway": "10.250.0.1"}]}}  # fmt: skip
    assert plan_network(ctx(cluster_file("network: {driver: routed}\n"), node1=facts("node1", networks=[ours]))).cidr == IPv4Network("10.250.0.0/16")


def test_routed_plan_from_probe_facts_and_routes_of_a_removed_host_do_not_clash():
    text = cluster_file("network: {driver: routed}\n")
    plan = plan_network(ctx(text))
    assert plan.cmds["node1"][-2:] == [
        routed.route_replace(IPv4Network("10.240.1.0/24"), __import__("ipaddress").ip_address("10.77.0.12")),
        routed.route_replace(IPv4Network("10.240.2.0/24"), __import__("ipaddress").ip_address("10.77.0.13")),
    ]
    ours = {"Name": "clusterctl", "Driver": "bridge", "Labels": {"clusterctl.cluster": "lab", "clusterctl.cidr": "10.240.0.0/16"},
            "Options": {"com.docker.network.bridge.name": "br-clusterctl"},
            "IPAM": {"Config": [{"Subnet": "10.240.0.0/24", "Gateway": "10.240.0.1"}]}}  # fmt: skip
    # node1 still routes to a host that left (10.77.0.14): ours, removed, not an overlap.
    f1 = facts("node1", networks=[ours], routes=["10.240.3.0/24 via 10.77.0.14 dev eth0"],
               extra_addresses=[("br-clusterctl", "10.240.0.1/24")])  # fmt: skip
    plan = plan_network(ctx(text, node1=f1))
    assert "ip route del 10.240.3.0/24 via 10.77.0.14 || true" in [c.render() for c in plan.cmds["node1"]]


def test_per_host_errors_become_plan_errors():
    text = cluster_file("network: {driver: routed}\n")
    c = ctx(text, node2=facts("node2", networks=[{"Name": "clusterctl", "Driver": "bridge", "Containers": {"a": {}},
                                                  "IPAM": {"Config": [{"Subnet": "10.9.0.0/24"}]}}]))  # fmt: skip
    phase = NetworkPhase()
    with pytest.raises(PlanError, match="container"):
        phase.plan(c, c.cluster.spec.host("node2"), c.facts["node2"])
    assert phase.plan(c, c.cluster.spec.host("node1"), c.facts["node1"])


def test_a_network_of_our_name_that_is_not_ours_is_never_touched():
    text = cluster_file("network: {driver: routed}\n")
    theirs = {"Name": "clusterctl", "Driver": "bridge", "IPAM": {"Config": [{"Subnet": "10.240.0.0/24"}]}}
    other = {**theirs, "Labels": {"clusterctl.cluster": "prod", "clusterctl.cidr": "10.240.0.0/16"}}
    plan = plan_network(ctx(text, node1=facts("node1", networks=[theirs]), node2=facts("node2", networks=[other])))
    assert plan.errors["node1"] == (
        "a bridge network named 'clusterctl' exists here that clusterctl did not create; "
        "remove it (docker network rm) or set network.name"
    )
    assert "belongs to cluster 'prod'" in plan.errors["node2"]
    assert "node1" not in plan.cmds and "node2" not in plan.cmds and plan.cmds["node3"]


def test_overlay_refusals_are_cluster_wide():
    with pytest.raises(PhaseError, match="at least one server"):
        plan_network(ctx(cluster_file(roles=dict.fromkeys(ADDR, "client"))))
    # A manager that answers but cannot list its nodes (no quorum): refused, not guessed.
    c = ctx(cluster_file(), node1=parse_probe_output(World(cluster_id="C1", leader="node1", members={"node1": "manager"}).probe("node1")
                                                     .replace('"swarm_nodes": [', '"swarm_nodes": null, "x": [')))  # fmt: skip
    with pytest.raises(PhaseError, match="did not list"):
        NetworkPhase().check(c)


def test_weave_is_refused_without_images_and_planned_with_them():
    text = cluster_file("network: {driver: weave}\n")
    with pytest.raises(PhaseError, match="missing on node1, node2, node3"):
        plan_network(ctx(text))
    imgs = ["weaveworks/weave:2.8.1", "weaveworks/weaveexec:2.8.1", "weaveworks/weavedb:latest"]
    c = ctx(text, Inputs(weave_password=b"pw-123"), **{n: facts(n, images=imgs) for n in ADDR})
    cmds = NetworkPhase().plan(c, c.cluster.spec.host("node1"), c.facts["node1"])
    assert cmds[0].stdin == b"pw-123" and all("pw-123" not in x.display() for x in cmds)
    assert any("weave launch" in x.render() and "10.77.0.12 10.77.0.13" in x.render() for x in cmds)


def test_a_silent_host_is_still_part_of_the_routed_plan():
    text = cluster_file("network: {driver: routed}\n")
    plan = plan_network(ctx(text, node3="silent"))
    assert "node3" not in plan.cmds and [c.render() for c in plan.cmds["node1"]][-1] == "ip route replace 10.240.1.0/24 via 10.77.0.12"


# ---------------------------------------------------------------------------------------------
# Small pure pieces


def test_parse_network_probe():
    n = parse_network_probe(
        {
            "docker_user": ["-N DOCKER-USER", "-A DOCKER-USER -j RETURN"],
            "nat_postrouting": None,
            "networks": [{"Name": "x", "Driver": "bridge", "IPAM": {"Config": [{"Subnet": "10.1.0.0/24"}]}}],
            "swarm_nodes": None,
            "weave_images": ["weaveworks/weave:2.8.1"],
            "weave": {"script_version": "2.8.1", "router": "running", "args": ["--port", "6783", "--ipalloc-range", "10.240.0.0/16"], "targets": ["10.0.0.2"]},
        },
        ["default via 10.0.0.1 dev eth0 ", "10.1.0.0/24 dev br-x proto kernel scope link src 10.1.0.1 linkdown "],
    )
    assert n.docker_user_rules == ("-A DOCKER-USER -j RETURN",) and n.nat_postrouting_rules is None
    assert n.networks[0].subnets == (IPv4Network("10.1.0.0/24"),) and n.swarm_nodes is None
    assert (n.weave_script_version, n.weave_router, n.weave_ipalloc_range, n.weave_targets) == ("2.8.1", "running", "10.240.0.0/16", ("10.0.0.2",))
    assert [r.dev for r in n.routes] == ["eth0", "br-x"]
    empty = parse_network_probe(None)
    assert empty.networks == () and empty.docker_user_rules is None and empty.weave_router == "absent"


def test_nat_rule_order_tolerates_rules_that_cannot_match_cluster_traffic():
    cidr = IPv4Network("10.240.0.0/16")
    ours = routed.return_rule(cidr)
    assert routed.source_kept([ours, "-A POSTROUTING -s 10.240.0.0/24 ! -o br-clusterctl -j MASQUERADE"], cidr)
    # After an engine restart Docker puts docker0's rule on top: it cannot match cluster traffic.
    assert routed.source_kept(["-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", ours], cidr)
    assert routed.source_kept(["-A POSTROUTING -d 127.0.0.11/32 -j DOCKER_POSTROUTING", ours], cidr)
    assert not routed.source_kept(["-A POSTROUTING -s 10.240.1.0/24 ! -o br-clusterctl -j MASQUERADE", ours], cidr)
    assert not routed.source_kept(["-A POSTROUTING -j WEAVE", ours], cidr)
    assert not routed.source_kept(["-A POSTROUTING ! -s 172.17.0.0/16 -j MASQUERADE", ours], cidr)
    assert not routed.source_kept([], cidr) and not routed.source_kept(None, cidr)


def test_as_root_keeps_stdin():
    cmd = as_root(Cmd(("sh", "-c", "cat > /x"), "write", stdin=b"secret"), "sudo -n")
    assert cmd.argv[:2] == ("sudo", "-n") and cmd.stdin == b"secret"


def test_teardown_takes_cidrs_as_data():
    cmd = teardown("c1", "10.240.0.0/16")
    assert cmd.argv[:2] == ("sh", "-c") and cmd.argv[-5:] == ("sh", "c1", "-", "-", "10.240.0.0/16") and "10.240" not in cmd.argv[2]
    assert cmd.render().endswith("|| true")
    assert teardown("c1", leave_swarm=True, reset_weave=True).argv[-3:] == ("c1", "swarm", "weave")
    with pytest.raises(ValueError):
        teardown("c1", "10.240.0.0/16; reboot")
    with pytest.raises(ValueError):
        teardown("c1; reboot")


def test_busybox_rootfs_has_the_binary_applets_and_files():
    if not Path("/bin/busybox").exists():
        pytest.skip("no /bin/busybox (apt-get install busybox-static)")
    with tarfile.open(fileobj=io.BytesIO(rootfs_tar({"www/index.html": b"hi\n"}))) as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert names["bin/busybox"].isfile() and names["bin/busybox"].mode == 0o755
        assert names["usr/bin/wget"].issym() and names["usr/bin/wget"].linkname == "/bin/busybox"
        assert tar.extractfile("www/index.html").read() == b"hi\n"
        assert b"root:x:0:0" in tar.extractfile("etc/passwd").read()


def test_weave_password_from_env_or_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERCTL_STATE_DIR", str(tmp_path))
    text = cluster_file("network: {driver: weave}\n")
    cluster = load_text(text, "lab.yaml")
    assert network_inputs(cluster, Inputs(), dry_run=True).weave_password == b"<generated on first up>"
    assert not (tmp_path / "clusters" / "lab" / "weave.password").exists()
    first = network_inputs(cluster, Inputs(), dry_run=False).weave_password
    path = tmp_path / "clusters" / "lab" / "weave.password"
    assert path.stat().st_mode & 0o777 == 0o600 and len(first) >= 40
    assert network_inputs(cluster, Inputs(), dry_run=False).weave_password == first
    assert first.decode() not in repr(network_inputs(cluster, Inputs(), dry_run=False))
    env = load_text(cluster_file("network: {driver: weave, weave_password_env: WEAVE_PW}\n"), "lab.yaml")
    monkeypatch.delenv("WEAVE_PW", raising=False)
    with pytest.raises(UserError, match=r"\$WEAVE_PW is not set"):
        network_inputs(env, Inputs(), dry_run=False)
    monkeypatch.setenv("WEAVE_PW", "from-env")
    assert network_inputs(env, Inputs(), dry_run=False).weave_password == b"from-env"
    routed_cluster = load_text(cluster_file("network: {driver: routed}\n"), "lab.yaml")
    assert network_inputs(routed_cluster, Inputs(), dry_run=False) == Inputs()


@pytest.mark.skipif(not __import__("shutil").which("dash"), reason="dash (a strict POSIX sh) is not installed")
def test_probe_network_block_runs_under_posix_dash():
    import subprocess

    from clusterctl.facts.parser import probe_script

    script = probe_script()
    assert "# --- network facts" in script and "# --- end of network facts" in script
    out = subprocess.run(["dash", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    f = parse_probe_output(out.stdout)
    assert f.network.routes  # this machine has routes
    if f.docker.running:
        assert any(n.name == "bridge" for n in f.network.networks)


def _with_esp(f, esp: bool):
    from dataclasses import replace as dc_replace

    return dc_replace(f, network=dc_replace(f.network, blocks={**f.network.blocks, "xfrm": {"state": True, "esp": esp}}))


def test_encrypted_overlay_is_created_with_ipsec_and_refused_where_a_kernel_lacks_esp():
    text = cluster_file("network: {encrypted: true}\n")
    with_esp = {n: _with_esp(facts(n), True) for n in ADDR}
    plan = plan_network(ctx(text, **with_esp))
    create = next(c for c in plan.cmds["node1"] if c.argv[:3] == ("docker", "network", "create"))
    assert create.argv[3:8] == ("-d", "overlay", "--attachable", "--opt", "encrypted") and "encrypted" in create.description
    # Unencrypted unless asked.
    plain = plan_network(ctx(cluster_file(), **with_esp))
    assert not any("encrypted" in c.argv for c in plain.cmds["node1"])
    # One host without ESP: refused for the whole cluster before anything runs, naming it.
    lacking = {**with_esp, "node2": _with_esp(facts("node2"), False)}
    with pytest.raises(PhaseError, match=r"kernel of node2 has no esp4 .*use driver wireguard"):
        plan_network(ctx(text, **lacking))
    assert plan_network(ctx(cluster_file(), **lacking)).cmds["node1"]  # not asked for: no refusal


def test_encryption_of_a_running_overlay_is_not_changed_in_place():
    net = {"Name": "clusterctl", "Driver": "overlay", "Id": "x", "Scope": "swarm",
           "IPAM": {"Config": [{"Subnet": "10.240.0.0/16", "Gateway": "10.240.0.1"}]},
           "Options": {"com.docker.network.driver.overlay.vxlanid_list": "4097"},
           "Labels": {"clusterctl.cluster": "lab", "clusterctl.cidr": "10.240.0.0/16"}}  # fmt: skip
    swarm = {"NodeID": "n1", "LocalNodeState": "active", "ControlAvailable": True, "Cluster": {"ID": "C1"},
             "RemoteManagers": [{"NodeID": "n1", "Addr": f"{ADDR['node1']}:2377"}]}  # fmt: skip
    node = {"ID": "n1", "Spec": {"Role": "manager", "Labels": {}}, "Status": {"Addr": ADDR["node1"], "State": "ready"},
            "ManagerStatus": {"Leader": True, "Addr": f"{ADDR['node1']}:2377"}, "Description": {"Hostname": "node1"}}  # fmt: skip
    f1 = _with_esp(facts("node1", swarm=swarm, nodes=[node], networks=[net]), True)
    with pytest.raises(PhaseError, match="is not encrypted, and network.encrypted is true; remove it"):
        plan_network(ctx(cluster_file("network: {encrypted: true}\n", hosts=("node1",)), node1=f1))


class PassCountingWorld(World):
    """Hosts that count the passes run on them (shown to the plan through the probe's
    hostname); node1's every run fails."""

    def __init__(self) -> None:
        super().__init__()
        self.done: dict[str, int] = {}

    def probe(self, name: str) -> str:
        data = probe_json(name)
        data["hostname"] = f"{name}-{self.done.get(name, 0)}"
        return json.dumps(data)

    def run(self, host: str, script: str, stdin: bytes) -> RunResult:
        if host == "node1":
            return RunResult(1, "", "node1 broke", 0.1)
        self.done[host] = self.done.get(host, 0) + 1
        return RunResult(0, "", "", 0.1)


class TwoPassPhase:
    name, title, passes = "network", "two passes a host", 3

    def __init__(self, independent: bool) -> None:
        self.independent = independent

    def independent_hosts(self, ctx) -> bool:
        return self.independent

    def plan(self, ctx, host, facts):
        return [Cmd(("true",), "one step")] if int(facts.hostname.rsplit("-", 1)[1]) < 2 else []


@pytest.mark.parametrize("independent", [True, False])
def test_a_host_failing_in_one_pass_stops_the_others_only_where_hosts_depend_on_each_other(independent):
    world = PassCountingWorld()
    report = run(world, cluster_file(), phases=[TwoPassPhase(independent)])
    got = steps(report)
    assert got["node1"].status == "failed" and "node1 broke" in got["node1"].message
    # Independent hosts finish both their passes; otherwise the phase stops after the failed pass.
    assert world.done == dict.fromkeys(("node2", "node3"), 2 if independent else 1)
    assert {got[n].status for n in ("node2", "node3")} == {"changed"}
    assert [s.phase for s in next(h for h in report.hosts if h.name == "node1").steps].count("network") == 1


def test_switching_drivers_takes_the_old_one_away_first():
    from clusterctl.commands.swarm import leave_for_good

    world = World(cluster_id="C1", leader="node1", members={"node1": "manager", "node2": "manager", "node3": "worker"})
    world.overlay = {"Name": "clusterctl", "Driver": "overlay", "Scope": "swarm",
                     "Labels": {"clusterctl.cluster": "lab", "clusterctl.cidr": "10.240.0.0/16"},
                     "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.240.0.0/16"}]}}  # fmt: skip
    swarm_facts = {n: parse_probe_output(world.probe(n)) for n in ADDR}
    plan = plan_network(ctx(cluster_file("network: {driver: routed}\n"), **swarm_facts))
    for n in ADDR:
        assert plan.cmds[n][0] == leave_for_good(), n
        assert not any(c.argv[:3] == ("docker", "network", "rm") for c in plan.cmds[n])  # leaving removed it
        assert any(c.argv[:5] == ("docker", "network", "create", "-d", "bridge") for c in plan.cmds[n])
    assert plan.waves == {"node1": 1}  # the leader leaves last
    # The overlay itself never tears itself down; a converged routed cluster has nothing to leave.
    assert not any(c == leave_for_good() for c in plan_network(ctx(cluster_file(), **swarm_facts)).cmds.get("node2", []))
    # Containers on the old network: refused for that host, one line.
    busy = dict(world.overlay, Containers={"c1": {}})
    world.overlay = busy
    f2 = parse_probe_output(world.probe("node2"))
    plan = plan_network(ctx(cluster_file("network: {driver: routed}\n"), **{**swarm_facts, "node2": f2}))
    assert "1 container(s) use it; stop them first" in plan.errors["node2"] and "node2" not in plan.cmds


def test_a_running_bridge_cluster_moving_to_the_overlay_is_told_to_go_down_first():
    ours = {"Name": "clusterctl", "Driver": "bridge", "Id": "b", "Scope": "local",
            "IPAM": {"Config": [{"Subnet": "10.240.0.0/24", "Gateway": "10.240.0.1"}]},
            "Labels": {"clusterctl.cluster": "lab", "clusterctl.cidr": "10.240.0.0/16"}}  # fmt: skip
    with pytest.raises(PhaseError, match=r"this cluster's bridge network .*clusterctl down --yes"):
        plan_network(ctx(cluster_file(), node1=facts("node1", networks=[ours])))
