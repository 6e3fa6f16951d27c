"""Placement: which hosts run each service's replicas. Pure: cluster file + facts in, names out.

One replica per host (each publishes the service's port on its host's cluster address). For each
replica, in turn, the host chosen is the eligible one that, in this order:
1. sits in the spread group (the value of the service's `spread` label) holding the fewest
   replicas so far, so replicas go evenly over providers, regions, ...;
2. already runs the service, so a re-run or a scale-up never moves a healthy replica;
3. runs the fewest replicas of the services placed before it, so services go evenly over hosts;
4. comes first in the cluster file, so the answer is the same on every run.
Hosts that did not answer the probe are not eligible: their replicas go to hosts that did. Nor
is a host where a service placed earlier already publishes the same port.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from clusterctl.config.models import Host, Service, replicas_need


class PlacementError(ValueError):
    """A service cannot be placed (too few eligible hosts); one line naming the service."""


@dataclass(frozen=True)
class Placement:
    # Service name -> the hosts running one replica each, in the cluster file's order.
    hosts_of: Mapping[str, tuple[str, ...]]

    def services_on(self, host: str) -> tuple[str, ...]:
        return tuple(name for name, hosts in self.hosts_of.items() if host in hosts)


def spread_group(service: Service, host: Host) -> str:
    # Without `spread` every host is its own group; a host without the label is a group of its own.
    return host.labels.get(service.spread.label, "") if service.spread else host.name


def place_service(
    service: Service,
    hosts: Iterable[Host],
    available: Collection[str],
    running_on: Collection[str] = (),
    load: Mapping[str, int] | None = None,
    busy: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """`busy`: host -> the service already publishing this service's port there."""
    order = list(hosts)
    busy = busy or {}
    eligible = [h for h in order if h.name in available and service.allows(h) and h.name not in busy]
    if service.replicas > len(eligible):
        matching = [h.name for h in order if service.allows(h)]
        down = [n for n in matching if n not in available]
        why = f"{len(eligible)} {'is' if len(eligible) == 1 else 'are'} up"
        if service.constraints:
            why += " among the hosts matching its constraints"
        if down:
            why += f" ({', '.join(down)} did not answer)"
        taken = [f"{n} by {busy[n]}" for n in matching if n in busy]
        if taken:
            why += f" and free of its port (taken on {', '.join(taken)})"
        raise PlacementError(f"services.{service.name}: {replicas_need(service.replicas)}, but {why}")
    load = load or {}
    index = {h.name: i for i, h in enumerate(order)}
    groups: Counter[str] = Counter()
    chosen: list[Host] = []
    for _ in range(service.replicas):
        best = min(
            (h for h in eligible if h not in chosen),
            key=lambda h: (groups[spread_group(service, h)], h.name not in running_on, load.get(h.name, 0), index[h.name]),
        )
        chosen.append(best)
        groups[spread_group(service, best)] += 1
    return tuple(sorted((h.name for h in chosen), key=index.__getitem__))


def place(
    services: Iterable[Service],
    hosts: Iterable[Host],
    available: Collection[str],
    running: Mapping[str, Collection[str]] | None = None,
    ports: Mapping[str, int | None] | None = None,
) -> Placement:
    """`running`: service name -> hosts where a replica exists now (from the facts);
    `ports`: service name -> the port it publishes (two services never share one on a host)."""
    hosts = tuple(hosts)
    running = running or {}
    ports = ports or {}
    load: Counter[str] = Counter()
    publishing: dict[tuple[str, int], str] = {}  # (host, port) -> service
    out: dict[str, tuple[str, ...]] = {}
    for svc in services:
        port = ports.get(svc.name, svc.port)
        busy = {h: s for (h, p), s in publishing.items() if port is not None and p == port}
        chosen = place_service(svc, hosts, available, running.get(svc.name, ()), load, busy)
        load.update(chosen)
        if port is not None:
            publishing.update({(h, port): svc.name for h in chosen})
        out[svc.name] = chosen
    return Placement(out)
