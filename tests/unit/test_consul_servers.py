"""Which hosts run Consul servers (clusterctl/schedule/servers.py): examples, then hypothesis
properties over generated clusters (count, spread, explicit roles, stability)."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterctl.config.models import Host
from clusterctl.schedule.servers import ServerChoice, choose_servers, default_server_count, spread_value

SERVER, CLIENT = ("server",), ("client",)


def host(name: str, provider: str | None = None, roles=None, i: int = 0) -> Host:
    labels = {"provider": provider} if provider else {}
    return Host(name=name, address=f"10.0.{i // 250}.{i % 250 + 1}", roles=roles, labels=labels)


def hosts_of(*specs) -> tuple[Host, ...]:
    """specs: (name, provider) or (name, provider, roles)."""
    return tuple(host(*spec, i=i) if len(spec) < 3 else host(spec[0], spec[1], spec[2], i) for i, spec in enumerate(specs))


@pytest.mark.parametrize(("count", "servers"), [(1, 1), (2, 1), (3, 3), (4, 3), (6, 3), (7, 5), (8, 5), (100, 5)])
def test_default_count_by_number_of_hosts(count, servers):
    assert default_server_count(count) == servers
    chosen = choose_servers(hosts_of(*[(f"n{i}", None) for i in range(count)]))
    assert chosen.servers == tuple(f"n{i}" for i in range(servers))  # without labels: file order


def test_seven_hosts_over_two_providers():
    hosts = hosts_of(("h1", "hetzner"), ("h2", "hetzner"), ("h3", "hetzner"), ("h4", "hetzner"),
                     ("a1", "aws"), ("a2", "aws"), ("a3", "aws"))  # fmt: skip
    chosen = choose_servers(hosts, "provider")
    assert chosen.servers == ("h1", "h2", "h3", "a1", "a2")
    assert Counter(n[0] for n in chosen.servers) == {"h": 3, "a": 2}
    # Without spread: the first five in the file.
    assert choose_servers(hosts, None).servers == ("h1", "h2", "h3", "h4", "a1")


def test_explicit_roles_win_and_count_towards_the_default():
    # 7 hosts: the default is 5; two explicit servers, so three more are chosen, never w1.
    hosts = hosts_of(("s1", "a", SERVER), ("s2", "a", SERVER), ("w1", "b", CLIENT),
                     ("n1", "a"), ("n2", "b"), ("n3", "b"), ("n4", "a"))  # fmt: skip
    chosen = choose_servers(hosts, "provider")
    assert chosen.servers == ("s1", "s2", "n1", "n2", "n3")
    # More explicit servers than the default: no host without roles is a server.
    hosts = hosts_of(("s1", "a", SERVER), ("s2", "a", SERVER), ("s3", "a", SERVER), ("s4", "a", SERVER), ("n1", "a"))
    assert choose_servers(hosts).servers == ("s1", "s2", "s3", "s4")
    # Every host explicit client: no server (the consul phase refuses that file).
    assert choose_servers(hosts_of(("w1", "a", CLIENT), ("w2", "a", CLIENT))).servers == ()


def test_short_of_the_default_an_even_count_is_rounded_down():
    # 4 hosts (default 3), two explicit clients: two servers would need both for a quorum.
    hosts = hosts_of(("w1", None, CLIENT), ("w2", None, CLIENT), ("n1", None), ("n2", None))
    assert choose_servers(hosts).servers == ("n1",)


def test_running_servers_are_kept_past_the_default_with_a_note():
    # A cluster made when every host defaulted to server: nothing is demoted.
    hosts = hosts_of(*[(f"n{i}", None) for i in range(1, 5)])
    chosen = choose_servers(hosts, running={"n1", "n2", "n3", "n4"})
    assert chosen.servers == ("n1", "n2", "n3", "n4") and chosen.kept == ("n1", "n2", "n3", "n4")
    assert "4 servers kept" in chosen.note() and "default for this many hosts is 3" in chosen.note()
    assert "roles: [client]" in chosen.note()
    assert choose_servers(hosts).note() is None
    # An explicit client that runs a server now is a client all the same.
    hosts = hosts_of(("n1", None, CLIENT), ("n2", None), ("n3", None))
    assert choose_servers(hosts, running={"n1", "n2", "n3"}).servers == ("n2", "n3")


def test_a_running_server_stays_and_the_rest_are_chosen_around_it():
    hosts = hosts_of(("h1", "hetzner"), ("h2", "hetzner"), ("h3", "hetzner"), ("a1", "aws"), ("a2", "aws"))
    assert choose_servers(hosts, running={"h3"}).servers == ("h1", "h3", "a1")
    assert choose_servers(hosts, running={"a2"}).servers == ("h1", "h2", "a2")


# --- properties ---------------------------------------------------------------------------------

PROVIDERS = st.sampled_from(["hetzner", "aws", "gcp", None])
ROLES = st.sampled_from([None, None, None, SERVER, CLIENT])


@st.composite
def clusters(draw, roles=ROLES, min_size=1, max_size=14):
    n = draw(st.integers(min_size, max_size))
    return tuple(host(f"h{i}", draw(PROVIDERS), draw(roles), i) for i in range(n))


@st.composite
def running_sets(draw, hosts):
    return frozenset(draw(st.sets(st.sampled_from([h.name for h in hosts] + ["gone"]))))


def new_host(draw, hosts, roles=ROLES) -> tuple[Host, ...]:
    """The cluster with one host added at any position."""
    added = host("new", draw(PROVIDERS), draw(roles), len(hosts))
    at = draw(st.integers(0, len(hosts)))
    return (*hosts[:at], added, *hosts[at:])


@settings(max_examples=300, deadline=None)
@given(clusters(roles=st.just(None)))
def test_count_follows_the_number_of_hosts(hosts):
    assert len(choose_servers(hosts).servers) == default_server_count(len(hosts))


@settings(max_examples=300, deadline=None)
@given(clusters(roles=st.just(None)), st.sampled_from(["provider", None]))
def test_servers_go_evenly_over_the_spread_label(hosts, spread):
    chosen = choose_servers(hosts, spread)
    size = Counter(spread_value(h, spread) for h in hosts)
    count = Counter(spread_value(h, spread) for h in hosts if chosen.is_server(h.name))
    for u in size:
        for v in size:
            # A group holds at most one server fewer than another, unless all its hosts are servers.
            assert count[u] >= count[v] - 1 or count[u] == size[u], (u, v, count, size)


@settings(max_examples=300, deadline=None)
@given(st.data(), clusters())
def test_explicit_roles_always_win(data, hosts):
    chosen = choose_servers(hosts, "provider", data.draw(running_sets(hosts)))
    for h in hosts:
        if h.roles == SERVER:
            assert chosen.is_server(h.name)
        if h.roles == CLIENT:
            assert not chosen.is_server(h.name)
    assert set(chosen.servers) <= {h.name for h in hosts}
    assert list(chosen.servers) == [h.name for h in hosts if h.name in chosen.servers]  # file order


@settings(max_examples=300, deadline=None)
@given(st.data(), clusters())
def test_deterministic_and_a_fixed_point(data, hosts):
    running = data.draw(running_sets(hosts))
    first = choose_servers(hosts, "provider", running)
    assert choose_servers(tuple(hosts), "provider", set(running)) == first
    # Once the chosen servers run, the same servers are chosen again: `up` converges.
    assert choose_servers(hosts, "provider", first.servers).servers == first.servers


@settings(max_examples=300, deadline=None)
@given(st.data(), clusters())
def test_adding_a_host_anywhere_never_moves_a_server(data, hosts):
    before = choose_servers(hosts, "provider", data.draw(running_sets(hosts)))
    grown = new_host(data.draw, hosts)
    after = choose_servers(grown, "provider", before.servers)
    assert set(before.servers) <= set(after.servers)
    # Servers are added only to reach the grown cluster's default count, or the new host's roles.
    default = len(choose_servers(grown, "provider").servers)
    new_is_server = next(h for h in grown if h.name == "new").roles == SERVER
    assert len(after.servers) <= max(len(before.servers), default) + new_is_server


@settings(max_examples=300, deadline=None)
@given(st.data(), clusters(roles=st.just(None)))
def test_adding_a_host_without_roles_keeps_the_servers_and_the_default_count(data, hosts):
    before = choose_servers(hosts, "provider")
    grown = new_host(data.draw, hosts, roles=st.just(None))
    after = choose_servers(grown, "provider", before.servers)
    assert set(before.servers) <= set(after.servers)
    assert len(after.servers) == default_server_count(len(grown))


@settings(max_examples=300, deadline=None)
@given(st.data(), clusters(min_size=2))
def test_removing_a_host_that_is_not_a_server_never_moves_a_server(data, hosts):
    before = choose_servers(hosts, "provider", data.draw(running_sets(hosts)))
    clients = [h for h in hosts if not before.is_server(h.name)]
    if not clients:
        return
    gone = data.draw(st.sampled_from(clients))
    after = choose_servers(tuple(h for h in hosts if h is not gone), "provider", before.servers)
    assert after.servers == before.servers


def test_choice_is_a_value():
    c = ServerChoice(("a",), 1)
    assert c.is_server("a") and not c.is_server("b") and c.note() is None
