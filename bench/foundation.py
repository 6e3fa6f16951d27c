"""Foundation figures: cold `up`, no-op `up` and SSH round trips, for 3 and 6 lab hosts, each
beside the floor measured in the same run on the same hosts: one bare parallel
`ssh HOST sh -s < probe-script` (OpenSSH, no clusterctl).

Usage: .venv/bin/python bench/foundation.py [--sizes 3 6] [--repeat 5]
Creates labs bench3/bench6 (bare hosts, so the cold run installs Docker for real) and removes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from clusterctl.facts.parser import probe_script


def clusterctl(env, *args) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "clusterctl", *args], capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc


def bare_floor(cluster_file: Path) -> float:
    doc = yaml.safe_load(cluster_file.read_text())
    ssh = doc["ssh"]
    script = probe_script().encode()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["ssh", "-i", ssh["identity_file"], "-o", f"UserKnownHostsFile={ssh['known_hosts']}",
             "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
             f"root@{h['address']}", "sh", "-s"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for h in doc["hosts"]
    ]
    for p in procs:
        p.communicate(script)
        assert p.returncode == 0, "bare ssh probe failed"
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 6])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="clusterctl-bench-")
    env = dict(os.environ, CLUSTERCTL_STATE_DIR=state)
    rows = []
    for n in args.sizes:
        name = f"bench{n}"
        _, proc = clusterctl(env, "lab", "up", "--name", name, "--hosts", str(n), "--bare")
        assert proc.returncode == 0, proc.stderr
        f = Path(proc.stdout.strip().splitlines()[-1])
        try:
            cold, proc = clusterctl(env, "up", "-f", str(f), "-o", "json")
            assert proc.returncode == 0, proc.stderr
            noop, floor, trips = [], [], []
            for _ in range(args.repeat):
                t, proc = clusterctl(env, "up", "-f", str(f), "-o", "json")
                report = json.loads(proc.stdout)
                assert proc.returncode == 0 and not report["changed"], proc.stderr
                noop.append(t)
                trips.append(max(h["round_trips"] for h in report["hosts"]))
                floor.append(bare_floor(f))
            rows.append((n, cold, statistics.median(noop), max(trips), statistics.median(floor)))
        finally:
            clusterctl(env, "lab", "down", "--name", name)
    print(f"{'hosts':>5} {'cold up':>9} {'no-op up':>9} {'trips/host':>10} {'bare floor':>10} {'no-op/cold':>10} {'no-op/floor':>11}")
    for n, cold, noop, trips, floor in rows:
        print(f"{n:>5} {cold:>8.2f}s {noop:>8.2f}s {trips:>10} {floor:>9.2f}s {noop / cold:>9.1%} {noop / floor:>10.2f}x")
    if len(rows) == 2:
        (a, ca, na, _, fa), (b, cb, nb, _, fb) = rows
        print(f"{b} vs {a} hosts: cold {cb / ca:.2f}x, no-op {nb / na:.2f}x, bare floor {fb / fa:.2f}x")


if __name__ == "__main__":
    main()
