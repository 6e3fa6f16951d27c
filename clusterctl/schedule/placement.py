"""Placement: which hosts run each service's replicas. Pure: cluster file, host sizes and the
replicas running now in; per service, the hosts of its replicas out.

One replica per host (each publishes the service's port on its host's cluster address). A host
is a candidate for a service when it answered the probe, meets the service's constraints, is
free of its port and has the room its `resources` ask for: CPU (millicores) and memory (bytes)
are integers, counted down in place as replicas land, so nothing is ever overcommitted.

Each service, in the file's order:
1. Its spread groups (the values of its `spread` label; without `spread`, one group of all
   hosts) get their number of replicas: each group's target share of them (even, or the
   `targets`), where a group with too few candidates keeps what it can hold and the others share
   the rest (water filling). Each group gets its share rounded down or up, so the spread is
   within one replica of the targets, and a group keeps the count it runs now whenever that
   count is one of the two: a re-run and a scale-up never move a replica.
2. In each group, the replicas running there now stay; the others go to the best candidates:
   with `strategy: spread` the one with the most room left (then the fewest replicas, then file
   order), with `binpack` the one with the least room that still fits.
Running replicas hold their room and their port before any service is placed, so a scale-up of
one service never pushes out a replica of another, and every service drops the running replicas
it no longer wants (scaled away, over its group's count) before any new replica is placed, so no
service is placed around room about to be freed. Hosts that did not answer are not candidates:
their replicas go to hosts that did.
"""

from __future__ import annotations

import math
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
    # Service name -> the hosts running one replica each, in the cluster file's order.
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
        return self._on_host.get(host, ())


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
        self.port_owner: dict[int, dict[int, str]] = {}  # port -> host index -> service

    def fits(self, i: int, need: Room) -> bool:
        return self.free_cpu[i] >= need.cpu and self.free_memory[i] >= need.memory

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


def place(
    services: Iterable[Service],
    hosts: Iterable[Host],
    available: Collection[str],
    running: Mapping[str, Collection[str]] | None = None,
    ports: Mapping[str, int | None] | None = None,
    capacities: Mapping[str, Room] | None = None,
    reserve: Room = NOTHING,
) -> Placement:
    """`running`: service name -> hosts where a replica exists now (from the facts);
    `ports`: service name -> the port it publishes (two services never share one on a host);
    `capacities`: host name -> its size (capacity_of; default DEFAULT_CAPACITY), of which
    `reserve` is kept back on every host."""
    hosts = tuple(hosts)
    services = tuple(services)
    running = running or {}
    ports = ports or {}
    position = {h.name: i for i, h in enumerate(hosts)}
    up = [h.name in available for h in hosts]
    state = Hosts(hosts, capacities or {}, reserve)
    port_of = {s.name: ports.get(s.name, s.port) for s in services}
    # Services with the same constraints and spread label share their hosts' grouping.
    partitions: dict[tuple, dict[str, list[int]]] = {}
    partition_of: dict[str, dict[str, list[int]]] = {}
    for svc in services:
        key = (tuple(sorted(svc.constraints.items())), svc.spread.label if svc.spread else None)
        if key not in partitions:
            partition: dict[str, list[int]] = {}
            for i, h in enumerate(hosts):
                if svc.allows(h):
                    partition.setdefault(spread_group(svc, h), []).append(i)
            partitions[key] = partition
        partition_of[svc.name] = partitions[key]
    # Replicas running now hold their room and port first, in the file's order.
    held: dict[str, set[int]] = {}
    for svc in services:
        need, port, mine = request_of(svc), port_of[svc.name], set()
        for i in sorted(position[n] for n in running.get(svc.name, ()) if n in position):
            if up[i] and svc.allows(hosts[i]) and i not in state.port_owner.get(port, {}) and state.fits(i, need):
                state.take(i, svc.name, need, port)
                mine.add(i)
        held[svc.name] = mine
    # First every service keeps what its share allows of what runs, giving back the room of the
    # rest (a replica scaled away or over its target), so that no earlier service is placed
    # around room that is about to be freed; then the new replicas, in the file's order.
    for svc in services:
        if held[svc.name]:
            share_out(svc, hosts, partition_of[svc.name], up, held[svc.name], state, port_of[svc.name])
    out: dict[str, tuple[str, ...]] = {}
    notes: list[str] = []
    for svc in services:
        kept = held[svc.name]
        if len(kept) == svc.replicas:  # all its replicas run and stay: nothing to choose
            chosen = sorted(kept)
        else:
            chosen, note = place_new(svc, hosts, partition_of[svc.name], up, kept, state, port_of[svc.name])
            notes += note
        out[svc.name] = tuple(hosts[i].name for i in chosen)
    return Placement(out, tuple(notes))


class Share(NamedTuple):
    """One service's spread groups: who runs there and stays, the other candidates, and the
    number of replicas each group gets with its exact quota."""

    groups: dict[str, tuple[list[int], list[int]]]  # group -> (running and kept, candidates)
    counts: dict[str, int]
    quotas: dict[str, Fraction]
    weights: dict[str, Fraction]
    room: int  # how many replicas the groups with a share could hold


def share_out(
    svc: Service, hosts: tuple[Host, ...], partition: Mapping[str, list[int]], up: list[bool], held: set[int], state: Hosts, port: int | None
) -> Share:
    """The service's groups and counts (apportion) from the room there is now; a running
    replica over its group's count is dropped from `held` and its room given back.
    `partition`: spread group -> the hosts meeting its constraints."""
    cpu, memory = need = request_of(svc)
    taken = state.port_owner.get(port, {}) if port is not None else {}
    free_cpu, free_memory = state.free_cpu, state.free_memory
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for g, members in partition.items():
        groups[g] = (
            [i for i in members if i in held],
            [i for i in members if i not in held and up[i] and i not in taken and free_cpu[i] >= cpu and free_memory[i] >= memory],
        )
    weights = group_weights(svc, groups)
    names = list(weights)
    caps = [len(groups[g][0]) + len(groups[g][1]) if weights[g] else 0 for g in names]
    counts, quotas = apportion(svc.replicas, [weights[g] for g in names], caps, [len(groups[g][0]) for g in names])
    for g, count in zip(names, counts):
        kept = groups[g][0]
        for i in kept[count:]:  # more run here than its share: the last ones in the file go
            state.give_back(i, need, port)
            held.discard(i)
        del kept[count:]
    return Share(groups, dict(zip(names, counts)), dict(zip(names, quotas)), weights, sum(caps))


def place_new(
    svc: Service, hosts: tuple[Host, ...], partition: Mapping[str, list[int]], up: list[bool], held: set[int], state: Hosts, port: int | None
) -> tuple[list[int], list[str]]:
    """The host indexes of one service's replicas, in file order (the new ones' room taken from
    `state`), and notes on spread targets it could not meet."""
    share = share_out(svc, hosts, partition, up, held, state, port)
    need = request_of(svc)
    if share.room < svc.replicas:
        taken = state.port_owner.get(port, {}) if port is not None else {}
        matching = sorted(i for members in partition.values() for i in members)
        raise PlacementError(refusal(svc, hosts, matching, up, state, taken, need, share.room, share.weights))
    chosen: list[int] = []
    notes: list[str] = []
    total_weight = sum(share.weights.values())
    for g, (kept, free) in share.groups.items():
        count, quota = share.counts[g], share.quotas[g]
        chosen += kept
        wanted = svc.replicas * share.weights[g] / total_weight if total_weight else Fraction(0)
        if svc.spread and svc.spread.targets and math.ceil(quota) < math.floor(wanted):
            notes.append(f"services.{svc.name}: spread target {svc.spread.label}={g or '(none)'} wants "
                         f"{float(wanted):g} replicas, {count} fit there; the others took the rest")  # fmt: skip
        more = count - len(kept)
        if more:
            # One replica per host: a host's room changes only once it is chosen, and then it is
            # out for this service, so one sort of the group's candidates picks them all (a heap
            # a group pays off once a host can take several replicas of one service).
            if svc.strategy == "binpack":
                best = sorted(free, key=lambda i: (-state.used(i), -state.replicas[i], i))[:more]
            else:
                best = sorted(free, key=lambda i: (state.used(i), state.replicas[i], i))[:more]
            for i in best:
                state.take(i, svc.name, need, port)
            chosen += best
    return sorted(chosen), notes


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:NAMED_HOSTS])
    return shown + (f" and {len(names) - NAMED_HOSTS} more" if len(names) > NAMED_HOSTS else "")


def refusal(
    svc: Service,
    hosts: tuple[Host, ...],
    matching: list[int],
    up: list[bool],
    state: Hosts,
    taken: Mapping[int, str],
    need: Room,
    room: int,
    weights: Mapping[str, Fraction],
) -> str:
    """One line: the service, what it needs, how many candidates it found and why the other
    hosts it looked at are not (down, port taken, how much room they lack, outside its targets)."""
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
    running: Mapping[str, Collection[str]] | None = None,
    ports: Mapping[str, int | None] | None = None,
    engines: Mapping[str, tuple[int | None, int | None]] | None = None,
) -> Placement:
    """The file's services over its hosts, each host sized by its `capacity`, else by `engines`
    (host -> Docker's CPU count and memory, from the facts), else by default, less the file's
    placement.reserve."""
    engines = engines or {}
    capacities = {h.name: capacity_of(h, *engines.get(h.name, (None, None))) for h in spec.hosts}
    return place(spec.services, spec.hosts, available, running, ports, capacities, reserve_of(spec.placement.reserve))
