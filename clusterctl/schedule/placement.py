"""Placement: which hosts run each service's replicas. Pure: cluster file, host sizes and the
replicas running now in; per service, the host of each replica out (a host as often as it runs
one).

A service with a fixed port (`ports: fixed`, the default, and a port) runs one replica per host
at most, each publishing that port; any other service (`ports: dynamic`, or no port) may run
several replicas on one host. A host is a candidate for a service when it answered the probe,
meets the service's constraints, is free of its fixed port and has the room its `resources` ask
for: CPU (millicores) and memory (bytes) are integers, counted down in place as replicas land,
so nothing is ever overcommitted.

Each service, in the file's order:
1. Its spread groups (the values of its `spread` label; without `spread`, one group of all
   hosts) get their number of replicas: each group's target share of them (even, or the
   `targets`), where a group with too little room keeps what it can hold and the others share
   the rest (water filling). Each group gets its share rounded down or up (within one replica
   of the targets), the one nearest what runs there now.
2. Running replicas stay where they are: a group keeps what runs there even above its share,
   and only new replicas go where the targets want them; only a scale-down removes replicas,
   from the groups most over their share. With `rebalance` (asked for: `up --rebalance`) groups
   give up what runs over their share, and with `strategy: spread` a host runs at most one
   replica more than any candidate of its group (replicas move to hosts that were added).
3. New replicas go to the best candidates of their group, a heap keyed by score whose top is
   updated in place as it takes replicas: with `strategy: spread` the host with the fewest of
   this service's replicas, then the most room left, then the fewest replicas, then file order;
   with `binpack` the one with the least room that still fits.
Running replicas hold their room and their port before any service is placed, so a scale-up of
one service never pushes out a replica of another, and every service drops the running replicas
it no longer wants before any new replica is placed, so no service is placed around room about
to be freed. Hosts that did not answer are not candidates: their replicas go to hosts that did.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import NamedTuple

from clusterctl.config.models import ClusterFile, Host, Reserve, Resources, Service, format_size, replicas_need

# A refusal names this many hosts of a kind, then counts the rest.
NAMED_HOSTS = 5


class PlacementError(ValueError):
    """A service cannot be placed (too few candidates); one line naming the service."""


class Room(NamedTuple):
    """An amount of CPU, in millicores, and memory, in bytes."""

    cpu: int
    memory: int


# A host whose size neither the file nor Docker tells (`clusterctl place` asks no host).
DEFAULT_CAPACITY = Room(2000, 4 << 30)
NOTHING = Room(0, 0)


def millicores(cores: float | None) -> int:
    return round(cores * 1000) if cores else 0


def request_of(service: Service) -> Room:
    r = service.resources
    return Room(millicores(r.cpu), r.memory or 0) if r is not None else NOTHING


def capacity_of(host: Host, cpus: int | None = None, memory: int | None = None) -> Room:
    """The host's size: its `capacity` in the file, else what Docker reports (NCPU, MemTotal),
    else DEFAULT_CAPACITY; each of CPU and memory on its own."""
    given = host.capacity or Resources()
    cpu = millicores(given.cpu) or (cpus or 0) * 1000 or DEFAULT_CAPACITY.cpu
    return Room(cpu, given.memory or memory or DEFAULT_CAPACITY.memory)


def reserve_of(reserve: Reserve) -> Room:
    return Room(millicores(reserve.cpu), reserve.memory)


def describe(room: Room) -> str:
    parts = [f"{room.cpu / 1000:g} cpu"] if room.cpu else []
    return ", ".join(parts + ([format_size(room.memory)] if room.memory else [])) or "-"


@dataclass(frozen=True)
class Placement:
    # Service name -> the host of each replica (a host once per replica), in the file's order.
    hosts_of: Mapping[str, tuple[str, ...]]
    # One line each where a spread target could not be met (too little room in a group).
    notes: tuple[str, ...] = ()

    @cached_property
    def _on_host(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for name, hosts in self.hosts_of.items():
            for host in hosts:
                out.setdefault(host, []).append(name)
        return {host: tuple(names) for host, names in out.items()}

    def services_on(self, host: str) -> tuple[str, ...]:
        """The service of each replica on the host (a name once per replica)."""
        return self._on_host.get(host, ())

    def moves(self, other: Placement) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Service -> (hosts losing a replica, hosts gaining one) from this placement to
        `other` (a host once per replica), for the services whose replicas differ."""
        out = {}
        for name, hosts in self.hosts_of.items():
            before, after = Counter(hosts), Counter(other.hosts_of.get(name, ()))
            if before != after:
                out[name] = (tuple(sorted((before - after).elements())), tuple(sorted((after - before).elements())))
        return out


def spread_group(service: Service, host: Host) -> str:
    # Without `spread` all hosts are one group; a host without the label is a group of its own.
    return host.labels.get(service.spread.label, "") if service.spread else ""


def group_weights(service: Service, groups: Iterable[str]) -> dict[str, Fraction]:
    """Each group's target share: the `targets`, with what they leave split evenly over the
    groups they do not list; without targets, even."""
    groups = list(dict.fromkeys(groups))
    shares = service.spread.shares() if service.spread else {}
    if not shares:
        return {g: Fraction(1) for g in groups}
    rest = [g for g in groups if g not in shares]
    left = (100 - sum(shares.values())) / len(rest) if rest else Fraction(0)
    return {g: shares.get(g, left) for g in groups}


def apportion(total: int, weights: list[Fraction], caps: list[int], now: list[int]) -> tuple[list[int], list[Fraction]]:
    """How many of `total` replicas each group gets, and its exact share (quota): shares in
    proportion to `weights`, a group capped at `caps` (its candidates) and the rest shared by the
    others. Each count is its quota rounded down or up, the one of the two nearest `now` (the
    count running there), so a placement that meets its quotas stays as it is; ties go to the
    group furthest from its quota, then the first."""
    n = len(weights)
    quota = [Fraction(0)] * n
    open_ = [g for g in range(n) if weights[g] > 0 and caps[g] > 0]
    left = total = min(total, sum(caps[g] for g in open_))
    while open_:
        weight = sum(weights[g] for g in open_)
        full = [g for g in open_ if left * weights[g] >= caps[g] * weight]
        if not full:
            for g in open_:
                quota[g] = left * weights[g] / weight
            break
        for g in full:
            quota[g] = Fraction(caps[g])
            left -= caps[g]
        open_ = [g for g in open_ if g not in full]
    low = [math.floor(q) for q in quota]
    high = [math.ceil(q) for q in quota]
    count = [min(max(c, lo), hi) for c, lo, hi in zip(now, low, high)]
    extra = sum(count) - total
    if extra > 0:
        for g in sorted((g for g in range(n) if count[g] > low[g]), key=lambda g: (quota[g] - count[g], g))[:extra]:
            count[g] -= 1
    elif extra < 0:
        for g in sorted((g for g in range(n) if count[g] < high[g]), key=lambda g: (count[g] - quota[g], g))[:-extra]:
            count[g] += 1
    return count, quota


class Hosts:
    """The hosts' room and ports while a placement is made: counted down in place."""

    def __init__(self, hosts: tuple[Host, ...], capacities: Mapping[str, Room], reserve: Room) -> None:
        sizes = [capacities.get(h.name, DEFAULT_CAPACITY) for h in hosts]
        self.total = [Room(max(0, s.cpu - reserve.cpu), max(0, s.memory - reserve.memory)) for s in sizes]
        self.free_cpu = [t.cpu for t in self.total]
        self.free_memory = [t.memory for t in self.total]
        self.replicas = [0] * len(hosts)
        self.port_owner: dict[int, dict[int, str]] = {}  # fixed port -> host index -> service

    def fits(self, i: int, need: Room) -> bool:
        return self.free_cpu[i] >= need.cpu and self.free_memory[i] >= need.memory

    def how_many_fit(self, i: int, need: Room, limit: int) -> int:
        n = limit
        if need.cpu:
            n = min(n, self.free_cpu[i] // need.cpu)
        if need.memory:
            n = min(n, self.free_memory[i] // need.memory)
        return max(0, n)

    def take(self, i: int, service: str, need: Room, port: int | None) -> None:
        self.free_cpu[i] -= need.cpu
        self.free_memory[i] -= need.memory
        self.replicas[i] += 1
        if port is not None:
            self.port_owner.setdefault(port, {})[i] = service

    def give_back(self, i: int, need: Room, port: int | None) -> None:
        self.free_cpu[i] += need.cpu
        self.free_memory[i] += need.memory
        self.replicas[i] -= 1
        if port is not None:
            self.port_owner[port].pop(i, None)

    def used(self, i: int) -> float:
        """The larger of the CPU and memory shares in use: how full the host is."""
        total = self.total[i]
        cpu = 1 - self.free_cpu[i] / total.cpu if total.cpu else 1.0
        return max(cpu, 1 - self.free_memory[i] / total.memory if total.memory else 1.0)


class Wants(NamedTuple):
    """One service as the placement sees it."""

    service: Service
    need: Room
    # Its fixed host port (one replica per host), else None.
    port: int | None
    # Spread group -> the hosts meeting its constraints.
    partition: Mapping[str, list[int]]


def place(
    services: Iterable[Service],
    hosts: Iterable[Host],
    available: Collection[str],
    running: Mapping[str, Iterable[str]] | None = None,
    ports: Mapping[str, int | None] | None = None,
    capacities: Mapping[str, Room] | None = None,
    reserve: Room = NOTHING,
    rebalance: bool = False,
) -> Placement:
    """`running`: service name -> the host of each replica running now (from the facts; a
    host once per replica); `ports`: service name -> the port it publishes (a fixed one is
    never shared by two services on a host); `capacities`: host name -> its size (capacity_of;
    default DEFAULT_CAPACITY), of which `reserve` is kept back on every host; `rebalance`: move
    running replicas to meet the spread (else they stay)."""
    hosts, services = tuple(hosts), tuple(services)
    placed = _place_once(services, hosts, available, running, ports, capacities, reserve, rebalance)
    # A rebalance places each service around where the services after it run now, and those
    # may move too (a spread service leaving a host makes room there for an earlier one): it
    # is planned again from its own result until a rebalance from there moves nothing, so a
    # second `up --rebalance` never moves what the first placed.
    for _ in range(REBALANCE_ROUNDS if rebalance else 0):
        try:
            again = _place_once(services, hosts, available, placed.hosts_of, ports, capacities, reserve, rebalance)
        except PlacementError:
            break
        if again.hosts_of == placed.hosts_of:
            break
        placed = again
    return placed


# At most this many more rounds of a rebalance (each is one placement); in practice one or two.
REBALANCE_ROUNDS = 4


def _place_once(
    services: tuple[Service, ...],
    hosts: tuple[Host, ...],
    available: Collection[str],
    running: Mapping[str, Iterable[str]] | None,
    ports: Mapping[str, int | None] | None,
    capacities: Mapping[str, Room] | None,
    reserve: Room,
    rebalance: bool,
) -> Placement:
    running = running or {}
    ports = ports or {}
    position = {h.name: i for i, h in enumerate(hosts)}
    up = [h.name in available for h in hosts]
    state = Hosts(hosts, capacities or {}, reserve)
    # Services with the same constraints and spread label share their hosts' grouping.
    partitions: dict[tuple, dict[str, list[int]]] = {}
    wants: list[Wants] = []
    for svc in services:
        key = (tuple(sorted(svc.constraints.items())), svc.spread.label if svc.spread else None)
        if key not in partitions:
            partition: dict[str, list[int]] = {}
            for i, h in enumerate(hosts):
                if svc.allows(h):
                    partition.setdefault(spread_group(svc, h), []).append(i)
            partitions[key] = partition
        port = ports.get(svc.name, svc.port)
        wants.append(Wants(svc, request_of(svc), port if svc.ports == "fixed" else None, partitions[key]))
    # Replicas running now hold their room and port first, in the file's order.
    held: dict[str, dict[int, int]] = {}
    for w in wants:
        svc, need, port = w.service, w.need, w.port
        mine: dict[int, int] = {}
        for i in sorted(position[n] for n in running.get(svc.name, ()) if n in position):
            if not up[i] or not svc.allows(hosts[i]) or not state.fits(i, need):
                continue
            if port is not None and i in state.port_owner.get(port, {}):
                continue
            state.take(i, svc.name, need, port)
            mine[i] = mine.get(i, 0) + 1
        held[svc.name] = mine
    # First every service keeps what it may of what runs, giving back the room of the rest (a
    # replica scaled away, or over its share when rebalancing), so that no earlier service is
    # placed around room that is about to be freed; then the new replicas, in the file's order.
    for w in wants:
        if held[w.service.name]:
            share_out(w, up, held[w.service.name], state, rebalance)
    out: dict[str, tuple[str, ...]] = {}
    notes: list[str] = []
    for w in wants:
        kept = held[w.service.name]
        if sum(kept.values()) == w.service.replicas and not rebalance:  # all run and stay: nothing to choose
            chosen = kept
        else:
            chosen, note = place_new(w, hosts, up, kept, state, rebalance)
            notes += note
        out[w.service.name] = tuple(hosts[i].name for i in sorted(chosen) for _ in range(chosen[i]))
    return Placement(out, tuple(notes))


class Share(NamedTuple):
    """One service's spread groups: who runs there and stays, the other candidates, and the
    number of replicas each group gets with its exact quota."""

    groups: dict[str, tuple[dict[int, int], dict[int, int]]]  # group -> (kept: host -> count, room: host -> how many more fit)
    counts: dict[str, int]
    quotas: dict[str, Fraction]
    weights: dict[str, Fraction]
    room: int  # how many replicas the groups with a share could hold


def keep_running(counts: list[int], quotas: list[Fraction], now: list[int], total: int) -> list[int]:
    """Counts that keep what runs in each group (only a scale-down takes some away, from the
    groups most over their quota): new replicas only where `counts` wants more."""
    counts = [max(c, k) for c, k in zip(counts, now)]
    extra = sum(counts) - total
    while extra > 0:
        growing = [g for g in range(len(counts)) if counts[g] > now[g]] or [g for g in range(len(counts)) if counts[g] > 0]
        g = max(growing, key=lambda g: (counts[g] - quotas[g], g))
        counts[g] -= 1
        extra -= 1
    return counts


def share_out(w: Wants, up: list[bool], held: dict[int, int], state: Hosts, rebalance: bool) -> Share:
    """The service's groups and counts (apportion) from the room there is now; running
    replicas over their group's count are dropped from `held` and their room given back."""
    svc, need, port = w.service, w.need, w.port
    taken = state.port_owner.get(port, {}) if port is not None else {}
    groups: dict[str, tuple[dict[int, int], dict[int, int]]] = {}
    for g, members in w.partition.items():
        kept = {i: held[i] for i in members if i in held}
        room: dict[int, int] = {}
        for i in members:
            if not up[i]:
                continue
            if port is not None:
                if i not in held and i not in taken and state.fits(i, need):
                    room[i] = 1
            elif n := state.how_many_fit(i, need, svc.replicas):
                room[i] = n
        groups[g] = (kept, room)
    weights = group_weights(svc, groups)
    names = list(weights)
    caps = [min(svc.replicas, sum(groups[g][0].values()) + sum(groups[g][1].values())) if weights[g] else 0 for g in names]
    now = [sum(groups[g][0].values()) for g in names]
    counts, quotas = apportion(svc.replicas, [weights[g] for g in names], caps, now)
    if not rebalance:
        counts = keep_running(counts, quotas, now, svc.replicas)
    for g, count in zip(names, counts):
        kept = groups[g][0]
        for _ in range(sum(kept.values()) - count):  # more run here than it gets: from the host with the most, the last first
            i = max(kept, key=lambda i: (kept[i], i))
            state.give_back(i, need, port)
            kept[i] -= 1
            held[i] -= 1
            if not kept[i]:
                del kept[i], held[i]
    return Share(groups, dict(zip(names, counts)), dict(zip(names, quotas)), weights, sum(caps))


def spread_key(state: Hosts, per: Mapping[int, int], i: int) -> tuple:
    return (per.get(i, 0), state.used(i), state.replicas[i], i)


def binpack_key(state: Hosts, per: Mapping[int, int], i: int) -> tuple:
    return (-state.used(i), -state.replicas[i], i)


def even_out(w: Wants, up: list[bool], kept: dict[int, int], members: list[int], state: Hosts) -> None:
    """Rebalancing with `strategy: spread`: a replica moves from the group's host with the most
    of them to a candidate with at least two fewer that fits it, until none is left."""
    while kept:
        source = max(kept, key=lambda i: (kept[i], i))
        fitting = [i for i in members if up[i] and i != source and kept.get(i, 0) <= kept[source] - 2 and state.fits(i, w.need)]
        if not fitting:
            return
        target = min(fitting, key=lambda i: spread_key(state, kept, i))
        state.give_back(source, w.need, None)
        kept[source] -= 1
        if not kept[source]:
            del kept[source]
        state.take(target, w.service.name, w.need, None)
        kept[target] = kept.get(target, 0) + 1


def place_new(
    w: Wants, hosts: tuple[Host, ...], up: list[bool], held: dict[int, int], state: Hosts, rebalance: bool
) -> tuple[dict[int, int], list[str]]:
    """Host index -> replicas of one service (the new ones' room taken from `state`), and
    notes on spread targets it could not meet."""
    svc, need, port = w.service, w.need, w.port
    share = share_out(w, up, held, state, rebalance)
    if share.room < svc.replicas:
        taken = state.port_owner.get(port, {}) if port is not None else {}
        matching = sorted(i for members in w.partition.values() for i in members)
        raise PlacementError(refusal(w, hosts, matching, up, state, taken, share.room, share.weights))
    chosen: dict[int, int] = {}
    notes: list[str] = []
    total_weight = sum(share.weights.values())
    key = binpack_key if svc.strategy == "binpack" else spread_key
    for g, (kept, room) in share.groups.items():
        count, quota = share.counts[g], share.quotas[g]
        if rebalance and port is None and svc.strategy == "spread":
            even_out(w, up, kept, w.partition[g], state)
        chosen.update(kept)
        wanted = svc.replicas * share.weights[g] / total_weight if total_weight else Fraction(0)
        if svc.spread and svc.spread.targets and math.ceil(quota) < math.floor(wanted):
            notes.append(f"services.{svc.name}: spread target {svc.spread.label}={g or '(none)'} wants "
                         f"{float(wanted):g} replicas, {count} fit there; the others took the rest")  # fmt: skip
        more = count - sum(kept.values())
        if more <= 0:
            continue
        if port is not None:
            # One replica per host: a host is out for this service once chosen, so one sort of
            # the group's candidates picks them all.
            for i in sorted(room, key=lambda i: key(state, chosen, i))[:more]:
                state.take(i, svc.name, need, port)
                chosen[i] = 1
            continue
        # Several per host: taking a replica changes only the top host's score, so it is
        # pushed back with its new one while it still fits.
        heap = [(key(state, chosen, i), i) for i in w.partition[g] if up[i] and state.fits(i, need)]
        heapq.heapify(heap)
        while more and heap:
            i = heapq.heappop(heap)[1]
            state.take(i, svc.name, need, None)
            chosen[i] = chosen.get(i, 0) + 1
            more -= 1
            if state.fits(i, need):
                heapq.heappush(heap, (key(state, chosen, i), i))
    return chosen, notes


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:NAMED_HOSTS])
    return shown + (f" and {len(names) - NAMED_HOSTS} more" if len(names) > NAMED_HOSTS else "")


def refusal(
    w: Wants,
    hosts: tuple[Host, ...],
    matching: list[int],
    up: list[bool],
    state: Hosts,
    taken: Mapping[int, str],
    room: int,
    weights: Mapping[str, Fraction],
) -> str:
    """One line: the service, what it needs, how many replicas fit and why the other hosts it
    looked at take none (down, port taken, how much room they lack, outside its targets)."""
    svc, need = w.service, w.need
    if w.port is None:  # several a host: how many each host that is up has room for
        holds = [f"{hosts[i].name} {state.how_many_fit(i, need, svc.replicas)}" for i in matching if up[i]]
        each = f" of {describe(need)} each" if need != NOTHING else ""
        where = " matching its constraints" if svc.constraints else ""
        why = f"the hosts up{where} have room for {room}" + (f" ({_some(holds)})" if holds and need != NOTHING else "")
        down = [hosts[i].name for i in matching if not up[i]]
        if down:
            why += f"; {_some(down)} did not answer"
        outside = [hosts[i].name for i in matching if not weights.get(spread_group(svc, hosts[i]))]
        if outside:
            why += f"; {_some(outside)} get 0% of its spread targets"
        return f"services.{svc.name}: {svc.replicas} replica{'s' if svc.replicas != 1 else ''}{each}, but {why}"
    why = f"{room} {'is' if room == 1 else 'are'} up"
    if svc.constraints:
        why += " among the hosts matching its constraints"
    down = [hosts[i].name for i in matching if not up[i]]
    if down:
        why += f" ({_some(down)} did not answer)"
    busy = [f"{hosts[i].name} by {taken[i]}" for i in matching if up[i] and i in taken]
    if busy:
        why += f" and free of its port (taken on {_some(busy)})"
    if need != NOTHING:
        short = []
        for i in matching:
            if up[i] and i not in taken and not state.fits(i, need):
                lack = Room(max(0, need.cpu - state.free_cpu[i]), max(0, need.memory - state.free_memory[i]))
                short.append(f"{hosts[i].name} lacks {describe(lack)}")
        why += f" with room for {describe(need)}" + (f" ({_some(short)})" if short else "")
    outside = [hosts[i].name for i in matching if not weights.get(spread_group(svc, hosts[i]))]
    if outside:
        why += f"; {_some(outside)} get 0% of its spread targets"
    return f"services.{svc.name}: {replicas_need(svc.replicas)}, but {why}"


def place_service(
    service: Service,
    hosts: Iterable[Host],
    available: Collection[str],
    running_on: Collection[str] = (),
    capacities: Mapping[str, Room] | None = None,
) -> tuple[str, ...]:
    """One service placed alone (for tests and previews)."""
    return place([service], hosts, available, {service.name: running_on}, capacities=capacities).hosts_of[service.name]


def place_file(
    spec: ClusterFile,
    available: Collection[str],
    running: Mapping[str, Iterable[str]] | None = None,
    ports: Mapping[str, int | None] | None = None,
    engines: Mapping[str, tuple[int | None, int | None]] | None = None,
    rebalance: bool = False,
) -> Placement:
    """The file's services over its hosts, each host sized by its `capacity`, else by `engines`
    (host -> Docker's CPU count and memory, from the facts), else by default, less the file's
    placement.reserve."""
    engines = engines or {}
    capacities = {h.name: capacity_of(h, *engines.get(h.name, (None, None))) for h in spec.hosts}
    return place(spec.services, spec.hosts, available, running, ports, capacities, reserve_of(spec.placement.reserve), rebalance)
