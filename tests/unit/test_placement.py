"""Placement of service replicas: examples, then hypothesis properties over generated clusters."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterctl.config.models import Host, Service
from clusterctl.schedule.placement import PlacementError, place, place_service, spread_group


def hosts_of(*specs):
    """specs: (name, {labels})."""
    return tuple(Host(name=n, address=f"10.0.0.{i + 1}", labels=labels) for i, (n, labels) in enumerate(specs))


CLOUDS = hosts_of(
    ("h1", {"provider": "hetzner"}),
    ("h2", {"provider": "hetzner"}),
    ("h3", {"provider": "hetzner"}),
    ("a1", {"provider": "aws"}),
    ("a2", {"provider": "aws"}),
)
ALL = {h.name for h in CLOUDS}


def svc(**kw):
    return Service(name=kw.pop("name", "web"), image="web:1", **kw)


def test_spread_over_providers_before_hosts():
    assert place_service(svc(replicas=2, spread="provider"), CLOUDS, ALL) == ("h1", "a1")
    assert Counter(h[0] for h in place_service(svc(replicas=4, spread="provider"), CLOUDS, ALL)) == {"h": 2, "a": 2}


def test_without_spread_the_first_hosts_and_services_go_evenly_over_hosts():
    placed = place([svc(name="a", replicas=2), svc(name="b", replicas=2)], CLOUDS, ALL)
    assert placed.hosts_of == {"a": ("h1", "h2"), "b": ("h3", "a1")}
    assert placed.services_on("h3") == ("b",)


def test_constraints_pick_the_hosts():
    s = svc(replicas=2, constraints={"provider": "aws"})
    assert place_service(s, CLOUDS, ALL) == ("a1", "a2")
    s = svc(replicas=3, constraints={"provider": ["aws", "gcp"]})
    with pytest.raises(PlacementError, match=r"services\.web: 3 replicas need 3 hosts \(one per host\), but 2 are up among the hosts matching"):
        place_service(s, CLOUDS, ALL)


def test_running_replicas_stay_where_they_are():
    s = svc(replicas=2, spread="provider")
    assert place_service(s, CLOUDS, ALL, running_on={"h3", "a2"}) == ("h3", "a2")
    # Scaling up keeps both and adds one.
    s3 = svc(replicas=3, spread="provider")
    assert set(place_service(s3, CLOUDS, ALL, running_on={"h3", "a2"})) >= {"h3", "a2"}


def test_a_host_that_did_not_answer_loses_its_replica_to_one_that_did():
    s = svc(replicas=2)
    assert place_service(s, CLOUDS, ALL - {"h1"}, running_on={"h1", "h2"}) == ("h2", "h3")
    with pytest.raises(PlacementError, match=r"h1, h2 did not answer"):
        place_service(svc(replicas=4), CLOUDS, ALL - {"h1", "h2"})


def test_two_services_never_share_a_port_on_a_host():
    a, b = svc(name="a", replicas=2, port=80), svc(name="b", replicas=3, port=80)
    placed = place([a, b], CLOUDS, ALL)
    assert placed.hosts_of == {"a": ("h1", "h2"), "b": ("h3", "a1", "a2")}
    with pytest.raises(PlacementError, match=r"services\.c: .* free of its port \(taken on h1 by a, h2 by a"):
        place([a, b, svc(name="c", replicas=1, port=80)], CLOUDS, ALL)
    # Another port, or a port from the app (given by `ports`), is checked the same way.
    assert place([a, svc(name="c", replicas=5, port=81)], CLOUDS, ALL).hosts_of["c"] == tuple(h.name for h in CLOUDS)
    with pytest.raises(PlacementError):
        place([a, svc(name="c", replicas=5)], CLOUDS, ALL, ports={"c": 80})


def test_zero_replicas_place_nothing():
    assert place_service(svc(replicas=0), CLOUDS, ALL) == ()


# --- properties ---------------------------------------------------------------------------------
PROVIDERS = ["aws", "gcp", "hetzner"]


@st.composite
def clusters(draw):
    n = draw(st.integers(1, 9))
    labels = [draw(st.sampled_from(PROVIDERS + [None])) for _ in range(n)]
    hosts = hosts_of(*[(f"n{i}", {"provider": p} if p else {}) for i, p in enumerate(labels)])
    available = {h.name for h in hosts if draw(st.booleans()) or draw(st.booleans())}
    running = set(draw(st.lists(st.sampled_from([h.name for h in hosts]), max_size=n)))
    spread = draw(st.sampled_from([None, "provider"]))
    constraint = draw(st.sampled_from([None, "aws", ("aws", "gcp")]))
    replicas = draw(st.integers(0, n))
    s = svc(replicas=replicas, spread=spread, constraints={"provider": constraint} if constraint else {})
    return hosts, available, running, s


@settings(max_examples=400, deadline=None)
@given(clusters())
def test_placement_properties(case):
    hosts, available, running, s = case
    eligible = [h for h in hosts if h.name in available and s.allows(h)]
    if s.replicas > len(eligible):
        with pytest.raises(PlacementError):
            place_service(s, hosts, available, running)
        return
    chosen = place_service(s, hosts, available, running)
    by_name = {h.name: h for h in hosts}
    # Exactly `replicas` distinct hosts, each available and allowed.
    assert len(chosen) == len(set(chosen)) == s.replicas
    assert all(n in available and s.allows(by_name[n]) for n in chosen)
    # Even over the spread groups: a group holds 2+ more than another only if that other one
    # has no eligible host left.
    groups = Counter(spread_group(s, by_name[n]) for n in chosen)
    sizes = Counter(spread_group(s, h) for h in eligible)
    for a in sizes:
        for b in sizes:
            if groups[a] > groups[b] + 1:
                assert groups[b] == sizes[b]
    # Deterministic, and stable: placing again with the result as what runs gives the same hosts.
    assert place_service(s, hosts, available, running) == chosen
    assert place_service(s, hosts, available, set(chosen)) == chosen


@settings(max_examples=200, deadline=None)
@given(clusters(), st.integers(0, 3))
def test_scaling_up_never_moves_a_running_replica(case, more):
    hosts, available, _, s = case
    eligible = [h for h in hosts if h.name in available and s.allows(h)]
    if s.replicas > len(eligible):
        return
    before = place_service(s, hosts, available)
    bigger = s.model_copy(update={"replicas": min(len(eligible), s.replicas + more)})
    after = place_service(bigger, hosts, available, set(before))
    assert set(before) <= set(after)
