"""What security costs: cold and no-op `up` on 3 lab hosts, by the clusterctl of before (no
ACLs, no TLS, HTTP API on every address: commit 05f713d, checked out in a temporary git
worktree) and by this one (ACLs default deny, verified TLS, loopback-only API), in one run,
each on a lab of its own, each beside the floor measured on the same hosts: one bare parallel
`ssh HOST sh -s < probe-script` (OpenSSH, no clusterctl).

Usage: .venv/bin/python bench/security.py [--repeat 5] [--before COMMIT]
Lab hosts have Docker installed (cold = every phase but the Docker install).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from foundation import bare_floor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(env, code: Path, *args) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(env, PYTHONPATH=str(code))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "clusterctl", *args], capture_output=True, text=True, env=env, cwd=code)
    return time.perf_counter() - t0, proc


def measure(label: str, code: Path, repeat: int) -> dict:
    state = tempfile.mkdtemp(prefix=f"clusterctl-bench-{label}-")
    env = dict(os.environ, CLUSTERCTL_STATE_DIR=state)
    name = f"sec{label}"
    # The lab itself is made by this clusterctl for both, so the hosts are the same kind.
    _, proc = run(env, ROOT, "lab", "up", "--name", name, "--hosts", "3")
    assert proc.returncode == 0, proc.stderr
    f = Path(proc.stdout.strip().splitlines()[-1])
    try:
        cold, proc = run(env, code, "up", "-f", str(f), "-o", "json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        noop, floor, trips = [], [], []
        for _ in range(repeat):
            t, proc = run(env, code, "up", "-f", str(f), "-o", "json")
            report = json.loads(proc.stdout)
            assert proc.returncode == 0 and not report["changed"], proc.stderr[-2000:]
            noop.append(t)
            trips.append(max(h["round_trips"] for h in report["hosts"]))
            floor.append(bare_floor(f))
        return {"cold": cold, "noop": statistics.median(noop), "trips": max(trips), "floor": statistics.median(floor)}
    finally:
        run(env, ROOT, "lab", "down", "--name", name)
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--before", default="05f713d", help="the commit of before (no ACLs, no TLS)")
    args = ap.parse_args()
    before_tree = Path(tempfile.mkdtemp(prefix="clusterctl-before-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before_tree), args.before],
                   check=True, capture_output=True)  # fmt: skip
    try:
        rows = {"before": measure("before", before_tree, args.repeat), "after": measure("after", ROOT, args.repeat)}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_tree)], capture_output=True)
    print(f"{'':>7} {'cold up':>9} {'no-op up':>9} {'trips/host':>10} {'bare floor':>10} {'no-op/floor':>11}")
    for label, r in rows.items():
        print(f"{label:>7} {r['cold']:>8.2f}s {r['noop']:>8.2f}s {r['trips']:>10} {r['floor']:>9.2f}s {r['noop'] / r['floor']:>10.2f}x")
    b, a = rows["before"], rows["after"]
    print(f"after vs before: cold {a['cold'] / b['cold']:.2f}x, no-op {a['noop'] / b['noop']:.2f}x "
          f"({a['noop'] / b['noop'] - 1:+.1%}), floor {a['floor'] / b['floor']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
