"""Container-to-container figures across hosts for each driver that runs here, beside host-to-host.

On one lab of 3 hosts (created here, removed at the end): a BusyBox httpd on node1 serves a
100 MiB file and a small page; a BusyBox container on node3 fetches them. Throughput: the median
of 5 transfers of the 100 MiB file (wget to /dev/null). Latency: p50 and p99 of 300 sequential
small requests (each a new wget process and TCP connection, timed inside the client container;
the timer's own cost is in every row alike), and the mean ICMP round trip of 50 pings. "host"
runs both ends in the hosts' network namespaces (--network host): the floor, measured in the
same run. Drivers: overlay (VXLAN, clear), routed (clear), wireguard (wireguard-go here: this
kernel has no WireGuard module), and the encrypted overlay where the kernel has ESP (not here:
the row says so); for wireguard also host to host through the tunnel (node1's mesh address),
the tunnel's own floor. Also: how long the first `up` of each driver took.

Usage: .venv/bin/python bench/network.py [--requests 300] [--transfers 5]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from clusterctl.commands import wireguard as wg
from clusterctl.commands.teardown import teardown
from clusterctl.lab import lab as lab_mod
from clusterctl.lab.busybox import rootfs_tar

LAB = "benchnet"
IMAGE = "clusterctl-bench-busybox:1"
WEB = "clusterctl-bench-web"
BIG_MIB = 100
CIDR = "10.240.0.0/16"

SERVER = (
    f"dd if=/dev/urandom of=/www/big bs=1048576 count={BIG_MIB} 2>/dev/null && echo ok > /www/small && "
    'exec httpd -f -p "$1" -h /www'
)
# $1: base URL, $2: transfers, $3: requests. Times in microseconds from adjtimex (date has no %N).
CLIENT = r"""
now() { adjtimex | awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {printf "%d%06d\n", s, u}'; }
timeout 10 wget -qO /dev/null "$1/small" || exit 1
i=0; while [ $i -lt "$2" ]; do
  t0=$(now); timeout 60 wget -qO /dev/null "$1/big" || exit 1; t1=$(now); echo "big $((t1 - t0))"; i=$((i + 1))
done
i=0; while [ $i -lt "$3" ]; do
  t0=$(now); timeout 10 wget -qO /dev/null "$1/small" || exit 1; t1=$(now); echo "small $((t1 - t0))"; i=$((i + 1))
done
host=${1#http://}; host=${host%:*}
echo "ping $(ping -q -c 50 -i 0.02 "$host" | sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p')"
"""


def clusterctl(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "clusterctl", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise SystemExit(f"clusterctl {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def host_docker(host: int, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [lab_mod.docker_cli(), "exec", *(["-i"] if input is not None else []), lab_mod.container_name(LAB, host), "docker", *args]
    proc = subprocess.run(cmd, capture_output=True, input=input)
    if check and proc.returncode != 0:
        raise SystemExit(f"node{host}: docker {' '.join(args[:3])}: {proc.stderr.decode(errors='replace')[-1000:]}")
    return proc


def variant(base: Path, directory: Path, driver: str, **settings) -> Path:
    doc = yaml.safe_load(base.read_text())
    doc["network"] = {"driver": driver, **settings}
    doc["consul"] = {"enabled": False}  # the network alone: no engine DNS, filebox or Consul
    path = directory / f"{driver}{'-'.join([''] + sorted(settings))}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def reset(env: dict, f: Path) -> None:
    name = yaml.safe_load(f.read_text())["name"]
    for host in ("node3", "node2", "node1"):  # the swarm's leader last
        clusterctl(env, "exec", "-f", str(f), "--host", host, "--", *teardown(name, CIDR, leave_swarm=True).argv)
        clusterctl(env, "exec", "-f", str(f), "--host", host, "--", *wg.remove(wg.interface_name("clusterctl"), False).argv)


def measure(network: str, server_addr: str | None, port: int, transfers: int, requests: int) -> tuple[float, float, float, float]:
    """(median MiB/s, p50 and p99 ms of a small request, mean ping ms) from node3 to the httpd on node1."""
    host_docker(1, "rm", "-f", WEB, check=False)
    host_docker(1, "run", "-d", "--name", WEB, "--network", network, IMAGE, "sh", "-c", SERVER, "sh", str(port))
    try:
        if server_addr is None:
            out = host_docker(1, "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', WEB)
            server_addr = out.stdout.decode().strip()
        url = f"http://{ipaddress.ip_address(server_addr)}:{port}"
        deadline = time.monotonic() + 30
        while host_docker(1, "exec", WEB, "test", "-s", "/www/small", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("the bench httpd did not start")
            time.sleep(0.2)
        out = host_docker(3, "run", "--rm", "--network", network, IMAGE, "sh", "-c", CLIENT, "sh", url, str(transfers), str(requests))
        lines = [line.split() for line in out.stdout.decode().splitlines()]
        big = [int(v) for k, v in lines if k == "big"]
        small = sorted(int(v) / 1000 for k, v in lines if k == "small")
        ping = next(float(v) for k, v in lines if k == "ping")
        cuts = statistics.quantiles(small, n=100, method="inclusive")
        return BIG_MIB / (statistics.median(big) / 1e6), cuts[49], cuts[98], ping
    finally:
        host_docker(1, "rm", "-f", WEB, check=False)


DRIVERS = (
    ("overlay", {}, "no (VXLAN)"),
    ("overlay", {"encrypted": True}, "yes (IPsec)"),
    ("routed", {}, "no"),
    ("wireguard", {}, "yes (WireGuard)"),
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--transfers", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clusterctl-bench-net-"))
    env = dict(os.environ, CLUSTERCTL_STATE_DIR=str(work / "state"))
    rows: list[tuple] = []
    skipped: list[str] = []
    try:
        base = Path(clusterctl(env, "lab", "up", "--name", LAB, "--hosts", "3").stdout.strip().splitlines()[-1])
        node1 = yaml.safe_load(base.read_text())["hosts"][0]["address"]
        tar = rootfs_tar()
        for host in (1, 3):
            host_docker(host, "import", "-c", 'CMD ["sh"]', "-", IMAGE, input=tar)
        rows.append(("host to host (--network host)", "-", "-", *measure("host", node1, 18080, args.transfers, args.requests)))
        for driver, settings, encrypted in DRIVERS:
            f = variant(base, work, driver, **settings)
            label = driver + (", encrypted" if settings.get("encrypted") else "")
            reset(env, f)
            t0 = time.perf_counter()
            proc = clusterctl(env, "up", "-f", str(f), "-o", "json", check=False)
            took = time.perf_counter() - t0
            report = json.loads(proc.stdout)
            if proc.returncode != 0 and report.get("refused"):
                skipped.append(f"{label}: not run here: {'; '.join(report['refused'].values())}")
                continue
            assert report["ok"] and all(
                p["status"] == "changed" for h in report["hosts"] for p in h["phases"] if p["phase"] == "network"
            ), report
            noop = json.loads(clusterctl(env, "up", "-f", str(f), "-o", "json").stdout)
            assert not noop["changed"] and all(h["round_trips"] == 1 for h in noop["hosts"]), noop
            rows.append((f"container to container, {label}", encrypted, f"{took:.1f} s", *measure("clusterctl", None, 8080, args.transfers, args.requests)))
            if driver == "wireguard":
                # The tunnel's own floor: host to host through it (node1's mesh address), no containers.
                mesh = host_docker(1, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", "clusterctl").stdout.decode().strip()
                rows.append(("host to host through the tunnel", encrypted, "-", *measure("host", mesh, 18081, args.transfers, args.requests)))
        reset(env, variant(base, work, "routed"))
    finally:
        clusterctl(env, "lab", "down", "--name", LAB, check=False)
        shutil.rmtree(work, ignore_errors=True)
    floor_t, floor_p50, floor_p99, floor_ping = rows[0][3:]
    print(f"{BIG_MIB} MiB transfer (median of {args.transfers}), {args.requests} sequential small requests, 50 pings; node1 -> node3")
    print(f"| path | encrypted | first up | MiB/s | vs host | p50 ms | p99 ms | p50 vs host | ping ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, enc, up, tput, p50, p99, ping in rows:
        print(f"| {name} | {enc} | {up} | {tput:.0f} | {tput / floor_t:.0%} | {p50:.2f} | {p99:.2f} | {p50 / floor_p50:.2f}x | {ping:.3f} |")
    for line in skipped:
        print(line)


if __name__ == "__main__":
    main()
