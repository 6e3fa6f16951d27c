"""The wireguard driver's plans, from probe JSON as the hosts would print it: fresh hosts, keys
made in one pass and peers in the next, a converged mesh planning nothing, endpoints across
providers, a host that cannot have WireGuard, a host that did not answer, and teardown."""

from __future__ import annotations

import copy
import json
from ipaddress import ip_address, ip_network
from pathlib import Path

from clusterctl.commands import wireguard as wg
from clusterctl.commands.files import sha256
from clusterctl.config.loader import load_text
from clusterctl.facts.parser import parse_probe_output
from clusterctl.network.drivers.wireguard import WireguardDriver, endpoint_for, parse_facts
from clusterctl.phases.base import Context, PlanError
from clusterctl.phases.down import NetworkDown
from clusterctl.phases.network import NetworkPhase, plan_network

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"
ADDR = {"node1": "10.77.0.11", "node2": "10.77.0.12", "node3": "10.77.0.13"}
PUBLIC = {"node1": "203.0.113.1", "node2": "203.0.113.2", "node3": "203.0.113.3"}
CIDR = ip_network("10.240.0.0/16")
SUB = {"node1": ip_network("10.240.0.0/24"), "node2": ip_network("10.240.1.0/24"), "node3": ip_network("10.240.2.0/24")}
KEYS = {n: f"{n.upper()}PUBLICKEY{'A' * 30}=" for n in ADDR}
IFACE = "wg-clusterctl"
NOW = 1_800_000_000


def cluster(extra_host: dict | None = None, network: str = "network: {driver: wireguard, subnet: 10.240.0.0/16}\n"):
    lines = ["name: lab", "hosts:"]
    for h in ADDR:
        fields = {"name": h, "address": PUBLIC[h], "cluster_address": ADDR[h], **(extra_host or {}).get(h, {})}
        lines.append("  - " + json.dumps(fields))
    return load_text(("\n".join(lines) + "\n" + network + "consul: {enabled: false}\n"), "cluster.yaml")


def probe(name: str, *, wireguard: dict | None = None, apt: bool = True, networks=(), addresses=(), routes=(), files=None, rules=True):
    data = json.loads(FIXTURE.read_text())
    ip = ADDR[name]
    data["hostname"], data["apt"] = name, apt
    data["ssh_connection"] = f"10.77.0.1 5555 {ip} 22"
    data["addresses"] = [
        {"ifname": "lo", "family": "inet", "cidr": "127.0.0.1/8"},
        {"ifname": "eth0", "family": "inet", "cidr": f"{ip}/24"},
        *({"ifname": i, "family": "inet", "cidr": c} for i, c in addresses),
    ]
    data["routes"] = [{"route": r} for r in ["default via 10.77.0.1 dev eth0", f"10.77.0.0/24 dev eth0 src {ip}", *routes]]
    data["managed_files"] = [{"path": p, "sha256": s} for p, s in (files or {}).items()]
    cidr = str(CIDR)
    data["docker"]["network"] = {
        "docker_user": [f"-A DOCKER-USER -s {cidr} -d {cidr} -j ACCEPT"] if rules else [],
        "nat_postrouting": [f"-A POSTROUTING -s {cidr} -d {cidr} -j RETURN"] if rules else [],
        "networks": list(networks),
        "swarm_nodes": None,
        "weave_images": [],
        "wireguard": wireguard if wireguard is not None else {"kernel": False, "wg": False, "go": False, "tun": True, "now": NOW, "tunnels": []},
    }
    return parse_probe_output(json.dumps(data))


def tools(**kw) -> dict:
    return {"kernel": False, "wg": True, "go": True, "tun": True, "now": NOW, "tunnels": [], **kw}


def bridge(name: str) -> dict:
    sub = SUB[name]
    return {
        "Name": "clusterctl", "Driver": "bridge", "Id": f"id-{name}", "Scope": "local",
        "IPAM": {"Driver": "default", "Config": [{"Subnet": str(sub), "Gateway": str(next(sub.hosts()))}]},
        "Options": {"com.docker.network.bridge.name": "br-clusterctl", "com.docker.network.driver.mtu": "1420"},
        "Labels": {"clusterctl.cluster": "lab", "clusterctl.cidr": str(CIDR)}, "Containers": {},
    }  # fmt: skip


def converged(name: str, c, *, handshake_age: int = 10, peers=None, systemd: bool = False):
    """The facts of a host whose mesh is exactly what the plan wants."""
    peers = [o for o in ADDR if o != name] if peers is None else peers
    driver = WireguardDriver()
    hosts = {h.name: h for h in c.spec.hosts}
    want = [wg.Peer(o, KEYS[o], endpoint_for(hosts[name], hosts[o], ADDR[o], 51820), (SUB[o],)) for o in peers]
    conf = wg.render_conf(51820, want)
    own = next(SUB[name].hosts())
    from clusterctl.commands import routed

    script = wg.up_script(IFACE, own, 1420, CIDR, [SUB[o] for o in peers], (routed.accept_forward(CIDR), routed.keep_source_first(CIDR)))
    files = {wg.conf_path(IFACE): sha256(conf), wg.script_path(IFACE): sha256(script)}
    if systemd:
        files[wg.unit_path(IFACE)] = sha256(wg.unit_text(IFACE))
    tunnel = {
        "name": IFACE, "key_public": KEYS[name], "conf": conf.replace("\n", "\t"), "up": True, "public_key": KEYS[name],
        "listen_port": 51820, "mtu": 1420,
        "allowed_ips": [f"{KEYS[o]}\t{SUB[o]}" for o in peers],
        "handshakes": [f"{KEYS[o]}\t{NOW - handshake_age}" for o in peers],
    }  # fmt: skip
    assert driver.name == "wireguard"
    f = probe(
        name,
        wireguard=tools(tunnels=[tunnel]),
        networks=[bridge(name)],
        addresses=[(IFACE, f"{own}/32"), ("br-clusterctl", f"{own}/24")],
        routes=[f"{SUB[o]} dev {IFACE} scope link src {own}" for o in peers],
        files=files,
    )
    return f


def ctx(c, facts) -> Context:
    return Context(cluster=c, facts=facts)


def rendered(cmds) -> list[str]:
    return [x.render() for x in cmds]


def test_fresh_hosts_install_make_keys_and_their_networks_and_wait_for_nobody():
    c = cluster()
    plan = plan_network(ctx(c, {n: probe(n) for n in ADDR}))
    assert plan.cidr == CIDR and not plan.errors
    for n in ADDR:
        lines = rendered(plan.cmds[n])
        assert "wireguard-tools and wireguard-go" in plan.cmds[n][0].description  # no kernel module: userspace
        assert plan.cmds[n][1] == wg.make_key(IFACE)
        assert sum(wg.conf_path(IFACE) + " '[Interface]" in line for line in lines) == 1
        # No peer has a key yet: the conf holds none, and nobody is waited for.
        assert "[Peer]" not in " ".join(lines) and not any("latest-handshakes" in line for line in lines)
        assert wg.run_up(IFACE).render() in lines
        assert any(line.startswith("docker network create -d bridge --subnet " + str(SUB[n])) and "driver.mtu=1420" in line for line in lines)
        # The private key is made on the host and never travels: no command carries one.
        assert not any("PrivateKey = " in line and "$(cat" not in line for line in lines)


def test_kernel_module_needs_only_the_tools_and_a_converged_mesh_plans_nothing():
    c = cluster()
    f = probe("node1", wireguard=tools(kernel=True, wg=False, go=False))
    assert wg.install(userspace=False).description == "install wireguard-tools from the distribution's packages"
    plan = plan_network(ctx(c, {"node1": f, "node2": converged("node2", c), "node3": converged("node3", c)}))
    assert plan.cmds["node1"][0] == wg.install(userspace=False)
    facts = {n: converged(n, c) for n in ADDR}
    assert plan_network(ctx(c, facts)).cmds == {n: [] for n in ADDR}
    phase = NetworkPhase()
    for h in c.spec.hosts:
        assert phase.plan(ctx(c, facts), h, facts[h.name]) == []


def test_second_pass_adds_the_new_keys_as_peers_and_waits_for_the_pairs_keyed_before():
    c = cluster()
    # node3 is new (no key yet); node1 and node2 have a mesh of two.
    facts = {
        "node1": converged("node1", c, peers=["node2"]),
        "node2": converged("node2", c, peers=["node1"]),
        "node3": probe("node3", wireguard=tools()),
    }
    plan = plan_network(ctx(c, facts))
    assert plan.cmds["node1"] == [] and plan.cmds["node2"] == []  # node3 has no key to add yet
    assert wg.make_key(IFACE) in plan.cmds["node3"]
    # node3 made its key; now the others add it, without touching each other's tunnel.
    facts["node3"] = converged("node3", c, handshake_age=0)  # knows both, no handshake yet
    facts["node3"] = copy.deepcopy(facts["node3"])
    plan = plan_network(ctx(c, facts))
    for n in ("node1", "node2"):
        lines = rendered(plan.cmds[n])
        conf = next(line for line in lines if wg.conf_path(IFACE) + " '[Interface]" in line)
        assert KEYS["node3"] in conf and f"Endpoint = {ADDR['node3']}:51820" in conf and f"AllowedIPs = {SUB['node3']}" in conf
        assert wg.run_up(IFACE).render() in lines
        wait = plan.cmds[n][-1]
        assert "latest-handshakes" in wait.render() and wait.argv[4:6] == (IFACE, n)
        assert "node3" in wait.argv and KEYS["node3"] in wait.argv


def test_stale_handshakes_are_waited_for_and_name_the_pair():
    c = cluster()
    facts = {n: converged(n, c) for n in ADDR}
    facts["node2"] = converged("node2", c, handshake_age=wg.STALE_AFTER + 60)
    plan = plan_network(ctx(c, facts))
    assert plan.cmds["node1"] == [] and plan.cmds["node3"] == []
    (wait,) = plan.cmds["node2"]
    assert wait.argv[4:7] == (IFACE, "node2", "25")
    assert "no WireGuard handshake between $me and" in wait.argv[2]


def test_endpoints_follow_the_provider_label_and_the_host_override():
    c = cluster(
        {
            "node1": {"labels": {"provider": "aws"}},
            "node2": {"labels": {"provider": "aws"}},
            "node3": {"labels": {"provider": "hetzner"}},
        }
    )
    hosts = {h.name: h for h in c.spec.hosts}
    assert endpoint_for(hosts["node1"], hosts["node2"], ADDR["node2"], 51820) == "10.77.0.12:51820"
    assert endpoint_for(hosts["node1"], hosts["node3"], ADDR["node3"], 51820) == "203.0.113.3:51820"
    c = cluster({"node3": {"wireguard_endpoint": "[2001:db8::3]:4500"}, "node2": {"wireguard_endpoint": "gw.example.com"}})
    hosts = {h.name: h for h in c.spec.hosts}
    assert endpoint_for(hosts["node1"], hosts["node3"], ADDR["node3"], 51820) == "[2001:db8::3]:4500"
    assert endpoint_for(hosts["node1"], hosts["node2"], ADDR["node2"], 51820) == "gw.example.com:51820"


def test_a_host_that_cannot_have_wireguard_fails_alone():
    c = cluster()
    facts = {n: converged(n, c, peers=[o for o in ("node1", "node2") if o != n]) for n in ("node1", "node2")}
    facts["node3"] = probe("node3", apt=False)
    plan = plan_network(ctx(c, facts))
    assert "no apt-get" in plan.errors["node3"] and "wireguard-go" in plan.errors["node3"]
    assert plan.cmds["node1"] == [] and plan.cmds["node2"] == []  # not waiting for node3
    host3 = c.spec.hosts[2]
    try:
        NetworkPhase().plan(ctx(c, facts), host3, facts["node3"])
    except PlanError as exc:
        assert "install wireguard-tools" in str(exc)
    else:
        raise AssertionError("node3 planned")
    no_tun = probe("node3", wireguard=tools(go=False, wg=False, tun=False))
    plan = plan_network(ctx(c, {**facts, "node3": no_tun}))
    assert "/dev/net/tun" in plan.errors["node3"]


def test_a_host_that_did_not_answer_keeps_its_peer_and_subnet():
    c = cluster()
    facts = {n: converged(n, c) for n in ("node1", "node2")}
    plan = plan_network(ctx(c, facts))
    # node3 is silent: the others keep it (from their conf files); nothing changes, nobody waits on it.
    assert plan.cmds == {"node1": [], "node2": []}


def test_down_removes_the_tunnel_and_teardown_is_the_drivers():
    c = cluster()
    f = converged("node1", c, systemd=True)
    (cmd,) = WireguardDriver().teardown(ctx(c, {"node1": f}), f)
    assert cmd == wg.remove(IFACE, systemd=False)  # the fixture's init is not systemd
    assert "ip link del dev" in cmd.argv[2] and cmd.argv[-2:] == (IFACE, "-")
    down = NetworkDown().plan(ctx(c, {"node1": f}), c.spec.hosts[0], f)
    assert down[0] == cmd and "docker network rm" in down[-1].argv[2]
    assert WireguardDriver().teardown(ctx(c, {"node2": probe("node2")}), probe("node2")) == []


def test_probe_block_parses_and_conf_round_trips():
    peers = [wg.Peer("node2", KEYS["node2"], "10.77.0.12:51820", (SUB["node2"],))]
    text = wg.render_conf(51820, peers)
    parsed = wg.parse_conf(text)
    assert [(p.host, p.public_key, p.endpoint, p.allowed_ips) for p in parsed] == [
        ("node2", KEYS["node2"], "10.77.0.12:51820", (str(SUB["node2"]),))
    ]
    block = tools(tunnels=[{"name": IFACE, "key_public": "K=", "conf": text.replace("\n", "\t"), "up": False}])
    w = parse_facts(block)
    assert w.tunnels[IFACE].conf_peers == parsed and not w.tunnels[IFACE].up and w.go and not w.kernel
    assert parse_facts(None).tunnels == {} and parse_facts({"tunnels": ["junk", {"x": 1}]}).tunnels == {}


def test_up_script_and_builders():
    s = wg.up_script(IFACE, ip_address("10.240.0.1"), 1380, CIDR, [SUB["node2"]])
    assert "ip link add dev \"$iface\" type wireguard" in s and "wireguard-go" in s
    assert '"$(cat /etc/clusterctl/wireguard/wg-clusterctl.key)"' in s and "wg syncconf \"$iface\" /dev/stdin" in s
    assert "mtu 1380 up" in s and "ip -4 route replace 10.240.1.0/24 dev \"$iface\" src 10.240.0.1" in s
    from clusterctl.commands import routed

    rules = (routed.accept_forward(CIDR), routed.keep_source_first(CIDR))
    s = wg.up_script(IFACE, ip_address("10.240.0.1"), 1380, CIDR, [SUB["node2"]], rules)
    assert s.endswith("if iptables -w -S DOCKER-USER >/dev/null 2>&1; then\n  " + rules[0].render() + "\n  " + rules[1].render() + "\nfi\n")
    assert "After=network-online.target docker.service" in wg.unit_text(IFACE)
    assert wg.interface_name("a.very.long.network-name") == "wg-a-very-long-" and len(wg.interface_name("x" * 63)) == 15
    assert wg.make_key(IFACE).argv[2].startswith("umask 077;")
    assert "ExecStart=/bin/sh /etc/clusterctl/wireguard/wg-clusterctl.sh" in wg.unit_text(IFACE)


def test_across_providers_consul_and_replicas_talk_over_the_mesh():
    from clusterctl.network.addresses import NoMeshAddress, over_mesh, talk_address
    from clusterctl.phases.consul import cluster_address

    split = {"node1": {"labels": {"provider": "aws"}}, "node2": {"labels": {"provider": "aws"}}, "node3": {"labels": {"provider": "hetzner"}}}
    c = cluster(split)
    facts = {n: converged(n, c) for n in ADDR}
    assert over_mesh(c) and not over_mesh(cluster())
    for h in c.spec.hosts:
        assert talk_address(c, h, facts[h.name]) == str(next(SUB[h.name].hosts()))
        assert cluster_address(Context(cluster=c, facts=facts), h) == str(next(SUB[h.name].hosts()))
    # One provider (or no labels): the cluster address, as with every other driver.
    one = cluster()
    assert [talk_address(one, h, facts[h.name]) for h in one.spec.hosts] == list(ADDR.values())
    # The tunnel not up yet: refused with one line, never the private address in its place.
    try:
        talk_address(c, c.spec.hosts[0], probe("node1"))
    except NoMeshAddress as exc:
        assert "wg-clusterctl" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("no refusal")
    assert cluster_address(Context(cluster=c, facts={"node1": probe("node1")}), c.spec.hosts[0]) is None


def _with_agent(f, address: str, mode: str = "server"):
    from dataclasses import replace as dc_replace

    from clusterctl.facts.parser import Container

    agent = Container("x", "clusterctl-consul", "i", "running", {
        "clusterctl.cluster": "lab", "clusterctl.role": "consul", "clusterctl.consul.mode": mode, "clusterctl.consul.address": address,
    })  # fmt: skip
    return dc_replace(f, docker=dc_replace(f.docker, containers=(agent,)))


def test_consul_servers_never_move_to_the_mesh_under_a_running_cluster():
    import pytest

    from clusterctl.phases.base import PhaseError
    from clusterctl.phases.consul import ConsulPhase

    split = {"node1": {"labels": {"provider": "aws"}}, "node2": {"labels": {"provider": "aws"}}, "node3": {"labels": {"provider": "hetzner"}}}
    one_provider = load_text("\n".join(
        ["name: lab", "hosts:", *(f"  - {{name: {h}, address: {PUBLIC[h]}, cluster_address: {ADDR[h]}}}" for h in ADDR),
         "network: {driver: wireguard, subnet: 10.240.0.0/16}"]) + "\n", "cluster.yaml")  # fmt: skip
    c = load_text("\n".join(
        ["name: lab", "hosts:", *("  - " + json.dumps({"name": h, "address": PUBLIC[h], "cluster_address": ADDR[h], **split[h]}) for h in ADDR),
         "network: {driver: wireguard, subnet: 10.240.0.0/16}"]) + "\n", "cluster.yaml")  # fmt: skip
    on_cluster_addresses = {n: _with_agent(converged(n, c), ADDR[n]) for n in ADDR}
    with pytest.raises(PhaseError, match=r"consul servers would move to new addresses: node1 \(10\.77\.0\.11\), node2 .*mesh now"):
        ConsulPhase().check(Context(cluster=c, facts=on_cluster_addresses))
    ConsulPhase().check(Context(cluster=one_provider, facts=on_cluster_addresses))  # one provider: they stay
    on_mesh = {n: _with_agent(converged(n, c), str(next(SUB[n].hosts()))) for n in ADDR}
    ConsulPhase().check(Context(cluster=c, facts=on_mesh))  # made on the mesh: nothing moves
    with pytest.raises(PhaseError, match="left the mesh"):
        ConsulPhase().check(Context(cluster=one_provider, facts=on_mesh))
    clients = {n: _with_agent(converged(n, c), ADDR[n], mode="client") for n in ADDR}
    ConsulPhase().check(Context(cluster=c, facts=clients))  # clients may move: no quorum of theirs
