"""Routed builders as exact strings, and plan_routed on fresh/partial/converged/changed inputs."""

from __future__ import annotations

import shlex
from ipaddress import IPv4Address, IPv4Network, ip_interface

import pytest

from clusterctl.commands import routed
from clusterctl.facts.parser import Address
from clusterctl.network.drivers.routed import RoutedHost, RoutedHostFacts, RoutedSettings, plan_routed
from clusterctl.network.facts import DockerNetwork, Route, network_from_inspect, parse_route, parse_routes, parse_rules
from clusterctl.network.subnets import SubnetError

CIDR = IPv4Network("10.240.0.0/16")
SETTINGS = RoutedSettings(cluster="lab", network="clusterctl")
HOSTS = (RoutedHost("node1", "10.77.0.11"), RoutedHost("node2", "10.77.0.12"), RoutedHost("node3", "10.77.0.13"))
SUB = {f"node{i}": IPv4Network(f"10.240.{i - 1}.0/24") for i in (1, 2, 3, 4)}
ADDR = {f"node{i}": f"10.77.0.1{i}" for i in (1, 2, 3, 4)}


def render(cmds):
    return [c.render() for c in cmds]


def addresses(name: str, with_bridge: bool = False):
    out = [
        Address("lo", ip_interface("127.0.0.1/8")),
        Address("eth0", ip_interface(f"{ADDR[name]}/24")),
        Address("docker0", ip_interface("172.17.0.1/16")),
    ]
    if with_bridge:
        out.append(Address("br-clusterctl", ip_interface(f"{next(SUB[name].hosts())}/24")))
    return tuple(out)


BASE_ROUTES = ["default via 10.77.0.1 dev eth0", "10.77.0.0/24 dev eth0 proto kernel scope link src 10.77.0.11"]


def our_network(name: str, containers: int = 0) -> DockerNetwork:
    return DockerNetwork(
        name="clusterctl",
        driver="bridge",
        subnets=(SUB[name],),
        gateways=(next(SUB[name].hosts()),),
        options={"com.docker.network.bridge.name": "br-clusterctl"},
        labels={"clusterctl.cluster": "lab", "clusterctl.cidr": str(CIDR)},
        containers=containers,
    )


def fresh(name: str, version: str = "20.10.24+dfsg1") -> RoutedHostFacts:
    return RoutedHostFacts(
        addresses=addresses(name),
        routes=parse_routes(BASE_ROUTES),
        networks=(),
        docker_version=version,
        docker_user_rules=parse_rules("-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n"),
        nat_postrouting_rules=("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",),
    )


def converged(name: str, peers=("node1", "node2", "node3")) -> RoutedHostFacts:
    routes = BASE_ROUTES + [f"{SUB[name]} dev br-clusterctl proto kernel scope link src {next(SUB[name].hosts())}"]
    routes += [f"{SUB[o]} via {ADDR[o]} dev eth0" for o in peers if o != name]
    return RoutedHostFacts(
        addresses=addresses(name, with_bridge=True),
        routes=parse_routes(routes),
        networks=(our_network(name),),
        docker_version="20.10.24+dfsg1",
        docker_user_rules=(routed.accept_rule(CIDR), "-A DOCKER-USER -j RETURN"),
        nat_postrouting_rules=(routed.return_rule(CIDR), "-A POSTROUTING -s 10.240.0.0/24 ! -o br-clusterctl -j MASQUERADE"),
    )


# ---------------------------------------------------------------------------------------------
# Builders and parsers


def test_builders_render_exactly():
    gw = IPv4Address("10.240.0.1")
    assert routed.network_create_bridge(
        "clusterctl", SUB["node1"], gw, bridge="br-clusterctl", cluster="lab", cidr=CIDR
    ).render() == (
        "docker network create -d bridge --subnet 10.240.0.0/24 --gateway 10.240.0.1 "
        "-o com.docker.network.bridge.name=br-clusterctl "
        "--label clusterctl.cluster=lab --label clusterctl.cidr=10.240.0.0/16 clusterctl"
    )
    assert routed.network_create_bridge(
        "clusterctl", SUB["node1"], gw, bridge="br-clusterctl", cluster="lab", cidr=CIDR, gateway_mode="nat-unprotected"
    ).render() == (
        "docker network create -d bridge --subnet 10.240.0.0/24 --gateway 10.240.0.1 "
        "-o com.docker.network.bridge.name=br-clusterctl -o com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected "
        "--label clusterctl.cluster=lab --label clusterctl.cidr=10.240.0.0/16 clusterctl"
    )
    assert routed.network_rm("clusterctl").render() == "docker network rm clusterctl"
    assert routed.route_replace(SUB["node2"], IPv4Address("10.77.0.12")).render() == (
        "ip route replace 10.240.1.0/24 via 10.77.0.12"
    )
    assert routed.route_del(SUB["node2"], IPv4Address("10.77.0.12")).render() == (
        "ip route del 10.240.1.0/24 via 10.77.0.12 || true"
    )
    assert routed.accept_forward(CIDR).render() == (
        "sh -c 'iptables -w -C DOCKER-USER -s \"$1\" -d \"$1\" -j ACCEPT 2>/dev/null || "
        "iptables -w -I DOCKER-USER -s \"$1\" -d \"$1\" -j ACCEPT' sh 10.240.0.0/16"
    )
    keep = routed.keep_source_first(CIDR)
    assert keep.argv[-2:] == ("sh", "10.240.0.0/16")
    assert "iptables -w -t nat -I POSTROUTING 1 -s \"$1\" -d \"$1\" -j RETURN" in keep.argv[2]
    # The CIDR only ever travels as $1.
    assert "10.240" not in keep.argv[2]
    assert routed.bridge_name("clusterctl") == "br-clusterctl"
    assert routed.bridge_name("a.very.long.network-name") == "br-a-very-long-"
    assert len(routed.bridge_name("x" * 63)) == 15


def test_parsers():
    assert parse_route("10.240.1.0/24 via 10.77.0.12 dev eth0") == Route(
        SUB["node2"], IPv4Address("10.77.0.12"), "eth0", None
    )
    assert parse_route("default via 10.77.0.1 dev eth0 proto dhcp").dest is None
    assert parse_route("blackhole 10.9.0.0/16") is None
    assert parse_route("") is None
    assert parse_rules("-P POSTROUTING ACCEPT\n-A POSTROUTING -j X\n") == ("-A POSTROUTING -j X",)
    net = network_from_inspect(
        {
            "Name": "clusterctl", "Id": "abc", "Driver": "bridge", "Scope": "local",
            "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.240.0.0/24", "Gateway": "10.240.0.1"},
                                                     {"Subnet": "fd00::/64"}]},
            "Options": {"com.docker.network.bridge.name": "br-clusterctl"},
            "Labels": {"clusterctl.cluster": "lab"}, "Containers": {"x": {}, "y": {}},
        }
    )
    assert net.subnets == (SUB["node1"],) and net.gateways == (IPv4Address("10.240.0.1"),) and net.containers == 2


# ---------------------------------------------------------------------------------------------
# Planner


def test_fresh_cluster_creates_networks_rules_and_routes():
    plan = plan_routed(HOSTS, {h.name: fresh(h.name) for h in HOSTS}, SETTINGS)
    assert plan.cidr == CIDR and not plan.errors
    assert dict(plan.subnets) == {n: SUB[n] for n in ("node1", "node2", "node3")}
    cmds = render(plan.cmds["node1"])
    assert cmds[0] == (
        "docker network create -d bridge --subnet 10.240.0.0/24 --gateway 10.240.0.1 "
        "-o com.docker.network.bridge.name=br-clusterctl "
        "--label clusterctl.cluster=lab --label clusterctl.cidr=10.240.0.0/16 clusterctl"
    )
    assert cmds[1:3] == [routed.accept_forward(CIDR).render(), routed.keep_source_first(CIDR).render()]
    assert cmds[3:] == ["ip route replace 10.240.1.0/24 via 10.77.0.12", "ip route replace 10.240.2.0/24 via 10.77.0.13"]
    assert render(plan.cmds["node3"])[3:] == [
        "ip route replace 10.240.0.0/24 via 10.77.0.11",
        "ip route replace 10.240.1.0/24 via 10.77.0.12",
    ]


def test_converged_cluster_plans_nothing():
    plan = plan_routed(HOSTS, {h.name: converged(h.name) for h in HOSTS}, SETTINGS)
    assert plan.empty and not plan.errors
    assert dict(plan.subnets) == {n: SUB[n] for n in ("node1", "node2", "node3")}


def test_partial_cluster_completes_only_what_is_missing():
    facts = {h.name: converged(h.name) for h in HOSTS}
    f = facts["node2"]
    facts["node2"] = RoutedHostFacts(
        f.addresses,
        parse_routes(BASE_ROUTES + [f"{SUB['node1']} via 10.77.0.11 dev eth0"]),
        f.networks,
        f.docker_version,
        docker_user_rules=("-A DOCKER-USER -j RETURN",),
        # Docker put its MASQUERADE above ours after a restart: ours must move back to the top.
        nat_postrouting_rules=("-A POSTROUTING -s 10.240.1.0/24 ! -o br-clusterctl -j MASQUERADE", routed.return_rule(CIDR)),
    )
    plan = plan_routed(HOSTS, facts, SETTINGS)
    assert render(plan.cmds["node2"]) == [
        routed.accept_forward(CIDR).render(),
        routed.keep_source_first(CIDR).render(),
        "ip route replace 10.240.2.0/24 via 10.77.0.13",
    ]
    assert plan.cmds["node1"] == () and plan.cmds["node3"] == ()


def test_added_host_gets_the_next_subnet_and_everyone_routes_to_it():
    hosts = (*HOSTS, RoutedHost("node4", "10.77.0.14"))
    facts = {h.name: converged(h.name) for h in HOSTS}
    facts["node4"] = fresh("node4")
    plan = plan_routed(hosts, facts, SETTINGS)
    assert plan.subnets["node4"] == SUB["node4"]
    for n in ("node1", "node2", "node3"):
        assert render(plan.cmds[n]) == ["ip route replace 10.240.3.0/24 via 10.77.0.14"]
    assert render(plan.cmds["node4"])[3:] == [
        "ip route replace 10.240.0.0/24 via 10.77.0.11",
        "ip route replace 10.240.1.0/24 via 10.77.0.12",
        "ip route replace 10.240.2.0/24 via 10.77.0.13",
    ]


def test_removed_host_loses_its_routes_and_nobody_moves():
    everyone = ("node1", "node2", "node3", "node4")
    facts = {n: converged(n, everyone) for n in ("node1", "node2", "node3")}
    plan = plan_routed(HOSTS, facts, SETTINGS)
    for n in ("node1", "node2", "node3"):
        assert render(plan.cmds[n]) == ["ip route del 10.240.3.0/24 via 10.77.0.14 || true"]
    assert dict(plan.subnets) == {n: SUB[n] for n in ("node1", "node2", "node3")}
    # Removing the first host does not move the others either.
    facts = {n: converged(n) for n in ("node2", "node3")}
    plan = plan_routed(HOSTS[1:], facts, SETTINGS)
    assert dict(plan.subnets) == {"node2": SUB["node2"], "node3": SUB["node3"]}
    assert render(plan.cmds["node2"]) == ["ip route del 10.240.0.0/24 via 10.77.0.11 || true"]


def test_a_silent_host_keeps_its_subnet_and_routes():
    facts = {n: converged(n) for n in ("node2", "node3")}
    plan = plan_routed(HOSTS, facts, SETTINGS)
    assert plan.empty and plan.subnets["node1"] == SUB["node1"]
    assert "node1" not in plan.cmds


def test_docker_28_gets_an_unprotected_gateway_mode_and_old_networks_are_recreated():
    facts = {h.name: converged(h.name) for h in HOSTS}
    f = facts["node1"]
    facts["node1"] = RoutedHostFacts(f.addresses, f.routes, f.networks, "28.0.1", f.docker_user_rules, f.nat_postrouting_rules)
    plan = plan_routed(HOSTS, facts, SETTINGS)
    cmds = render(plan.cmds["node1"])
    assert cmds[0] == "docker network rm clusterctl"
    assert "-o com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected" in cmds[1]
    # ...but not while containers use the network.
    facts["node1"] = RoutedHostFacts(
        f.addresses, f.routes, (our_network("node1", containers=2),), "28.0.1", f.docker_user_rules, f.nat_postrouting_rules
    )
    plan = plan_routed(HOSTS, facts, SETTINGS)
    assert "2 container(s)" in plan.errors["node1"] and "node1" not in plan.cmds


def test_unknown_iptables_state_plans_the_guarded_commands():
    facts = {h.name: converged(h.name) for h in HOSTS}
    f = facts["node1"]
    facts["node1"] = RoutedHostFacts(f.addresses, f.routes, f.networks, f.docker_version)
    plan = plan_routed(HOSTS, facts, SETTINGS)
    assert render(plan.cmds["node1"]) == [routed.accept_forward(CIDR).render(), routed.keep_source_first(CIDR).render()]


def test_cidr_comes_from_config_labels_or_a_free_default():
    avoid_default = fresh("node1")
    busy = RoutedHostFacts(
        avoid_default.addresses + (Address("wg0", ip_interface("10.240.9.1/24")),),
        avoid_default.routes, (), avoid_default.docker_version,
    )
    plan = plan_routed(HOSTS[:1], {"node1": busy}, SETTINGS)
    assert plan.cidr == IPv4Network("10.241.0.0/16")
    configured = RoutedSettings("lab", "clusterctl", cidr=IPv4Network("192.168.100.0/22"), host_prefix=26)
    plan = plan_routed(HOSTS, {h.name: fresh(h.name) for h in HOSTS}, configured)
    assert plan.subnets["node3"] == IPv4Network("192.168.100.128/26")
    with pytest.raises(SubnetError, match="overlaps 10.240.9.0/24"):
        plan_routed(HOSTS[:1], {"node1": busy}, RoutedSettings("lab", "clusterctl", cidr=CIDR))


def test_changing_the_cidr_moves_networks_and_routes():
    new = RoutedSettings("lab", "clusterctl", cidr=IPv4Network("10.250.0.0/16"))
    plan = plan_routed(HOSTS, {h.name: converged(h.name) for h in HOSTS}, new)
    cmds = render(plan.cmds["node1"])
    assert cmds[0] == "docker network rm clusterctl"
    assert "--subnet 10.250.0.0/24" in cmds[1]
    assert "ip route del 10.240.1.0/24 via 10.77.0.12 || true" in cmds
    assert cmds[-2:] == ["ip route replace 10.250.1.0/24 via 10.77.0.12", "ip route replace 10.250.2.0/24 via 10.77.0.13"]


def test_hosts_off_the_segment_and_ipv6_addresses_are_refused_per_host():
    hosts = (*HOSTS[:2], RoutedHost("far", "192.0.2.7"), RoutedHost("v6", "fd00::7"))
    facts = {h.name: fresh(h.name) for h in HOSTS[:2]}
    facts["far"] = RoutedHostFacts((Address("eth0", ip_interface("192.0.2.7/24")),), (), (), "20.10.24")
    plan = plan_routed(hosts, facts, SETTINGS)
    assert "far not on a network of this host" in plan.errors["node1"]
    assert "IPv4" in plan.errors["v6"]
    assert all("\n" not in e for e in plan.errors.values())


def test_every_rendered_command_splits_back_to_its_argv():
    plan = plan_routed(HOSTS, {h.name: fresh(h.name, "28.1.0") for h in HOSTS}, SETTINGS)
    for cmds in plan.cmds.values():
        for c in cmds:
            assert shlex.split(c.render().removesuffix(" || true")) == list(c.argv)
