"""The wireguard driver: a full mesh of WireGuard tunnels, a bridge subnet per host, encrypted.

Each host gets a subnet of the cluster CIDR (as with `routed`) and a Docker bridge network on it;
its tunnel interface (wg-NETWORK) holds the subnet's first address as a /32, and routes to
every other host's subnet go through the tunnel. Hosts need not share a segment, a provider or
a NAT-free path in both directions: one reachable endpoint a pair is enough.

Keys: each host's private key is made on that host and never leaves it; the probe reports the
public key (commands/wireguard.py). A host whose key is new this pass is configured as a peer by
the others on the next pass. Peer endpoints: the host's `wireguard_endpoint`, else its cluster
address seen from a host of the same `provider` label, else its `address`.

A pass ends with a bounded wait for a handshake with every peer both of whose keys existed
before it, so a pair that cannot talk (a UDP port closed) is named. A host that did not answer
keeps its peer entry and subnet on the others (from their conf files), so its tunnels stay.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from clusterctl.commands import routed
from clusterctl.commands import wireguard as wg
from clusterctl.commands.base import Cmd
from clusterctl.commands.files import sha256, write_file
from clusterctl.config.models import Host, split_endpoint
from clusterctl.facts.parser import HostFacts
from clusterctl.network.drivers.base import NetworkPlan
from clusterctl.network.addresses import PROVIDER_LABEL
from clusterctl.network.facts import find_network
from clusterctl.network.subnets import SubnetError, plan_subnets
from clusterctl.phases.base import Context, PhaseError



@dataclass(frozen=True)
class Tunnel:
    """One tunnel of ours on a host, as the probe saw it."""

    name: str
    key_public: str  # of the key file
    conf_peers: tuple[wg.ConfPeer, ...] = ()
    up: bool = False
    public_key: str = ""  # the interface's
    listen_port: int | None = None
    mtu: int | None = None
    allowed_ips: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    handshakes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class WireguardFacts:
    kernel: bool = False
    wg: bool = False
    go: bool = False
    tun: bool = False
    now: int | None = None
    tunnels: Mapping[str, Tunnel] = field(default_factory=dict)


def _pairs(lines: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, str) and "\t" in line:
            k, v = line.split("\t", 1)
            out[k.strip()] = v.strip()
    return out


def parse_facts(block: Mapping[str, Any] | None) -> WireguardFacts:
    """WireguardFacts from the probe's network.wireguard block (None: not read)."""
    if not isinstance(block, Mapping):
        return WireguardFacts()
    tunnels: dict[str, Tunnel] = {}
    for t in block.get("tunnels") or []:
        if not isinstance(t, Mapping) or not isinstance(t.get("name"), str):
            continue
        handshakes = {}
        for k, v in _pairs(t.get("handshakes")).items():
            handshakes[k] = int(v) if v.isdigit() else 0
        tunnels[t["name"]] = Tunnel(
            name=t["name"],
            key_public=str(t.get("key_public") or ""),
            conf_peers=wg.parse_conf(str(t.get("conf") or "").replace("\t", "\n")),
            up=t.get("up") is True,
            public_key=str(t.get("public_key") or ""),
            listen_port=t.get("listen_port") if isinstance(t.get("listen_port"), int) else None,
            mtu=t.get("mtu") if isinstance(t.get("mtu"), int) else None,
            allowed_ips={k: tuple(v.split()) if v != "(none)" else () for k, v in _pairs(t.get("allowed_ips")).items()},
            handshakes=handshakes,
        )
    now = block.get("now")
    return WireguardFacts(
        kernel=block.get("kernel") is True,
        wg=block.get("wg") is True,
        go=block.get("go") is True,
        tun=block.get("tun") is True,
        now=now if isinstance(now, int) else None,
        tunnels=tunnels,
    )


def wireguard_facts(facts: HostFacts) -> WireguardFacts:
    return parse_facts(facts.network.blocks.get("wireguard"))


def endpoint_for(viewer: Host, peer: Host, peer_cluster_address: str, port: int) -> str:
    """Where `viewer` sends `peer`'s tunnel traffic: ADDRESS:PORT ([IPv6]:PORT)."""
    if peer.wireguard_endpoint:
        address, own_port = split_endpoint(peer.wireguard_endpoint)
        port = own_port or port
    elif viewer.labels.get(PROVIDER_LABEL) == peer.labels.get(PROVIDER_LABEL):
        address = peer_cluster_address
    else:
        address = peer.address
    try:
        is_v6 = ipaddress.ip_address(address).version == 6
    except ValueError:
        is_v6 = False  # a name: wg resolves it when it sets the peer
    return f"[{address}]:{port}" if is_v6 else f"{address}:{port}"


def _ipv4(text: str) -> IPv4Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip if isinstance(ip, IPv4Address) else None


def _stale(t: Tunnel | None, key: str, now: int | None) -> bool:
    if t is None:
        return True
    last = t.handshakes.get(key, 0)
    return not last or now is None or now - last > wg.STALE_AFTER


class WireguardDriver:
    name = "wireguard"
    independent_hosts = True
    docker_driver = "bridge"

    def interfaces(self, network: str) -> tuple[str, ...]:
        return (routed.bridge_name(network), wg.interface_name(network))

    def plan(self, ctx: Context, addresses: dict[str, str], cidr: IPv4Network) -> NetworkPlan:
        net = ctx.cluster.spec.network
        iface, bridge = wg.interface_name(net.name), routed.bridge_name(net.name)
        hosts = {h.name: h for h in ctx.cluster.spec.hosts}
        out = NetworkPlan(cidr)
        facts = {n: wireguard_facts(f) for n, f in ctx.facts.items()}
        answered = [h for h in hosts.values() if h.name in ctx.facts and h.name in addresses]

        # Keys and subnets now. A host that did not answer is known from the others' conf files.
        keys: dict[str, str] = {}
        current: dict[str, IPv4Network] = {}
        for h in answered:
            t = facts[h.name].tunnels.get(iface)
            if t is not None and t.key_public:
                keys[h.name] = t.key_public
            found = find_network(ctx.facts[h.name].network.networks, net.name)
            if found is not None and found.driver == "bridge" and len(found.subnets) == 1:
                current[h.name] = found.subnets[0]
        silent_peers: dict[str, wg.ConfPeer] = {}
        for h in answered:
            t = facts[h.name].tunnels.get(iface)
            for p in t.conf_peers if t else ():
                if p.host in hosts and p.host not in ctx.facts and p.host not in silent_peers:
                    silent_peers[p.host] = p
        for name, p in silent_peers.items():
            keys.setdefault(name, p.public_key)
            try:
                subnet = ipaddress.ip_network(p.allowed_ips[0]) if p.allowed_ips else None
            except ValueError:
                subnet = None
            if isinstance(subnet, IPv4Network) and subnet.subnet_of(cidr):
                current[name] = subnet
        planned = [h for h in hosts.values() if h.name in current or h in answered]
        try:
            subnets = plan_subnets(cidr, net.host_prefix, [h.name for h in planned], current, ())
        except SubnetError as exc:
            raise PhaseError(str(exc)) from None

        # Who cannot have WireGuard at all: one line each, and nobody waits for them.
        for h in answered:
            f, w = ctx.facts[h.name], facts[h.name]
            if w.wg and (w.kernel or w.go):
                continue
            if not f.has_apt:
                out.errors[h.name] = (
                    "no WireGuard here and no apt-get to install it: install wireguard-tools"
                    + ("" if w.kernel else " and wireguard-go (this kernel has no WireGuard module)")
                )
            elif not w.kernel and not w.tun:
                out.errors[h.name] = "no WireGuard here: this kernel has no WireGuard module and there is no /dev/net/tun for wireguard-go"
        keyed_before = {n for n in keys if n not in ctx.facts or n not in out.errors}

        for h in answered:
            if h.name in out.errors:
                continue
            f, w = ctx.facts[h.name], facts[h.name]
            t = w.tunnels.get(iface)
            cmds: list[Cmd] = []
            if not (w.wg and (w.kernel or w.go)):
                cmds.append(wg.install(userspace=not w.kernel))
            if t is None or not t.key_public:
                cmds.append(wg.make_key(iface))
            own = subnets[h.name]
            address = next(own.hosts())
            peers = [
                wg.Peer(o.name, keys[o.name], self._endpoint(h, o, addresses, silent_peers, net.listen_port), (subnets[o.name],))
                for o in planned
                if o.name != h.name and o.name in keys and o.name not in out.errors
            ]
            conf = wg.render_conf(net.listen_port, peers)
            rules = (routed.accept_forward(cidr), routed.keep_source_first(cidr))
            script = wg.up_script(iface, address, net.mtu, cidr, [p.allowed_ips[0] for p in peers], rules)
            files = [(wg.conf_path(iface), conf, "write the mesh's peers"), (wg.script_path(iface), script, "write the mesh's start script")]
            if f.systemd:
                files.append((wg.unit_path(iface), wg.unit_text(iface), "write the unit that starts the mesh at boot"))
            changed = [(p, c, d) for p, c, d in files if f.managed_files.get(p) != sha256(c)]
            for path, content, what in changed:
                cmds.append(write_file(path, content, "0600", what))
            if f.systemd and any(p == wg.unit_path(iface) for p, _, _ in changed):
                cmds.append(wg.enable_unit(iface))
            if changed or self._differs(t, f, iface, address, net.listen_port, net.mtu, peers, cidr):
                cmds.append(wg.run_up(iface))

            mode = routed.gateway_mode_for(f.docker.server_version)
            found = find_network(f.network.networks, net.name)
            create = routed.network_create_bridge(
                net.name, own, address, bridge=bridge, cluster=ctx.cluster.name, cidr=cidr, gateway_mode=mode, mtu=net.mtu
            )
            if found is None:
                cmds.append(create)
            elif not routed.network_matches(found, own, address, bridge, cidr, mode, net.mtu):
                if found.containers:
                    out.errors[h.name] = (
                        f"network {net.name!r} must be recreated on {own} but {found.containers} "
                        "container(s) use it; stop them first"
                    )
                    continue
                cmds += [routed.network_rm(net.name), create]
            if f.network.docker_user_rules is None or routed.accept_rule(cidr) not in f.network.docker_user_rules:
                cmds.append(rules[0])
            if not routed.source_kept(f.network.nat_postrouting_rules, cidr):
                cmds.append(rules[1])

            # Wait for the peers that know this host already (both keys older than this pass).
            waiting = [p for p in peers if p.host in keyed_before and p.host in ctx.facts] if h.name in keyed_before else []
            if waiting and (wg.run_up(iface) in cmds or any(_stale(t, p.public_key, w.now) for p in waiting)):
                cmds.append(wg.wait_handshakes(iface, h.name, waiting, net.handshake_timeout))
            out.cmds[h.name] = cmds
        return out

    @staticmethod
    def _endpoint(h: Host, o: Host, addresses: dict[str, str], silent: dict[str, wg.ConfPeer], port: int) -> str:
        if o.name in addresses:
            return endpoint_for(h, o, addresses[o.name], port)
        kept = silent.get(o.name)
        return kept.endpoint if kept and kept.endpoint else endpoint_for(h, o, o.address, port)

    @staticmethod
    def _differs(
        t: Tunnel | None, f: HostFacts, iface: str, address: IPv4Address, port: int, mtu: int,
        peers: list[wg.Peer], cidr: IPv4Network,
    ) -> bool:  # fmt: skip
        """Whether the running tunnel differs from what its files say (e.g. after a reboot
        without systemd, or a peer removed by hand)."""
        if t is None or not t.up or t.public_key != t.key_public or t.listen_port != port or t.mtu != mtu:
            return True
        if not any(a.ifname == iface and a.interface.ip == address for a in f.addresses):
            return True
        want_peers = {p.public_key: tuple(str(n) for n in p.allowed_ips) for p in peers}
        if dict(t.allowed_ips) != want_peers:
            return True
        want_routes = {n for p in peers for n in p.allowed_ips}
        have_routes = {r.dest for r in f.network.routes if r.dev == iface and r.dest is not None and r.dest.subnet_of(cidr)}
        return want_routes != have_routes

    def teardown(self, ctx: Context, facts: HostFacts) -> list[Cmd]:
        return [wg.remove(name, facts.systemd) for name in sorted(wireguard_facts(facts).tunnels)]
