"""Service figures on a 3-host lab, with the article's express hello app (2 replicas):

  - first `up` of the whole cluster with the service: seconds until it returns (every replica
    passing its Consul check), and the bytes the service phase sent;
  - `up` that only adds the service to a running cluster;
  - a no-op `up`;
  - a code change rolled out: seconds, bytes to the hosts, and requests served / failed while a
    client on node2 asks hello.service.consul 10 times a second.

Usage: .venv/bin/python bench/services.py      (creates lab `benchsvc`, removes it at the end)
Needs: examples/hello/node_modules (scripts/setup.sh runs npm ci), /usr/bin/node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from clusterctl.lab.lab import container_name, docker_cli

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello"
LAB = "benchsvc"
LOOP = """
ok=0; bad=0; end=$(($(date +%s)+$1))
while [ "$(date +%s)" -lt "$end" ]; do
  if timeout 3 wget -qO- http://hello.service.consul:3000/ >/dev/null 2>&1; then ok=$((ok+1)); else bad=$((bad+1)); fi
  sleep 0.1
done
echo "$ok $bad"
"""


def clusterctl(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterctl", *args], capture_output=True, text=True, env=env)


def up(env, f: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = clusterctl(env, "up", "-f", str(f), "-o", "json")
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"up failed: {proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)


def service_bytes(report: dict) -> int:
    return sum(h["bytes_sent"] for h in report["hosts"])


def variant(lab_file: Path, out: Path, app: Path | None) -> Path:
    doc = yaml.safe_load(lab_file.read_text())
    doc["filebox"] = {"binaries": ["consul", "/usr/bin/node"]}
    if app is not None:
        doc["services"] = [{"name": "hello", "app": str(app), "replicas": 2, "check": {"http": "/"}}]
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="clusterctl-bench-"))
    env = {**os.environ, "CLUSTERCTL_STATE_DIR": str(state)}
    proc = clusterctl(env, "lab", "up", "--name", LAB, "--hosts", "3")
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    lab_file = Path(proc.stdout.strip().splitlines()[-1])
    try:
        app = state / "hello"
        shutil.copytree(HELLO, app, symlinks=True)
        with_svc = variant(lab_file, state / "svc.yaml", app)
        without = variant(lab_file, state / "plain.yaml", None)

        cold, report = up(env, with_svc)
        print(f"first up, cluster + hello (2 replicas passing): {cold:.2f} s, {service_bytes(report) / 1e6:.1f} MB to 3 hosts")
        clusterctl(env, "exec", "-f", str(with_svc), "--all", "--", "docker", "rm", "-f", "clusterctl-svc-hello")
        clusterctl(env, "exec", "-f", str(with_svc), "--all", "--", "rm", "-f", "/etc/clusterctl/consul/services/hello.json")
        up(env, without)  # the cluster without the service (prune removes its image)
        add, report = up(env, with_svc)
        svc_steps = [p for h in report["hosts"] for p in h["phases"] if p["phase"] == "services" and p["changed"]]
        longest = max(p["seconds"] for p in svc_steps)
        print(f"up adding hello to a running cluster: {add:.2f} s (services phase, slowest host: {longest:.2f} s)")
        noop, report = up(env, with_svc)
        print(f"no-op up: {noop:.2f} s, changed={report['changed']}, round trips {[h['round_trips'] for h in report['hosts']]}")

        (app / "express.js").write_text((app / "express.js").read_text().replace("Hello world", "Hello again"))
        loop = subprocess.Popen(
            [docker_cli(), "exec", container_name(LAB, 2), "sh", "-c",
             'docker run --rm --entrypoint busybox "$(docker images clusterctl/base -q | head -n 1)" sh -c "$0" loop 30', LOOP],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(2)
        roll, report = up(env, with_svc)
        out, err = loop.communicate(timeout=90)
        ok, bad = (int(x) for x in out.split())
        print(f"code change rolled to 2 replicas: {roll:.2f} s, {service_bytes(report) / 1e3:.1f} kB to the hosts; "
              f"client on node2 during 30 s: {ok} answered, {bad} failed")  # fmt: skip
    finally:
        clusterctl(env, "lab", "down", "--name", LAB)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
