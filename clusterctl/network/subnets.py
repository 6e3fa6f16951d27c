"""The subnet planner: one cluster CIDR, one subnet per host inside it. Pure and deterministic.

Rules, in order of strength:
- the cluster CIDR must not overlap any network the hosts already use (their interfaces and
  routes, which the probe reports): that is an error, never silently worked around;
- a host keeps the subnet it has whenever it is still valid (inside the cluster CIDR, the right
  prefix, not taken by an earlier host), so adding or removing hosts never moves anyone else;
- a host without a valid subnet gets the lowest free one, hosts taken in inventory order.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Network

from clusterctl.errors import UserError

# Each host subnet needs a gateway (the bridge) and at least one container: /30 is the smallest.
MAX_HOST_PREFIX = 30
DEFAULT_HOST_PREFIX = 24
# Candidates for a cluster CIDR when the cluster file names none: the /16s of 10.240.0.0/12, then
# of 10.224.0.0/12. Outside Docker's default pools (172.17-31.x, 192.168.x) and Weave's 10.32.0.0/12.
DEFAULT_CANDIDATE_BLOCKS = (IPv4Network("10.240.0.0/12"), IPv4Network("10.224.0.0/12"))
DEFAULT_CLUSTER_PREFIX = 16


class SubnetError(UserError):
    """The cluster CIDR cannot hold the hosts (overlap, exhaustion, nonsense prefixes). One line."""


def as_network(value: IPv4Network | str) -> IPv4Network:
    """An IPv4 network from a network or its text; host bits set or IPv6 is a SubnetError."""
    if isinstance(value, IPv4Network):
        return value
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise SubnetError(f"invalid cluster CIDR {value!r}: {exc}") from None
    if not isinstance(net, IPv4Network):
        raise SubnetError(f"the cluster CIDR must be IPv4, got {value}")
    return net


def _v4(nets: Iterable[object]) -> list[IPv4Network]:
    return [n for n in nets if isinstance(n, IPv4Network)]


def check_cluster_cidr(cluster: IPv4Network, avoid: Iterable[object]) -> None:
    """Raise if the cluster CIDR overlaps a network the hosts already use."""
    clashes = sorted({n for n in _v4(avoid) if n.overlaps(cluster)})
    if clashes:
        shown = ", ".join(str(n) for n in clashes[:3]) + (" ..." if len(clashes) > 3 else "")
        raise SubnetError(
            f"cluster CIDR {cluster} overlaps {shown}, already used by the hosts; set network.subnet to a free range"
        )


def plan_subnets(
    cluster_cidr: IPv4Network | str,
    host_prefix: int,
    hosts: Sequence[str],
    current: Mapping[str, IPv4Network],
    avoid: Sequence[IPv4Network],
) -> dict[str, IPv4Network]:
    """A subnet of length `host_prefix` inside `cluster_cidr` for every host, in host order.

    `current` is what each host has now (from facts; entries of hosts not in `hosts` are ignored,
    which frees their subnets). `avoid` is every network the hosts use themselves.
    """
    cluster = as_network(cluster_cidr)
    if isinstance(host_prefix, bool) or not isinstance(host_prefix, int):
        raise SubnetError(f"host prefix must be a number, got {host_prefix!r}")
    if host_prefix < cluster.prefixlen:
        raise SubnetError(f"host prefix /{host_prefix} is larger than the cluster CIDR {cluster}")
    if host_prefix > MAX_HOST_PREFIX:
        raise SubnetError(
            f"host prefix /{host_prefix} leaves no room for containers; use /{MAX_HOST_PREFIX} or shorter"
        )
    seen: set[str] = set()
    for name in hosts:
        if name in seen:
            raise SubnetError(f"host {name!r} is listed twice")
        seen.add(name)
    check_cluster_cidr(cluster, avoid)
    capacity = 1 << (host_prefix - cluster.prefixlen)
    if len(hosts) > capacity:
        raise SubnetError(
            f"cluster CIDR {cluster} has room for {capacity} /{host_prefix} host subnets, "
            f"but {len(hosts)} hosts need one each"
        )

    # Subnets of one prefix length inside one network are aligned: two overlap only if equal.
    taken: set[IPv4Network] = set()
    out: dict[str, IPv4Network] = {}
    for name in hosts:
        have = current.get(name)
        if (
            isinstance(have, IPv4Network)
            and have.prefixlen == host_prefix
            and have.subnet_of(cluster)
            and have not in taken
        ):
            out[name] = have
            taken.add(have)

    free = (s for s in cluster.subnets(new_prefix=host_prefix) if s not in taken)
    for name in hosts:
        if name in out:
            continue
        subnet = next(free, None)
        if subnet is None:  # cannot happen after the capacity check; kept as a guard
            raise SubnetError(f"cluster CIDR {cluster} is exhausted at /{host_prefix}")
        out[name] = subnet
        taken.add(subnet)
    return {name: out[name] for name in hosts}


def default_cluster_cidr(avoid: Sequence[IPv4Network], current: IPv4Network | None = None) -> IPv4Network:
    """The cluster CIDR to use when the cluster file names none.

    `current` is the CIDR the running cluster already uses (from our networks' labels): it is kept
    even if it now clashes, so that plan_subnets reports the clash instead of moving every host.
    Otherwise: the first /16 of the candidate blocks that overlaps nothing in `avoid`.
    """
    if current is not None:
        return current
    used = _v4(avoid)
    for block in DEFAULT_CANDIDATE_BLOCKS:
        for cand in block.subnets(new_prefix=DEFAULT_CLUSTER_PREFIX):
            if not any(cand.overlaps(n) for n in used):
                return cand
    blocks = " and ".join(str(b) for b in DEFAULT_CANDIDATE_BLOCKS)
    raise SubnetError(f"every /{DEFAULT_CLUSTER_PREFIX} of {blocks} is used by the hosts; set network.subnet")


def halves(cidr: IPv4Network) -> tuple[IPv4Network, IPv4Network]:
    """The lower and upper half of a network (used by the weave driver)."""
    if cidr.prefixlen >= MAX_HOST_PREFIX:
        raise SubnetError(f"cluster CIDR {cidr} is too small to split")
    low, high = cidr.subnets(prefixlen_diff=1)
    return low, high
