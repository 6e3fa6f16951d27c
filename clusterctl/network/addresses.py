"""Which address a host's Consul agent and replicas talk on.

Its cluster address (from the file, else its facts); but with the wireguard driver on a
cluster that spans providers (hosts with different `provider` labels), its mesh address: the
tunnel's own address, so Consul's gossip and RPC and the traffic to replicas between providers
cross the internet encrypted, and reach hosts whose private addresses the others cannot route to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from clusterctl.commands.wireguard import interface_name
from clusterctl.config.models import Host

if TYPE_CHECKING:
    from clusterctl.config.loader import Cluster
    from clusterctl.facts.parser import HostFacts

# The host label that says which provider (cloud, site) a host is in.
PROVIDER_LABEL = "provider"


def spans_providers(hosts: Iterable[Host]) -> bool:
    return len({h.labels.get(PROVIDER_LABEL) for h in hosts}) > 1


def over_mesh(cluster: Cluster) -> bool:
    """Whether the cluster talks over its WireGuard mesh (see the module docstring)."""
    return cluster.spec.network.driver == "wireguard" and spans_providers(cluster.spec.hosts)


def mesh_address(facts: HostFacts, network: str) -> str | None:
    """The IPv4 address of this network's tunnel on the host, None while it has none."""
    iface = interface_name(network)
    for a in facts.addresses:
        if a.ifname == iface and isinstance(a.interface, ipaddress.IPv4Interface):
            return str(a.interface.ip)
    return None


class NoMeshAddress(Exception):
    """The cluster talks over the mesh and this host has no tunnel address yet."""


def talk_address(cluster: Cluster, host: Host, facts: HostFacts | None) -> str | None:
    """Where this host's agent binds and its replicas publish; None when unknown (no facts).
    Raises NoMeshAddress when it must be the mesh address and the tunnel is not up."""
    if over_mesh(cluster):
        if facts is None:
            return None
        found = mesh_address(facts, cluster.spec.network.name)
        if found is None:
            raise NoMeshAddress(
                f"no address on the WireGuard mesh ({interface_name(cluster.spec.network.name)}): the cluster spans "
                "providers, so Consul and services talk over it; the network phase must succeed here first"
            )
        return found
    if host.cluster_address:
        return host.cluster_address
    return facts.cluster_address() if facts else None
