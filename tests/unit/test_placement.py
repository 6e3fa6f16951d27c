"""Placement of service replicas: examples, then hypothesis properties over generated clusters."""

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterctl.config.models import Host, Service
from clusterctl.schedule.placement import (
    NOTHING,
    Placement,
    PlacementError,
    Room,
    apportion,
    group_weights,
    place,
    place_service,
    request_of,
    spread_group,
)


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
    """A service with a fixed port (one replica per host) unless it says otherwise."""
    return Service(name=kw.pop("name", "web"), image="web:1", **{"port": 80, **kw})


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
    with pytest.raises(PlacementError, match=r"services\.web: 3 replicas need 3 hosts \(one per host: a fixed port\), but 2 are up among the hosts matching"):
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


def test_resources_never_overcommit_and_a_refusal_says_what_is_missing_where():
    sizes = {h.name: Room(2000, 2 << 30) for h in CLOUDS}
    big = svc(name="big", replicas=3, resources={"cpu": 1.5})
    small = svc(name="small", replicas=5, resources={"cpu": 0.5, "memory": "1G"}, port=81)
    placed = place([big, small], CLOUDS, ALL, capacities=sizes)
    assert placed.hosts_of == {"big": ("h1", "h2", "h3"), "small": CLOUDS_NAMES}
    with pytest.raises(PlacementError) as info:
        place([big, small.model_copy(update={"resources": small.resources.model_copy(update={"memory": 1536 << 20})})], CLOUDS, ALL - {"a2"}, capacities={**sizes, "h1": Room(2000, 1 << 30)})
    assert str(info.value) == (
        "services.small: 5 replicas need 5 hosts (one per host: a fixed port), but 3 are up (a2 did not answer)"
        " with room for 0.5 cpu, 1536M (h1 lacks 512M)"
    )
    # The reserve is kept back on every host.
    with pytest.raises(PlacementError, match=r"0 are up with room for 1.5 cpu \(h1 lacks 0.5 cpu, h2 lacks 0.5 cpu"):
        place([big], CLOUDS, ALL, capacities=sizes, reserve=Room(1000, 0))


CLOUDS_NAMES = tuple(h.name for h in CLOUDS)


def test_spread_and_binpack_pick_the_host_with_the_most_and_the_least_room():
    sizes = {h.name: Room(4000, 8 << 30) for h in CLOUDS}
    first = svc(name="first", replicas=2, resources={"cpu": 2})  # on h1 and h2
    spread = svc(name="spread", replicas=1, resources={"cpu": 1}, port=81)
    packed = svc(name="packed", replicas=1, resources={"cpu": 1}, strategy="binpack", port=81)
    assert place([first, spread], CLOUDS, ALL, capacities=sizes).hosts_of["spread"] == ("h3",)
    assert place([first, packed], CLOUDS, ALL, capacities=sizes).hosts_of["packed"] == ("h1",)


def test_spread_targets_share_the_replicas_and_a_full_group_gives_its_share_to_the_others():
    s = svc(replicas=4, spread={"label": "provider", "targets": {"aws": "25%", "hetzner": "75%"}})
    assert Counter(h[0] for h in place_service(s, CLOUDS, ALL)) == {"h": 3, "a": 1}
    # 80% of 4 is 3.2: hetzner gets 3 (rounded down, the nearest), aws the one left.
    s = svc(replicas=4, spread={"label": "provider", "targets": {"hetzner": "80%"}})
    assert Counter(h[0] for h in place_service(s, CLOUDS, ALL)) == {"h": 3, "a": 1}
    # aws wants 4 of 5 but has 2 hosts: hetzner takes the rest, and the placement says so.
    s = svc(replicas=5, spread={"label": "provider", "targets": {"aws": "80%", "hetzner": "20%"}})
    placed = place([s], CLOUDS, ALL)
    assert placed.hosts_of["web"] == CLOUDS_NAMES and placed.notes == (
        "services.web: spread target provider=aws wants 4 replicas, 2 fit there; the others took the rest",
    )
    # Targets adding up to 100% leave nothing to the values they do not list.
    s = svc(replicas=3, spread={"label": "provider", "targets": {"hetzner": "100%"}})
    assert place_service(s, CLOUDS, ALL) == ("h1", "h2", "h3")
    with pytest.raises(PlacementError, match=r"2 are up \(h1 did not answer\); a1, a2 get 0% of its spread targets"):
        place_service(s, CLOUDS, ALL - {"h1"})


def test_apportion_keeps_counts_within_one_of_the_quota_and_prefers_what_runs():
    third = [Fraction(1)] * 3
    assert apportion(4, third, [9, 9, 9], [0, 0, 0]) == ([2, 1, 1], [Fraction(4, 3)] * 3)
    assert apportion(4, third, [9, 9, 9], [1, 1, 2])[0] == [1, 1, 2]  # what runs meets the quotas: kept
    assert apportion(4, third, [9, 9, 9], [0, 2, 2])[0] == [1, 1, 2]  # 0 is not within one of 4/3: one moves
    assert apportion(4, third, [9, 9, 9], [4, 0, 0])[0] == [2, 1, 1]  # 4 in one group is not within one
    assert apportion(4, third, [0, 1, 9], [0, 0, 0])[0] == [0, 1, 3]  # water filling over the room


# --- properties ---------------------------------------------------------------------------------
PROVIDERS = ["aws", "gcp", "hetzner"]
TARGETS = [{"aws": "50%", "hetzner": "50%"}, {"aws": "70%"}, {"hetzner": "100%"},
           {"aws": "33.3%", "gcp": "33.3%", "hetzner": "33.4%"}, {"gcp": "10%", "aws": "0%"}]  # fmt: skip
REQUESTS = [None, {"cpu": 0.25}, {"cpu": 1.5}, {"memory": "256M"}, {"cpu": 0.5, "memory": "1G"}]


@st.composite
def clusters(draw, max_services=3):
    n = draw(st.integers(1, 10))
    labels = [draw(st.sampled_from(PROVIDERS + [None])) for _ in range(n)]
    hosts = hosts_of(*[(f"n{i}", {"provider": p} if p else {}) for i, p in enumerate(labels)])
    names = [h.name for h in hosts]
    available = {h.name for h in hosts if draw(st.booleans()) or draw(st.booleans())}
    sizes = {h.name: Room(draw(st.sampled_from([1000, 2000, 4000])), draw(st.sampled_from([1, 2, 4])) << 30) for h in hosts}
    reserve = draw(st.sampled_from([NOTHING, Room(500, 512 << 20)]))
    services = []
    for k in range(draw(st.integers(1, max_services))):
        spread = draw(st.sampled_from([None, "provider", "targets"]))
        if spread == "targets":
            spread = {"label": "provider", "targets": draw(st.sampled_from(TARGETS))}
        constraint = draw(st.sampled_from([None, "aws", ("aws", "gcp")]))
        services.append(Service(
            name=f"s{k}", image="i", replicas=draw(st.integers(0, n)), spread=spread,
            constraints={"provider": constraint} if constraint else {},
            resources=draw(st.sampled_from(REQUESTS)), strategy=draw(st.sampled_from(["spread", "binpack"])),
            port=draw(st.sampled_from([None, 80, 80 + k])), ports=draw(st.sampled_from(["fixed", "dynamic"])),
        ))  # fmt: skip
    # A host once per running replica (several where the service allows it).
    running = {s.name: sorted(draw(st.lists(st.sampled_from(names), max_size=2 * n))) for s in services}
    return hosts, available, running, services, sizes, reserve


def placed_or_none(hosts, available, running, services, sizes, reserve, rebalance=False) -> Placement | None:
    try:
        return place(services, hosts, available, running, capacities=sizes, reserve=reserve, rebalance=rebalance)
    except PlacementError as exc:
        assert str(exc).startswith("services.") and "\n" not in str(exc)
        return None


def fixed(s: Service) -> bool:
    return s.ports == "fixed" and s.port is not None


def check_placement(case, placed: Placement) -> None:
    hosts, available, _, services, sizes, reserve = case
    by_name = {h.name: h for h in hosts}
    used: dict[str, list[int]] = {h.name: [0, 0] for h in hosts}
    ports: set[tuple[str, int]] = set()
    for s in services:
        chosen = placed.hosts_of[s.name]
        # Exactly `replicas`, each on an available and allowed host, in file order; with a
        # fixed port on distinct hosts.
        assert len(chosen) == s.replicas
        if fixed(s):
            assert len(set(chosen)) == len(chosen)
        assert all(n in available and s.allows(by_name[n]) for n in chosen)
        assert list(chosen) == [h.name for h in hosts for _ in range(chosen.count(h.name))]
        for n in chosen:
            used[n][0] += request_of(s).cpu
            used[n][1] += request_of(s).memory
            if fixed(s):
                assert (n, s.port) not in ports
                ports.add((n, s.port))
    # Never overcommitted.
    for n, (cpu, memory) in used.items():
        assert cpu <= sizes[n].cpu - reserve.cpu or cpu == 0
        assert memory <= sizes[n].memory - reserve.memory or memory == 0


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_placement_properties(case):
    hosts, available, running, services, sizes, reserve = case
    placed = placed_or_none(*case)
    if placed is None:
        return
    check_placement(case, placed)
    # Deterministic, and stable: placing again with the result as what runs gives the same hosts.
    assert placed_or_none(*case) == placed
    again = placed_or_none(hosts, available, placed.hosts_of, services, sizes, reserve)
    assert again is not None and again.hosts_of == placed.hosts_of


@settings(max_examples=300, deadline=None)
@given(clusters(max_services=1))
def test_spread_is_within_one_replica_of_its_targets_unless_a_group_is_out_of_room(case):
    # Rebalanced (a normal placement leaves running replicas where they are, off target or not).
    hosts, available, running, services, sizes, reserve = case
    placed = placed_or_none(*case, rebalance=True)
    if placed is None:
        return
    s = services[0]
    chosen = Counter(placed.hosts_of[s.name])
    matching = [h for h in hosts if s.allows(h)]
    weights = group_weights(s, (spread_group(s, h) for h in matching))
    total = sum(weights.values())
    count = Counter(spread_group(s, h) for h in matching for _ in range(chosen[h.name]))
    need = request_of(s)

    def room_left(g):  # a host of the group that could still take a replica
        return any(
            spread_group(s, h) == g and h.name in available and not (fixed(s) and chosen[h.name])
            and need.cpu * (chosen[h.name] + 1) <= sizes[h.name].cpu - reserve.cpu
            and need.memory * (chosen[h.name] + 1) <= sizes[h.name].memory - reserve.memory
            for h in matching
        )  # fmt: skip

    wanted = {g: s.replicas * w / total if total else 0 for g, w in weights.items()}
    short = [g for g in weights if count[g] < wanted[g] and not room_left(g)]  # full below its share
    for g in weights:
        if count[g] < int(wanted[g]):
            assert not room_left(g), (g, count, wanted)  # under by a whole replica only when full
        if not short:
            assert count[g] <= -(-wanted[g] // 1), (g, count, wanted)  # over only to make up for a full group


@settings(max_examples=300, deadline=None)
@given(clusters(), st.integers(1, 3), st.data())
def test_scaling_up_never_moves_a_running_replica(case, more, data):
    hosts, available, running, services, sizes, reserve = case
    before = placed_or_none(hosts, available, {}, services, sizes, reserve)
    if before is None:
        return
    k = data.draw(st.integers(0, len(services) - 1))
    bigger = list(services)
    bigger[k] = services[k].model_copy(update={"replicas": services[k].replicas + more})
    after = placed_or_none(hosts, available, before.hosts_of, bigger, sizes, reserve)
    if after is None:
        return
    for s in services:
        assert not Counter(before.hosts_of[s.name]) - Counter(after.hosts_of[s.name]), s.name


def test_room_a_replica_scaled_away_frees_is_there_for_the_services_before_it():
    # gone (after web in the file) scaled to 0 on h1: its room is given back before web is
    # placed, so web spreads onto hetzner now, not only once gone's replica has been removed.
    hosts = hosts_of(("a1", {"provider": "aws"}), ("h1", {"provider": "hetzner"}), ("a2", {"provider": "aws"}))
    web = svc(name="web", replicas=2, spread="provider", resources={"cpu": 0.25})
    gone = svc(name="gone", replicas=0, resources={"cpu": 1})
    sizes = {h.name: Room(1000, 1 << 30) for h in hosts}
    placed = place([web, gone], hosts, {"a1", "h1", "a2"}, {"gone": {"h1"}}, capacities=sizes)
    assert placed.hosts_of == {"web": ("a1", "h1"), "gone": ()}


def test_several_replicas_a_host_go_evenly_and_a_rebalance_moves_them_to_an_added_host():
    dynamic = svc(replicas=6, ports="dynamic", resources={"cpu": 0.5})
    three, four = CLOUDS[:3], CLOUDS[:4]
    sizes = {h.name: Room(2000, 4 << 30) for h in CLOUDS}
    placed = place([dynamic], three, {h.name for h in three}, capacities=sizes)
    assert placed.hosts_of["web"] == ("h1", "h1", "h2", "h2", "h3", "h3")
    # A fourth host: a normal placement leaves them; a rebalance moves one from the last host
    # with the most to a1, and names the move.
    up4 = {h.name for h in four}
    assert place([dynamic], four, up4, placed.hosts_of, capacities=sizes) == placed
    moved = place([dynamic], four, up4, placed.hosts_of, capacities=sizes, rebalance=True)
    assert moved.hosts_of["web"] == ("h1", "h1", "h2", "h2", "h3", "a1")
    assert placed.moves(moved) == {"web": (("h3",), ("a1",))}
    # Room is counted per replica: 2 cpu less the reserve's 0.5 holds three of 0.5 on a host.
    with pytest.raises(PlacementError, match=r"^services\.web: 7 replicas of 0.5 cpu each, but the hosts up have room for 6 \(h1 3, h2 3\)$"):
        place([dynamic.model_copy(update={"replicas": 7})], CLOUDS[:2], {"h1", "h2"}, capacities=sizes, reserve=Room(500, 0))


@settings(max_examples=300, deadline=None)
@given(clusters(), st.integers(0, 3))
def test_a_normal_placement_never_moves_a_running_replica_and_a_rebalance_settles(case, added):
    """Rebalance only when asked: with hosts added (or none), what a placement put stays; a
    rebalance is itself stable (a second one moves nothing) and evens a spread service out."""
    hosts, available, running, services, sizes, reserve = case
    before = placed_or_none(hosts, available, running, services, sizes, reserve)
    if before is None:
        return
    extra = hosts_of(*[(f"x{i}", dict(hosts[i % len(hosts)].labels)) for i in range(added)])
    more = tuple(hosts) + tuple(Host(name=h.name, address=f"10.0.1.{i + 1}", labels=h.labels) for i, h in enumerate(extra))
    bigger = {**sizes, **{h.name: Room(2000, 2 << 30) for h in extra}}
    up = set(available) | {h.name for h in extra}
    grown = (more, up, before.hosts_of, services, bigger, reserve)
    after = placed_or_none(*grown)
    assert after is not None and after.hosts_of == before.hosts_of
    balanced = placed_or_none(*grown, rebalance=True)
    if balanced is None:
        return
    check_placement((more, up, None, services, bigger, reserve), balanced)
    again = placed_or_none(more, up, balanced.hosts_of, services, bigger, reserve, rebalance=True)
    assert again is not None and again.hosts_of == balanced.hosts_of
    for s in services:
        if fixed(s) or s.strategy != "spread" or s.resources is not None:
            continue
        # Without resources every candidate of a group fits: a host runs at most one more.
        counts = Counter(balanced.hosts_of[s.name])
        for g in {spread_group(s, h) for h in more}:
            members = [h.name for h in more if spread_group(s, h) == g and h.name in up and s.allows(h)]
            if members and any(counts[m] for m in members):
                assert max(counts[m] for m in members) - min(counts[m] for m in members) <= 1, (g, counts)


def test_a_rebalance_counts_the_room_a_later_service_moving_away_frees():
    # Found by hypothesis: s1's three replicas fill n3 (gcp), so the first round puts both of
    # s0's on aws; s1 then spreads out and frees n3, where s0's gcp share fits. One rebalance
    # must end where a second one would (s0 on both providers), not move s0 on the next `up`.
    hosts = hosts_of(("n2", {"provider": "aws"}), ("n3", {"provider": "gcp"}), *[(f"n{i}", {"provider": "aws"}) for i in range(4, 7)])
    s0 = Service(name="s0", image="i", replicas=2, spread="provider", resources={"cpu": 0.5, "memory": "1G"})
    s1 = Service(name="s1", image="i", replicas=3, resources={"cpu": 0.25})
    sizes = {h.name: Room(1000, 1 << 30) for h in hosts}
    names = {h.name for h in hosts}
    first = place([s0, s1], hosts, names, {"s1": ["n3"] * 3}, capacities=sizes, rebalance=True)
    assert Counter(spread_group(s0, h) for h in hosts for n in first.hosts_of["s0"] if n == h.name) == {"aws": 1, "gcp": 1}
    again = place([s0, s1], hosts, names, first.hosts_of, capacities=sizes, rebalance=True)
    assert again.hosts_of == first.hosts_of
    # Without a rebalance nothing runs anywhere else than it did.
    kept = place([s0, s1], hosts, names, {"s1": ["n3"] * 3}, capacities=sizes)
    assert kept.hosts_of["s1"] == ("n3", "n3", "n3")
