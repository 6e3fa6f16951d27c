"""Properties of the subnet planner, checked with hypothesis (300+ examples each)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from clusterctl.errors import UserError
from clusterctl.network.subnets import (
    DEFAULT_CANDIDATE_BLOCKS,
    SubnetError,
    default_cluster_cidr,
    halves,
    plan_subnets,
)

EXAMPLES = settings(max_examples=300, deadline=None)

names = st.text(alphabet="abcdefgh0123", min_size=1, max_size=4)


@st.composite
def clusters(draw):
    prefix = draw(st.integers(min_value=8, max_value=28))
    base = draw(st.integers(min_value=0, max_value=2**32 - 1))
    return IPv4Network((base, prefix), strict=False)


@st.composite
def subnet_in(draw, cluster: IPv4Network, prefix: int):
    count = 1 << (prefix - cluster.prefixlen)
    i = draw(st.integers(min_value=0, max_value=count - 1))
    return IPv4Network((int(cluster.network_address) + i * (1 << (32 - prefix)), prefix))


@st.composite
def any_network(draw):
    prefix = draw(st.integers(min_value=8, max_value=32))
    base = draw(st.integers(min_value=0, max_value=2**32 - 1))
    return IPv4Network((base, prefix), strict=False)


@st.composite
def problems(draw, max_hosts: int = 10):
    """A solvable input: (cluster, host_prefix, hosts, current, avoid)."""
    cluster = draw(clusters())
    host_prefix = cluster.prefixlen + draw(st.integers(min_value=0, max_value=min(8, 30 - cluster.prefixlen)))
    capacity = 1 << (host_prefix - cluster.prefixlen)
    hosts = draw(st.lists(names, unique=True, max_size=min(max_hosts, capacity)))
    keys = hosts + draw(st.lists(names, max_size=3))
    current = {}
    for key in keys:
        kind = draw(st.sampled_from(["none", "valid", "valid", "random", "wrong-prefix"]))
        if kind == "valid":
            current[key] = draw(subnet_in(cluster, host_prefix))
        elif kind == "random":
            current[key] = draw(any_network())
        elif kind == "wrong-prefix" and cluster.prefixlen < 30:
            p = draw(st.integers(min_value=cluster.prefixlen, max_value=30).filter(lambda p: p != host_prefix))
            current[key] = draw(subnet_in(cluster, p))
    avoid = [n for n in draw(st.lists(any_network(), max_size=5)) if not n.overlaps(cluster)]
    return cluster, host_prefix, hosts, current, avoid


def check_plan(plan, cluster, host_prefix, hosts, avoid):
    assert list(plan) == list(hosts)
    subnets = list(plan.values())
    for s in subnets:
        assert s.prefixlen == host_prefix
        assert s.subnet_of(cluster)
        assert not any(s.overlaps(a) for a in avoid)
    for i, a in enumerate(subnets):
        for b in subnets[i + 1 :]:
            assert not a.overlaps(b)


@EXAMPLES
@given(problems())
def test_subnets_are_disjoint_inside_the_cluster_and_avoid_host_networks(p):
    cluster, host_prefix, hosts, current, avoid = p
    plan = plan_subnets(cluster, host_prefix, hosts, current, avoid)
    check_plan(plan, cluster, host_prefix, hosts, avoid)


@EXAMPLES
@given(problems())
def test_valid_current_subnets_are_kept_and_new_hosts_get_the_lowest_free(p):
    cluster, host_prefix, hosts, current, avoid = p
    plan = plan_subnets(cluster, host_prefix, hosts, current, avoid)
    claimed = set()
    kept = set()
    for h in hosts:
        c = current.get(h)
        if c is not None and c.prefixlen == host_prefix and c.subnet_of(cluster) and c not in claimed:
            assert plan[h] == c
            claimed.add(c)
            kept.add(h)
    fresh = [plan[h] for h in hosts if h not in kept]
    free = [s for s in cluster.subnets(new_prefix=host_prefix) if s not in claimed][: len(fresh)]
    assert fresh == free


@EXAMPLES
@given(problems(), st.lists(names, unique=True, max_size=5))
def test_adding_hosts_never_moves_existing_ones(p, extra):
    cluster, host_prefix, hosts, current, avoid = p
    before = plan_subnets(cluster, host_prefix, hosts, current, avoid)
    more = hosts + [n for n in extra if n not in hosts]
    assume(len(more) <= 1 << (host_prefix - cluster.prefixlen))
    after = plan_subnets(cluster, host_prefix, more, before, avoid)
    assert {h: after[h] for h in hosts} == before
    check_plan(after, cluster, host_prefix, more, avoid)


@EXAMPLES
@given(problems(), st.data())
def test_removing_hosts_never_moves_the_others(p, data):
    cluster, host_prefix, hosts, current, avoid = p
    before = plan_subnets(cluster, host_prefix, hosts, current, avoid)
    gone = set(data.draw(st.lists(st.sampled_from(hosts), unique=True) if hosts else st.just([])))
    rest = [h for h in hosts if h not in gone]
    after = plan_subnets(cluster, host_prefix, rest, before, avoid)
    assert after == {h: before[h] for h in rest}


@EXAMPLES
@given(problems())
def test_deterministic_whatever_the_order_of_current(p):
    cluster, host_prefix, hosts, current, avoid = p
    one = plan_subnets(cluster, host_prefix, hosts, current, avoid)
    two = plan_subnets(cluster, host_prefix, list(hosts), dict(reversed(list(current.items()))), list(reversed(avoid)))
    assert one == two
    assert list(one.items()) == list(two.items())


@EXAMPLES
@given(problems(), any_network())
def test_overlap_with_a_host_network_is_a_one_line_error(p, clash):
    cluster, host_prefix, hosts, current, avoid = p
    assume(clash.overlaps(cluster))
    with pytest.raises(SubnetError) as err:
        plan_subnets(cluster, host_prefix, hosts, current, [*avoid, clash])
    assert "\n" not in str(err.value) and str(cluster) in str(err.value)
    assert isinstance(err.value, UserError)


@EXAMPLES
@given(clusters(), st.integers(min_value=0, max_value=3), st.data())
def test_exhaustion_and_bad_prefixes_are_errors(cluster, extra_bits, data):
    host_prefix = min(30, cluster.prefixlen + extra_bits)
    capacity = 1 << (host_prefix - cluster.prefixlen)
    hosts = [f"h{i}" for i in range(capacity + 1)]
    with pytest.raises(SubnetError, match="room for"):
        plan_subnets(cluster, host_prefix, hosts, {}, [])
    bad = data.draw(st.sampled_from([cluster.prefixlen - 1, 31, 32, 40]))
    with pytest.raises(SubnetError):
        plan_subnets(cluster, bad, ["a"], {}, [])


def test_fixed_examples():
    cluster = IPv4Network("10.240.0.0/16")
    plan = plan_subnets(cluster, 24, ["a", "b", "c"], {"b": IPv4Network("10.240.7.0/24")}, [IPv4Network("10.77.0.0/24")])
    assert plan == {
        "a": IPv4Network("10.240.0.0/24"),
        "b": IPv4Network("10.240.7.0/24"),
        "c": IPv4Network("10.240.1.0/24"),
    }
    assert plan_subnets("10.240.0.0/16", 24, [], {}, []) == {}
    with pytest.raises(SubnetError, match="listed twice"):
        plan_subnets(cluster, 24, ["a", "a"], {}, [])
    with pytest.raises(SubnetError, match=r"overlaps 10\.0\.0\.0/8"):
        plan_subnets(cluster, 24, ["a"], {}, [IPv4Network("10.0.0.0/8")])
    with pytest.raises(SubnetError, match="IPv4"):
        plan_subnets("fd00::/64", 80, ["a"], {}, [])
    with pytest.raises(SubnetError, match="invalid cluster CIDR"):
        plan_subnets("10.240.0.1/16", 24, ["a"], {}, [])
    assert halves(cluster) == (IPv4Network("10.240.0.0/17"), IPv4Network("10.240.128.0/17"))


@EXAMPLES
@given(st.lists(any_network(), max_size=8))
def test_default_cluster_cidr_overlaps_nothing(avoid):
    try:
        cidr = default_cluster_cidr(avoid)
    except SubnetError:
        candidates = [c for b in DEFAULT_CANDIDATE_BLOCKS for c in b.subnets(new_prefix=16)]
        assert all(any(c.overlaps(a) for a in avoid) for c in candidates)
        return
    assert cidr.prefixlen == 16
    assert any(cidr.subnet_of(b) for b in DEFAULT_CANDIDATE_BLOCKS)
    assert not any(cidr.overlaps(a) for a in avoid)
    assert default_cluster_cidr(avoid) == cidr  # deterministic


def test_default_cluster_cidr_examples():
    assert default_cluster_cidr([]) == IPv4Network("10.240.0.0/16")
    assert default_cluster_cidr([IPv4Network("10.240.3.0/24"), IPv4Network("172.17.0.0/16")]) == IPv4Network(
        "10.241.0.0/16"
    )
    # The running cluster's CIDR wins, even when it now clashes (plan_subnets reports it).
    current = IPv4Network("10.250.0.0/16")
    assert default_cluster_cidr([IPv4Network("10.250.0.0/24")], current) == current
    with pytest.raises(SubnetError, match="network.subnet"):
        default_cluster_cidr([IPv4Network("10.0.0.0/8")])
    assert IPv4Address("10.240.0.1") in default_cluster_cidr([IPv4Network("192.168.0.0/16")])
