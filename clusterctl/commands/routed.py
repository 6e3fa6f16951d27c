"""Argv builders of the routed network driver (planned by network/drivers/routed.py); builders only.

The Docker bridge network on a host's subnet, the routes to the other hosts' subnets, the
DOCKER-USER rule that lets cluster traffic through and the nat POSTROUTING RETURN rule, kept
first, that keeps its source addresses; with the small pure helpers that say how those look on
a host (the bridge's name, the rules as `iptables -S` prints them, whether a network or the nat
chain is already as the builders would make it, the gateway mode for an engine version). The
wireguard driver uses them too.

Pure: functions return Cmds or strings; nothing runs here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network

from clusterctl.commands.base import Cmd, sh_args
from clusterctl.network.facts import LABEL_CIDR, LABEL_CLUSTER, DockerNetwork

OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_GATEWAY_MODE = "com.docker.network.bridge.gateway_mode_ipv4"
OPT_MTU = "com.docker.network.driver.mtu"
UNPROTECTED = "nat-unprotected"
# First Docker Engine major version that filters direct routing to containers.
DIRECT_ROUTING_FILTER_SINCE = 28


# ---------------------------------------------------------------------------------------------
# Builders and the helpers that read what they make


def bridge_name(network: str) -> str:
    """The Linux bridge of the cluster network: `br-` and up to 12 characters (IFNAMSIZ is 16).

    The `br-` prefix is also what the probe's parser skips when it looks for host addresses.
    """
    return "br-" + re.sub(r"[^A-Za-z0-9_-]", "-", network)[:12]


def network_create_bridge(
    name: str,
    subnet: IPv4Network,
    gateway: IPv4Address,
    *,
    bridge: str,
    cluster: str,
    cidr: IPv4Network,
    gateway_mode: str | None = None,
    mtu: int | None = None,
) -> Cmd:
    argv = [
        "docker", "network", "create",
        "-d", "bridge",
        "--subnet", str(subnet),
        "--gateway", str(gateway),
        "-o", f"{OPT_BRIDGE_NAME}={bridge}",
    ]
    if gateway_mode:
        argv += ["-o", f"{OPT_GATEWAY_MODE}={gateway_mode}"]
    if mtu:
        argv += ["-o", f"{OPT_MTU}={mtu}"]
    argv += ["--label", f"{LABEL_CLUSTER}={cluster}", "--label", f"{LABEL_CIDR}={cidr}", name]
    return Cmd(tuple(argv), f"create the cluster network on this host's subnet {subnet}")


def network_rm(name: str) -> Cmd:
    return Cmd(("docker", "network", "rm", name), "remove the cluster network (its settings changed)")


def route_replace(dest: IPv4Network, via: IPv4Address) -> Cmd:
    return Cmd(("ip", "route", "replace", str(dest), "via", str(via)), f"route {dest} via {via}")


def route_del(dest: IPv4Network, via: IPv4Address) -> Cmd:
    # check=False: the route may have gone since the probe; "remove if present".
    return Cmd(("ip", "route", "del", str(dest), "via", str(via)), f"remove the route {dest} via {via}", check=False)


def accept_rule(cidr: IPv4Network) -> str:
    """The rule as `iptables -S DOCKER-USER` prints it."""
    return f"-A DOCKER-USER -s {cidr} -d {cidr} -j ACCEPT"


def return_rule(cidr: IPv4Network) -> str:
    """The rule as `iptables -t nat -S POSTROUTING` prints it."""
    return f"-A POSTROUTING -s {cidr} -d {cidr} -j RETURN"


def accept_forward(cidr: IPv4Network) -> Cmd:
    """Let cluster-to-cluster traffic through Docker's forward filter (check before insert)."""
    return sh_args(
        'iptables -w -C DOCKER-USER -s "$1" -d "$1" -j ACCEPT 2>/dev/null || '
        'iptables -w -I DOCKER-USER -s "$1" -d "$1" -j ACCEPT',
        str(cidr),
        description="accept cluster traffic in DOCKER-USER",
    )


def keep_source_first(cidr: IPv4Network) -> Cmd:
    """Keep `-t nat POSTROUTING -s C -d C -j RETURN` the first rule of its chain.

    Docker inserts its MASQUERADE rules at the top when it (re)creates a network, e.g. after an
    engine restart, so "present" is not enough: the rule must come before them.
    """
    return sh_args(
        'if [ "$(iptables -w -t nat -S POSTROUTING | sed -n 2p)" != "-A POSTROUTING -s $1 -d $1 -j RETURN" ]; then '
        'while iptables -w -t nat -D POSTROUTING -s "$1" -d "$1" -j RETURN 2>/dev/null; do :; done; '
        'iptables -w -t nat -I POSTROUTING 1 -s "$1" -d "$1" -j RETURN; fi',
        str(cidr),
        description="keep source addresses of cluster traffic (nat RETURN first in POSTROUTING)",
    )


def _may_match(rule: str, cidr: IPv4Network) -> bool:
    """Whether an `iptables -S` rule could match a packet from `cidr` to `cidr`."""
    words = rule.split()
    for i, word in enumerate(words[:-1]):
        if word in ("-s", "-d") and (i == 0 or words[i - 1] != "!"):
            try:
                net = ipaddress.ip_network(words[i + 1], strict=False)
            except ValueError:
                continue
            if not net.overlaps(cidr):
                return False
    return True


def source_kept(rules: Sequence[str] | None, cidr: IPv4Network) -> bool:
    """Whether cluster traffic meets our nat RETURN rule before any rule that could rewrite it.

    Docker puts its MASQUERADE rules at the top of POSTROUTING when the engine starts; those of
    other networks (e.g. `-s 172.17.0.0/16 ! -o docker0`) cannot match cluster traffic, so an
    engine restart alone does not make the rule move again. None (rules unread): not kept.
    """
    if rules is None or return_rule(cidr) not in rules:
        return False
    before = rules[: list(rules).index(return_rule(cidr))]
    return not any(_may_match(r, cidr) for r in before)


def docker_major(version: str | None) -> int | None:
    m = re.match(r"^(\d+)\.", version or "")
    return int(m.group(1)) if m else None


def gateway_mode_for(version: str | None) -> str | None:
    major = docker_major(version)
    return UNPROTECTED if major is not None and major >= DIRECT_ROUTING_FILTER_SINCE else None


def network_matches(
    net: DockerNetwork, subnet: IPv4Network, gateway: IPv4Address, bridge: str, cidr: IPv4Network, mode: str | None,
    mtu: int | None = None,
) -> bool:
    """Whether the host's network is the one network_create_bridge would make."""
    return (
        net.options.get(OPT_MTU) == (str(mtu) if mtu else None) and
        net.driver == "bridge"
        and net.subnets == (subnet,)
        and net.gateways in ((gateway,), ())
        and net.options.get(OPT_BRIDGE_NAME) == bridge
        and net.options.get(OPT_GATEWAY_MODE) == mode
        and net.labels.get(LABEL_CIDR) == str(cidr)
    )
