"""Container-to-container figures across hosts: overlay and routed, beside host-to-host, one run.

On one lab of 3 hosts (created here, removed at the end): a BusyBox httpd on node1 serves a
50 MiB file and a small page; a BusyBox container on node3 fetches them. Throughput: the median
of 9 transfers of the 50 MiB file (wget to /dev/null). Latency: the mean of 200 sequential small
requests (each a new wget process and TCP connection, as timed inside the client container),
and the mean ICMP round trip of 50 pings. "host" runs both ends in the hosts' network
namespaces (--network host): the floor. Also: how long the first `up` of each driver took.

Usage: .venv/bin/python bench/network.py [--requests 200] [--transfers 9]
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

from clusterctl.commands.teardown import teardown
from clusterctl.lab import lab as lab_mod
from clusterctl.lab.busybox import rootfs_tar

LAB = "benchnet"
IMAGE = "clusterctl-bench-busybox:1"
WEB = "clusterctl-bench-web"
BIG_MIB = 50
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
t0=$(now); i=0
while [ $i -lt "$3" ]; do timeout 10 wget -qO /dev/null "$1/small" || exit 1; i=$((i + 1)); done
t1=$(now); echo "small $((t1 - t0))"
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


def variant(base: Path, directory: Path, driver: str) -> Path:
    doc = yaml.safe_load(base.read_text())
    doc["network"] = {"driver": driver}
    doc["consul"] = {"enabled": False}  # the network alone: no engine DNS, filebox or Consul
    path = directory / f"{driver}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def reset(env: dict, f: Path) -> None:
    for host in ("node3", "node2", "node1"):  # the swarm's leader last
        clusterctl(env, "exec", "-f", str(f), "--host", host, "--", *teardown(yaml.safe_load(f.read_text())["name"], CIDR, leave_swarm=True).argv)


def measure(network: str, server_addr: str | None, port: int, transfers: int, requests: int) -> tuple[float, float, float]:
    """(median MiB/s, mean ms per small request, mean ping ms) from node3 to the httpd on node1."""
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
        small = next(int(v) for k, v in lines if k == "small")
        ping = next(float(v) for k, v in lines if k == "ping")
        return BIG_MIB / (statistics.median(big) / 1e6), small / requests / 1000, ping
    finally:
        host_docker(1, "rm", "-f", WEB, check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--transfers", type=int, default=9)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clusterctl-bench-net-"))
    env = dict(os.environ, CLUSTERCTL_STATE_DIR=str(work / "state"))
    rows = []
    try:
        base = Path(clusterctl(env, "lab", "up", "--name", LAB, "--hosts", "3").stdout.strip().splitlines()[-1])
        node1 = yaml.safe_load(base.read_text())["hosts"][0]["address"]
        tar = rootfs_tar()
        for host in (1, 3):
            host_docker(host, "import", "-c", 'CMD ["sh"]', "-", IMAGE, input=tar)
        rows.append(("host to host (--network host)", "-", *measure("host", node1, 18080, args.transfers, args.requests)))
        for driver in ("overlay", "routed"):
            f = variant(base, work, driver)
            reset(env, f)
            t0 = time.perf_counter()
            report = json.loads(clusterctl(env, "up", "-f", str(f), "-o", "json").stdout)
            took = time.perf_counter() - t0
            assert report["ok"] and all(
                p["status"] == "changed" for h in report["hosts"] for p in h["phases"] if p["phase"] == "network"
            ), report
            noop = json.loads(clusterctl(env, "up", "-f", str(f), "-o", "json").stdout)
            assert not noop["changed"] and all(h["round_trips"] == 1 for h in noop["hosts"]), noop
            rows.append((f"container to container, {driver}", f"{took:.1f} s", *measure("clusterctl", None, 8080, args.transfers, args.requests)))
        reset(env, variant(base, work, "routed"))
    finally:
        clusterctl(env, "lab", "down", "--name", LAB, check=False)
        shutil.rmtree(work, ignore_errors=True)
    floor_t, floor_l, floor_p = rows[0][2:]
    print(f"{BIG_MIB} MiB transfer (median of {args.transfers}), {args.requests} sequential small requests, 50 pings; node1 -> node3")
    print(f"{'path':<36} {'first up':>8} {'MiB/s':>8} {'vs host':>8} {'ms/request':>10} {'vs host':>8} {'ping ms':>8} {'vs host':>8}")
    for name, up, tput, lat, ping in rows:
        print(
            f"{name:<36} {up:>8} {tput:>8.0f} {tput / floor_t:>8.0%} {lat:>10.2f} {lat / floor_l:>7.2f}x"
            f" {ping:>8.3f} {ping / floor_p:>7.2f}x"
        )


if __name__ == "__main__":
    main()
