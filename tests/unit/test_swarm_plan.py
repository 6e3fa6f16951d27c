"""Swarm builders as exact strings, and plan_swarm on fresh/partial/converged/changed inputs."""

from __future__ import annotations

import shlex
import json
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from clusterctl.commands import swarm
from clusterctl.commands.base import Script
from clusterctl.commands.swarm import SwarmError
from clusterctl.network.drivers import overlay
from clusterctl.network.drivers.overlay import (
    JoinTokens,
    SwarmHost,
    SwarmHostFacts,
    SwarmNode,
    SwarmSettings,
    SwarmState,
    plan_swarm,
)
from clusterctl.network.facts import DockerNetwork

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"
SUBNET = IPv4Network("10.240.0.0/16")
SETTINGS = SwarmSettings(cluster="lab", network="clusterctl", subnet=SUBNET)
TOKENS = JoinTokens(worker="SWMTKN-1-abc123-worker456", manager="SWMTKN-1-abc123-manager789")
HOSTS = (
    SwarmHost("node1", "10.77.0.11", is_server=True),
    SwarmHost("node2", "10.77.0.12", is_server=True),
    SwarmHost("node3", "10.77.0.13", is_server=False, labels={"zone": "a"}),
)
JOIN = shlex.join(["sh", "-c", swarm.JOIN, "sh"])
OVERLAY = DockerNetwork(name="clusterctl", driver="overlay", scope="swarm", subnets=(SUBNET,))


def render(cmds):
    return [c.render() for c in cmds]


def display(cmds):
    return [c.display() for c in cmds]


def sent(cmd) -> bytes:
    out: list[bytes] = []
    cmd.stdin.write_to(out.append)
    return b"".join(out)


def state(kind: str, node_id: str = "", cluster: str = "", remotes=()) -> SwarmState:
    if kind == "inactive":
        return SwarmState()
    if kind == "manager":
        return SwarmState("active", node_id, control_available=True, cluster_id=cluster)
    return SwarmState(kind, node_id, remote_managers=tuple(overlay.RemoteManager(i, a) for i, a in remotes))


def node(node_id: str, host: str, role: str = "worker", labels=None, **kw) -> SwarmNode:
    return SwarmNode(node_id, hostname=host, role=role, labels=labels if labels is not None else {}, **kw)


LABELS = {
    "node1": {"clusterctl.host": "node1"},
    "node2": {"clusterctl.host": "node2"},
    "node3": {"clusterctl.host": "node3", "zone": "a"},
}


def converged(extra_nodes=()):
    nodes = (
        node("id1", "node1", "manager", LABELS["node1"], manager_status="leader"),
        node("id2", "node2", "manager", LABELS["node2"], manager_status="reachable"),
        node("id3", "node3", "worker", LABELS["node3"]),
        *extra_nodes,
    )
    return {
        "node1": SwarmHostFacts(state("manager", "id1", "C1"), nodes=nodes, networks=(OVERLAY,)),
        "node2": SwarmHostFacts(state("manager", "id2", "C1"), nodes=nodes),
        "node3": SwarmHostFacts(state("active", "id3", remotes=[("id1", "10.77.0.11:2377")])),
    }


# ---------------------------------------------------------------------------------------------
# Builders


def test_builders_render_exactly():
    assert swarm.init("10.77.0.11").render() == (
        "docker swarm init --advertise-addr 10.77.0.11 --listen-addr 10.77.0.11:2377"
    )
    assert swarm.init("10.77.0.11", default_addr_pool=["10.250.0.0/16"], default_addr_pool_mask_length=26).render() == (
        "docker swarm init --advertise-addr 10.77.0.11 --listen-addr 10.77.0.11:2377 "
        "--default-addr-pool 10.250.0.0/16 --default-addr-pool-mask-length 26"
    )
    joined = swarm.join("SWMTKN-1-a-b", "10.77.0.11", "10.77.0.12")
    assert joined.render() == f"{JOIN} --advertise-addr 10.77.0.12 --listen-addr 10.77.0.12:2377 10.77.0.11:2377"
    assert joined.display().endswith("# stdin: worker token, not shown")
    assert "SWMTKN" not in joined.display() + repr(joined)
    sent = []
    joined.stdin.write_to(sent.append)
    assert sent == [b"SWMTKN-1-a-b\n"]
    assert swarm.join(swarm.TokenInput("worker token of node1"), "fd00::1", "fd00::2").display() == (
        f"{JOIN} --advertise-addr fd00::2 --listen-addr '[fd00::2]:2377' '[fd00::1]:2377'"
        "  # stdin: <worker token of node1>"
    )
    assert swarm.leave().render() == "docker swarm leave --force"
    assert swarm.node_rm(["abc", "def"]).render() == "docker node rm --force abc def"
    assert swarm.node_promote(["abc"]).render() == "docker node promote abc"
    assert swarm.node_demote(["abc"]).render() == "docker node demote abc"
    assert swarm.node_update_labels("abc", {"zone": "a b", "clusterctl.host": "n1"}).render() == (
        "docker node update --label-add clusterctl.host=n1 --label-add 'zone=a b' abc"
    )
    assert swarm.network_create_overlay("clusterctl", SUBNET, "lab").render() == (
        "docker network create -d overlay --attachable --subnet 10.240.0.0/16 "
        "--label clusterctl.cluster=lab --label clusterctl.cidr=10.240.0.0/16 clusterctl"
    )
    assert swarm.read_join_tokens().argv[:2] == ("sh", "-c")
    with pytest.raises(ValueError):
        swarm.node_rm(["id; reboot"])
    with pytest.raises(ValueError):
        swarm.init("10.77.0.11", default_addr_pool_mask_length=24)


def test_join_tokens_parse_and_stay_secret():
    tokens = overlay.parse_join_tokens("SWMTKN-1-abc-w1\nSWMTKN-1-abc-m1\n")
    assert tokens == JoinTokens("SWMTKN-1-abc-w1", "SWMTKN-1-abc-m1")
    assert "SWMTKN" not in repr(tokens)
    with pytest.raises(SwarmError):
        overlay.parse_join_tokens("Error response from daemon: This node is not a swarm manager.")


def test_state_and_nodes_from_docker_json():
    info = json.loads(FIXTURE.read_text())["docker"]["info"]
    assert SwarmState.from_info(info) == SwarmState()
    manager = SwarmState.from_info(
        {
            "Swarm": {
                "NodeID": "id1", "NodeAddr": "10.77.0.11", "LocalNodeState": "active", "ControlAvailable": True,
                "Error": "", "RemoteManagers": [{"NodeID": "id1", "Addr": "10.77.0.11:2377"}],
                "Cluster": {"ID": "C1"},
            }
        }
    )
    assert manager.is_manager and manager.cluster_id == "C1" and manager.remote_managers[0].host == "10.77.0.11"
    n = SwarmNode.from_inspect(
        {
            "ID": "id1",
            "Description": {"Hostname": "node1"},
            "Spec": {"Role": "manager", "Availability": "active", "Labels": {"zone": "a"}},
            "Status": {"State": "ready", "Addr": "10.77.0.11"},
            "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": "10.77.0.11:2377"},
        }
    )
    assert (n.id, n.hostname, n.role, n.manager_status, n.labels) == ("id1", "node1", "manager", "leader", {"zone": "a"})


# ---------------------------------------------------------------------------------------------
# Planner


def fresh_facts():
    return {h.name: SwarmHostFacts(SwarmState()) for h in HOSTS}


def label_self(host: str) -> str:
    return shlex.join(["sh", "-c", swarm.LABEL_SELF, "sh", "--label-add", f"clusterctl.host={host}"])


def test_fresh_cluster_dry_run_renders_with_placeholder_tokens():
    plan = plan_swarm(HOSTS, fresh_facts(), SETTINGS)
    assert plan.leader == "node1" and plan.needs_tokens and not plan.errors
    assert [[s.host for s in wave] for wave in plan.waves] == [["node1"], ["node2", "node3"]]
    assert render(plan.cmds("node1")) == [
        "docker swarm init --advertise-addr 10.77.0.11 --listen-addr 10.77.0.11:2377",
        "docker network create -d overlay --attachable --subnet 10.240.0.0/16 "
        "--label clusterctl.cluster=lab --label clusterctl.cidr=10.240.0.0/16 clusterctl",
        label_self("node1"),
    ]
    # A manager that joins labels its own node; a worker's node the leader labels, next pass.
    assert display(plan.cmds("node2")) == [
        f"{JOIN} --advertise-addr 10.77.0.12 --listen-addr 10.77.0.12:2377 10.77.0.11:2377"
        "  # stdin: <manager token of node1>",
        label_self("node2"),
    ]
    assert display(plan.cmds("node3")) == [
        f"{JOIN} --advertise-addr 10.77.0.13 --listen-addr 10.77.0.13:2377 10.77.0.11:2377"
        "  # stdin: <worker token of node1>"
    ]
    # A placeholder cannot be sent: a real run must read the tokens and plan again first.
    with pytest.raises(SwarmError, match="read the join tokens"):
        plan.cmds("node3")[0].stdin.write_to(lambda data: None)
    for host in ("node2", "node3"):
        Script(tuple(plan.cmds(host)))  # one stdin per host script


def test_fresh_cluster_with_tokens_joins_for_real():
    plan = plan_swarm(HOSTS, fresh_facts(), SETTINGS, tokens=TOKENS)
    assert not plan.needs_tokens
    assert sent(plan.cmds("node2")[0]) == b"SWMTKN-1-abc123-manager789\n"
    assert sent(plan.cmds("node3")[0]) == b"SWMTKN-1-abc123-worker456\n"
    for host in ("node1", "node2", "node3"):
        assert all("SWMTKN" not in c.display() for c in plan.cmds(host))


def test_default_address_pool_goes_to_init():
    settings = SwarmSettings("lab", "clusterctl", SUBNET, default_addr_pool=("10.250.0.0/16",))
    plan = plan_swarm(HOSTS, fresh_facts(), settings)
    assert "--default-addr-pool 10.250.0.0/16" in plan.cmds("node1")[0].render()


def test_partial_after_init_joins_the_rest_and_labels_the_leader():
    nodes = (node("id1", "node1", "manager", {}, manager_status="leader"),)
    facts = fresh_facts()
    facts["node1"] = SwarmHostFacts(state("manager", "id1", "C1"), nodes=nodes, networks=(OVERLAY,))
    plan = plan_swarm(HOSTS, facts, SETTINGS, tokens=TOKENS)
    assert render(plan.cmds("node1")) == ["docker node update --label-add clusterctl.host=node1 id1"]
    assert [s.host for s in plan.waves[1]] == ["node2", "node3"]
    assert not plan.needs_tokens


def test_converged_cluster_plans_nothing():
    plan = plan_swarm(HOSTS, converged(), SETTINGS)
    assert plan.empty and plan.waves == () and not plan.errors and not plan.needs_tokens
    assert plan.leader == "node1"


def test_added_host_only_joins():
    hosts = (*HOSTS, SwarmHost("node4", "10.77.0.14", is_server=False))
    facts = converged()
    facts["node4"] = SwarmHostFacts(SwarmState())
    plan = plan_swarm(hosts, facts, SETTINGS)
    assert [[s.host for s in w] for w in plan.waves] == [["node4"]]
    assert plan.needs_tokens
    assert display(plan.cmds("node4")) == [
        f"{JOIN} --advertise-addr 10.77.0.14 --listen-addr 10.77.0.14:2377 10.77.0.11:2377"
        "  # stdin: <worker token of node1>"
    ]


def test_removed_hosts_are_removed_from_the_leader():
    stale = (
        node("id4", "node4", "worker", {"clusterctl.host": "node4"}, status="down"),
        node("id5", "node5", "manager", {"clusterctl.host": "node5"}, manager_status="unreachable"),
        node("id6", "old", "worker", {}),
    )
    plan = plan_swarm(HOSTS, converged(stale), SETTINGS)
    assert render(plan.cmds("node1")) == ["docker node demote id5", "docker node rm --force id4 id5 id6"]
    assert len(plan.waves) == 1


def test_a_silent_inventory_host_keeps_its_node():
    facts = converged()
    del facts["node3"]
    plan = plan_swarm(HOSTS, facts, SETTINGS)
    assert plan.empty


def test_rejoined_host_drops_its_old_node():
    old = node("id3old", "node3", "worker", {"clusterctl.host": "node3"}, status="down")
    plan = plan_swarm(HOSTS, converged((old,)), SETTINGS)
    assert render(plan.cmds("node1")) == ["docker node rm --force id3old"]


def test_host_in_another_swarm_is_an_error_for_that_host_only():
    facts = converged()
    facts["node3"] = SwarmHostFacts(state("active", "idX", remotes=[("mX", "192.0.2.1:2377")]))
    plan = plan_swarm(HOSTS, facts, SETTINGS)
    assert "another swarm (192.0.2.1:2377)" in plan.errors["node3"]
    assert "\n" not in plan.errors["node3"]
    # node3's old node entry (id3) is now stale: node3 answered with another node id.
    assert render(plan.cmds("node1")) == ["docker node rm --force id3"]


def test_fresh_init_refuses_hosts_of_foreign_swarms():
    facts = fresh_facts()
    facts["node3"] = SwarmHostFacts(state("active", "idX", remotes=[("mX", "192.0.2.1:2377")]))
    plan = plan_swarm(HOSTS, facts, SETTINGS)
    assert "node3" in plan.errors and [s.host for s in plan.waves[1]] == ["node2"]


def test_orphaned_worker_leaves_and_joins_again():
    facts = converged()
    facts["node3"] = SwarmHostFacts(state("active", "id3new", remotes=[("id1", "10.77.0.11:2377")]))
    plan = plan_swarm(HOSTS, facts, SETTINGS, tokens=TOKENS)
    assert render(plan.cmds("node3")) == [
        "docker swarm leave --force",
        f"{JOIN} --advertise-addr 10.77.0.13 --listen-addr 10.77.0.13:2377 10.77.0.11:2377",
    ]
    assert sent(plan.cmds("node3")[1]) == b"SWMTKN-1-abc123-worker456\n"


def test_pending_or_error_state_leaves_first():
    facts = converged()
    facts["node3"] = SwarmHostFacts(SwarmState("error", "id3", error="rpc error"))
    plan = plan_swarm(HOSTS, facts, SETTINGS, tokens=TOKENS)
    assert [c.description for c in plan.cmds("node3")] == ["leave the swarm", "join the swarm as a worker"]


def test_locked_node_is_refused():
    facts = converged()
    facts["node2"] = SwarmHostFacts(SwarmState("locked", "id2"))
    plan = plan_swarm(HOSTS, facts, SETTINGS)
    assert "unlock" in plan.errors["node2"]


def test_role_changes_promote_and_demote():
    hosts = (HOSTS[0], SwarmHost("node2", "10.77.0.12", is_server=False), SwarmHost("node3", "10.77.0.13", True, {"zone": "a"}))
    plan = plan_swarm(hosts, converged(), SETTINGS)
    assert render(plan.cmds("node1")) == ["docker node promote id3", "docker node demote id2"]


def test_a_conflicting_local_network_is_refused():
    facts = converged()
    bridge = DockerNetwork(name="clusterctl", driver="bridge", subnets=(IPv4Network("10.240.1.0/24"),))
    facts["node3"] = SwarmHostFacts(facts["node3"].swarm, networks=(bridge,))
    assert "bridge network named 'clusterctl'" in plan_swarm(HOSTS, facts, SETTINGS).errors["node3"]
    facts = converged()
    facts["node1"] = SwarmHostFacts(facts["node1"].swarm, nodes=facts["node1"].nodes, networks=(bridge,))
    with pytest.raises(SwarmError, match="not overlay 10.240.0.0/16"):
        plan_swarm(HOSTS, facts, SETTINGS)


def test_cluster_wide_refusals():
    with pytest.raises(SwarmError, match="at least one server"):
        plan_swarm([SwarmHost("c", "10.77.0.13", False)], {"c": SwarmHostFacts(SwarmState())}, SETTINGS)
    facts = converged()
    facts["node2"] = SwarmHostFacts(state("manager", "id2", "C2"), nodes=())
    with pytest.raises(SwarmError, match="different swarms"):
        plan_swarm(HOSTS, facts, SETTINGS)
    facts = fresh_facts()
    del facts["node2"]
    with pytest.raises(SwarmError, match="node2 did not answer"):
        plan_swarm(HOSTS, facts, SETTINGS)
    facts = converged()
    facts["node1"] = SwarmHostFacts(facts["node1"].swarm, nodes=None, networks=(OVERLAY,))
    facts["node2"] = SwarmHostFacts(facts["node2"].swarm, nodes=None)
    with pytest.raises(SwarmError, match="did not list"):
        plan_swarm(HOSTS, facts, SETTINGS)


def test_workers_of_our_silent_managers_block_a_new_init():
    facts = {
        "node1": SwarmHostFacts(SwarmState()),
        "node2": SwarmHostFacts(SwarmState()),
        "node3": SwarmHostFacts(state("active", "id3", remotes=[("id1", "10.77.0.11:2377")])),
    }
    with pytest.raises(SwarmError, match="did not answer as managers"):
        plan_swarm(HOSTS, facts, SETTINGS)


def test_second_run_after_applying_is_idempotent():
    """Simulate: fresh plan, then the facts the cluster would report, then plan again."""
    first = plan_swarm(HOSTS, fresh_facts(), SETTINGS, tokens=TOKENS)
    assert not first.empty
    second = plan_swarm(HOSTS, converged(), SETTINGS, tokens=TOKENS)
    assert second.empty


def test_a_join_keeps_the_token_off_every_command_line():
    """The token goes from stdin to the Engine API through printf (a shell builtin) and
    `docker system dial-stdio`: no exec'd process gets it in its argv (`ps` on the host)."""
    cmd = swarm.join(swarm.TokenInput("worker token", "SWMTKN-1-abc-def"), "10.77.0.11", "10.77.0.12")
    assert "docker swarm join" not in swarm.JOIN and "docker system dial-stdio" in swarm.JOIN
    assert "SWMTKN-1-abc" not in cmd.render() and "SWMTKN-1-abc" not in cmd.display()
    # Every use of $token is an argument of the printf builtin, never of a program.
    before_each = swarm.JOIN.split('"$token"')[:-1]
    assert len(before_each) == 2
    assert before_each[0].endswith("case ") and before_each[1].rsplit("$(", 1)[1].startswith("printf ")


def _run_join(tmp_path, answer: str, states: list[str]):
    """JOIN run by sh against a stand-in `docker`: dial-stdio prints `answer`, `docker info`
    prints `states` in turn (the last one again after)."""
    import subprocess

    (tmp_path / "states").write_text("\n".join(states) + "\n")
    fake = tmp_path / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        f"'system dial-stdio') cat >/dev/null; printf '%s' {shlex.quote(answer)} ;;\n"
        f"info*) f={tmp_path}/states; head -n 1 \"$f\"; [ \"$(wc -l <\"$f\")\" -gt 1 ] && sed -i 1d \"$f\" ;;\n"
        "esac\n"
    )
    fake.chmod(0o755)
    cmd = swarm.join(swarm.TokenInput("worker token", "SWMTKN-1-abc-def"), "10.77.0.11", "10.77.0.12")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    return subprocess.run(cmd.argv, input="SWMTKN-1-abc-def\n", capture_output=True, text=True, env=env, timeout=30)


def test_a_join_the_engine_goes_on_with_in_the_background_is_waited_for(tmp_path):
    # Docker gives up waiting after 20 s (a busy manager) while the node goes on joining.
    late = "HTTP/1.1 503 Service Unavailable\r\n\r\n" + '{"message":"Timeout was reached before node joined. The attempt to join the swarm will continue in the background."}'
    done = _run_join(tmp_path, late, ["pending", "active"])
    assert done.returncode == 0, done.stderr
    failed = _run_join(tmp_path, late, ["pending", "error"])
    assert failed.returncode == 1 and "swarm join still error" in failed.stderr
    refused = _run_join(tmp_path, "HTTP/1.1 400 Bad Request\r\n\r\n" + '{"message":"invalid join token"}', ["inactive"])
    assert refused.returncode == 1 and "swarm join refused" in refused.stderr and "invalid join token" in refused.stderr
    ok = _run_join(tmp_path, "HTTP/1.1 200 OK\r\n\r\n", ["inactive"])
    assert ok.returncode == 0, ok.stderr


def _read_tokens(tmp_path, answer: str):
    """READ_JOIN_TOKENS run by sh against a stand-in `docker` whose dial-stdio prints `answer`
    (and keeps the request it was sent)."""
    import subprocess

    fake = tmp_path / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        f"[ \"$1 $2\" = 'system dial-stdio' ] || exit 9\ncat >{tmp_path}/request; printf '%s' {shlex.quote(answer)}\n"
    )
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    return subprocess.run(swarm.read_join_tokens().argv, capture_output=True, text=True, env=env, timeout=30)


def test_join_tokens_are_read_with_one_api_request(tmp_path):
    body = json.dumps({"ID": "abc", "Spec": {"Name": "default"}, "JoinTokens": {"Worker": "SWMTKN-1-abc-w1", "Manager": "SWMTKN-1-abc-m1"}})
    read = _read_tokens(tmp_path, "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body + "\n")
    assert read.returncode == 0, read.stderr
    assert overlay.parse_join_tokens(read.stdout) == JoinTokens("SWMTKN-1-abc-w1", "SWMTKN-1-abc-m1")
    # HTTP/1.0: the engine sends the body whole (no chunks to cut a token in two).
    assert (tmp_path / "request").read_bytes().startswith(b"GET /swarm HTTP/1.0\r\n")
    refused = _read_tokens(tmp_path, "HTTP/1.0 503 Service Unavailable\r\n\r\n" + '{"message":"This node is not a swarm manager."}')
    assert refused.returncode == 1 and "503 Service Unavailable" in refused.stderr and not refused.stdout
    odd = _read_tokens(tmp_path, "HTTP/1.0 200 OK\r\n\r\n" + '{"JoinTokens":{"Worker":"SWMTKN-1-abc-w1"}}')
    assert odd.returncode == 1 and "no Manager join token" in odd.stderr
