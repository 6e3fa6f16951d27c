"""Placement figures, pure Python, no host: `clusterctl.schedule.placement.place` on 1,000 hosts
and 10,000 replicas over 20 services (resources on every one, spread targets on 8, plain spread
on 6, constraints on 4, binpack on 4), side by side with, in the same run:

  - the floor: the same 10,000 replicas assigned with no choice at all (each service's first
    hosts that match and fit, room counted down), i.e. the bookkeeping any placer pays;
  - the placement of the converged cluster (every replica already running where it goes);
  - the placer of before (commit 124167a, one replica at a time, quadratic) and this one on a
    small cluster both can do in seconds (no resources: the old one has none), and this one on
    the case the old one was measured on (1,000 hosts, 10 services of 100: 53 s);
  - several replicas a host (`ports: dynamic`): 10,000 replicas over 400 hosts, placed, placed
    again converged, and rebalanced, beside the floor of the same replicas.

Usage: .venv/bin/python bench/placement.py [--runs N]     (medians of N runs, default 5)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

from clusterctl.config.models import Host, Service
from clusterctl.schedule.placement import Room, place, request_of

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "124167a"
PROVIDERS = ("aws", "hetzner", "gcp")
SIZES = (Room(4000, 8 << 30), Room(8000, 16 << 30), Room(16000, 32 << 30))
RESERVE = Room(500, 512 << 20)


def cluster(
    n_hosts: int, n_services: int, replicas: int, resources: bool = True, dynamic: bool = False
) -> tuple[list[Host], list[Service], dict[str, Room]]:
    hosts = [
        Host(name=f"n{i:04d}", address=f"10.{i // 250}.{i % 250}.1",
             labels={"provider": PROVIDERS[i % 3 if i % 5 else 0], "region": f"r{i % 7}", "disk": "ssd" if i % 4 else "hdd"})
        for i in range(n_hosts)
    ]  # fmt: skip
    sizes = {h.name: SIZES[i % 3] for i, h in enumerate(hosts)}
    services = []
    for k in range(n_services):
        spread: object = None
        if k % 5 in (0, 1) or k == 17:
            spread = {"label": "provider", "targets": {"aws": "50%", "hetzner": "30%", "gcp": "20%"} if k % 2 else {"aws": "60%"}}
        elif k % 5 in (2, 3):
            spread = "provider" if k % 2 else "region"
        services.append(Service(
            name=f"svc{k:02d}", image="app:1", replicas=replicas, spread=spread,
            constraints={"disk": "ssd"} if k % 5 == 4 else {},
            resources={"cpu": (0.1, 0.25, 0.5)[k % 3], "memory": ("64M", "128M", "256M")[k % 3]} if resources else None,
            strategy="binpack" if k % 5 == 3 else "spread", port=8000 + k, ports="dynamic" if dynamic else "fixed",
        ))  # fmt: skip
    return hosts, services, sizes


def floor(hosts: list[Host], services: list[Service], sizes: dict[str, Room], several: bool = False) -> dict[str, tuple[str, ...]]:
    """The same replicas with no choice: each service's first matching hosts that fit (with
    `several`, each filled in turn before the next)."""
    free = {h.name: [sizes[h.name].cpu - RESERVE.cpu, sizes[h.name].memory - RESERVE.memory] for h in hosts}
    out = {}
    for s in services:
        need, chosen = request_of(s), []
        for h in hosts:
            room = free[h.name]
            if not s.allows(h):
                continue
            while len(chosen) < s.replicas and room[0] >= need.cpu and room[1] >= need.memory:
                room[0] -= need.cpu
                room[1] -= need.memory
                chosen.append(h.name)
                if not several:
                    break
            if len(chosen) == s.replicas:
                break
        out[s.name] = tuple(chosen)
    return out


def old_placer() -> types.ModuleType | None:
    """The placer of commit 124167a, loaded from git; its spread label is today's spread.label."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:clusterctl/schedule/placement.py"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("old_placement")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "old_placement.py", "exec"), module.__dict__)
    module.spread_group = lambda service, host: host.labels.get(service.spread.label, "") if service.spread else host.name
    return module


def timed(fn, runs: int) -> tuple[float, object]:
    seconds, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs

    hosts, services, sizes = cluster(1000, 20, 500)
    names = {h.name for h in hosts}
    replicas = sum(s.replicas for s in services)
    ports = {s.name: s.port for s in services}
    first, placed = timed(lambda: place(services, hosts, names, {}, ports, sizes, RESERVE), runs)
    converged, again = timed(lambda: place(services, hosts, names, placed.hosts_of, ports, sizes, RESERVE), runs)
    assert again.hosts_of == placed.hosts_of, "a re-run moved a replica"
    bare, _ = timed(lambda: floor(hosts, services, sizes), runs)
    print(f"{len(hosts)} hosts, {len(services)} services, {replicas} replicas (resources, spread targets), medians of {runs} runs")
    print(f"| what | seconds | placements/s |\n|---|---:|---:|")
    print(f"| place, nothing running | {first:.3f} | {replicas / first:,.0f} |")
    print(f"| place, converged (all {replicas} running where they go) | {converged:.3f} | {replicas / converged:,.0f} |")
    print(f"| floor: assign with no choice | {bare:.3f} | {replicas / bare:,.0f} |")
    print(f"place / floor: {first / bare:.2f}x; notes: {len(placed.notes)}")

    old = old_placer()
    small_hosts, small_services, small_sizes = cluster(100, 20, 25, resources=False)
    small_names = {h.name for h in small_hosts}
    small_replicas = sum(s.replicas for s in small_services)
    new_small, _ = timed(lambda: place(small_services, small_hosts, small_names, capacities=small_sizes), runs)
    print(f"\nsmall: {len(small_hosts)} hosts, {len(small_services)} services, {small_replicas} replicas, no resources")
    print(f"| placer | seconds | placements/s |\n|---|---:|---:|")
    if old is not None:
        old_small, _ = timed(lambda: old.place(small_services, small_hosts, small_names), max(1, runs // 2))
        print(f"| before ({OLD_COMMIT}) | {old_small:.3f} | {small_replicas / old_small:,.0f} |")
    print(f"| this one | {new_small:.4f} | {small_replicas / new_small:,.0f} |")
    # The case the old placer was measured on (53 s there): 1,000 hosts, 10 services of 100.
    issue_hosts, issue_services, issue_sizes = cluster(1000, 10, 100, resources=False)
    issue_names = {h.name for h in issue_hosts}
    issue, _ = timed(lambda: place(issue_services, issue_hosts, issue_names, capacities=issue_sizes), runs)
    print(f"| this one, 1,000 hosts, 10 services of 100 (the old one: 53 s) | {issue:.4f} | {1000 / issue:,.0f} |")

    # Several replicas a host: the heap of each spread group takes them one by one.
    dyn_hosts, dyn_services, dyn_sizes = cluster(400, 20, 500, dynamic=True)
    dyn_names = {h.name for h in dyn_hosts}
    dyn_first, dyn_placed = timed(lambda: place(dyn_services, dyn_hosts, dyn_names, {}, ports, dyn_sizes, RESERVE), runs)
    dyn_again, dyn_same = timed(lambda: place(dyn_services, dyn_hosts, dyn_names, dyn_placed.hosts_of, ports, dyn_sizes, RESERVE), runs)
    assert dyn_same.hosts_of == dyn_placed.hosts_of, "a re-run moved a replica"
    dyn_rebalanced, _ = timed(
        lambda: place(dyn_services, dyn_hosts, dyn_names, dyn_placed.hosts_of, ports, dyn_sizes, RESERVE, rebalance=True), runs
    )
    dyn_floor, _ = timed(lambda: floor(dyn_hosts, dyn_services, dyn_sizes, several=True), runs)
    most = max(dyn_placed.hosts_of[s.name].count(h.name) for s in dyn_services for h in dyn_hosts[:20])
    print(f"\nseveral a host (ports: dynamic): {len(dyn_hosts)} hosts, {replicas} replicas (up to {most} of one service on a host)")
    print(f"| what | seconds | placements/s |\n|---|---:|---:|")
    print(f"| place, nothing running | {dyn_first:.3f} | {replicas / dyn_first:,.0f} |")
    print(f"| place, converged | {dyn_again:.3f} | {replicas / dyn_again:,.0f} |")
    print(f"| rebalance, converged | {dyn_rebalanced:.3f} | {replicas / dyn_rebalanced:,.0f} |")
    print(f"| floor: assign with no choice | {dyn_floor:.3f} | {replicas / dyn_floor:,.0f} |")
    print(f"place / floor: {dyn_first / dyn_floor:.2f}x")


if __name__ == "__main__":
    main()
