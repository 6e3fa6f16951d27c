"""Shipping figures, each beside the naive `docker save | ssh HOST docker load` in the same run:

  (a) the filebox (consul + node) and the microcontainer base to 3 hosts;
  (b) an unchanged app shipped again (target: 0 layer bytes);
  (c) an app whose code changed (target: only the changed layer, <= 5% of the naive bytes);
then the microcontainer sizes and the time from `up` start to a Consul leader.

Usage: .venv/bin/python bench/shipping.py      (creates lab `benchship`, removes it at the end)
Needs: the local Docker engine (for the naive `docker save`), examples/hello/node_modules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from clusterctl.config.loader import load
from clusterctl.filebox.build import build_filebox
from clusterctl.images.app import build_app
from clusterctl.images.archive import write_archive_file
from clusterctl.images.base import base_image
from clusterctl.lab.lab import docker_cli
from clusterctl.phases.base import Inputs
from clusterctl.phases.filebox import FileboxPhase, filebox_container_name
from clusterctl.phases.manager import Options, execute
from clusterctl.transport.ssh import KnownHosts, resolve_endpoints

ROOT = Path(__file__).resolve().parent.parent
DOCKER = docker_cli()


def clusterctl(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterctl", *args], capture_output=True, text=True, env=env)


def ssh_argv(doc, host) -> list[str]:
    s = doc["ssh"]
    return ["ssh", "-i", s["identity_file"], "-o", f"UserKnownHostsFile={s['known_hosts']}", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "Compression=no", f"root@{host['address']}"]  # fmt: skip


def naive(doc, tags: list[str]) -> tuple[int, float]:
    """docker save TAGS | ssh HOST docker load, to every host in parallel: (bytes to all hosts, seconds)."""
    size = len(subprocess.run([DOCKER, "save", *tags], capture_output=True, check=True).stdout)

    def one(host):
        save = subprocess.Popen([DOCKER, "save", *tags], stdout=subprocess.PIPE)
        subprocess.run([*ssh_argv(doc, host), "docker", "load", "-q"], stdin=save.stdout, capture_output=True, check=True)
        save.wait()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(doc["hosts"])) as pool:
        list(pool.map(one, doc["hosts"]))
    return size * len(doc["hosts"]), time.perf_counter() - t0


def remove_on_hosts(doc, tags: list[str]) -> None:
    for host in doc["hosts"]:
        subprocess.run([*ssh_argv(doc, host), "docker", "rmi", "-f", *tags], capture_output=True)


def ours(cluster, images, filebox=None, relay_base=None) -> tuple[int, float]:
    """clusterctl's filebox phase: bytes the operator sent to all hosts together, seconds.

    relay_base: the base image, which the relay needs (it serves and fetches with BusyBox);
    without it every host gets everything over SSH."""
    inputs = Inputs(images=tuple(images), base_image=relay_base)
    if filebox is not None:
        inputs = Inputs(images=tuple(images), filebox_container=filebox_container_name(filebox.version),
                        filebox_image=filebox.image, filebox_version=filebox.version, base_image=relay_base)  # fmt: skip
    known = KnownHosts(cluster.resolve_path(cluster.spec.ssh.known_hosts), False)
    t0 = time.perf_counter()
    report = execute(cluster, [FileboxPhase()], resolve_endpoints(cluster), known, Options(), None, inputs)
    took = time.perf_counter() - t0
    assert report.ok, [h.failed for h in report.hosts]
    return sum(h.bytes_sent for h in report.hosts), took


def load_locally(images) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "images.tar"
        write_archive_file(list(images), path)
        subprocess.run([DOCKER, "load", "-q", "-i", str(path)], check=True, capture_output=True)


def mb(n: int) -> str:
    return f"{n / 1e6:8.2f} MB"


def main() -> None:
    state = tempfile.mkdtemp(prefix="clusterctl-bench-")
    env = dict(os.environ, CLUSTERCTL_STATE_DIR=state)
    proc = clusterctl(env, "lab", "up", "--name", "benchship", "--hosts", "3")
    assert proc.returncode == 0, proc.stderr
    cluster_file = Path(proc.stdout.strip().splitlines()[-1])
    work = Path(tempfile.mkdtemp(prefix="clusterctl-bench-app-"))
    local_tags: list[str] = []
    try:
        doc = yaml.safe_load(cluster_file.read_text())
        cluster = load(cluster_file)
        app_dir = work / "hello"
        shutil.copytree(ROOT / "examples" / "hello", app_dir, symlinks=True)
        box = build_filebox(["consul", "/usr/bin/node"])
        base = base_image(box.manifest, box.version)
        app1 = build_app(app_dir, binaries=["consul", "/usr/bin/node"])
        load_locally([box.image, base.image, app1.app])
        local_tags += [box.tag, base.image.tag, app1.app.tag]
        rows = []

        # (a) the filebox and base to 3 hosts: naive first, then clean, then ours.
        n_bytes, n_time = naive(doc, [box.tag, base.image.tag])
        remove_on_hosts(doc, [box.tag, base.image.tag])
        o_bytes, o_time = ours(cluster, [box.image, base.image], box)
        rows.append(("(a) filebox + base, over SSH", n_bytes, n_time, o_bytes, o_time))
        for host in doc["hosts"]:  # start again from nothing on the hosts
            subprocess.run([*ssh_argv(doc, host), "sh", "-c", "docker rm -f $(docker ps -aq) >/dev/null 2>&1; docker rmi -f $(docker images -q) >/dev/null 2>&1"], capture_output=True)
        o_bytes, o_time = ours(cluster, [box.image, base.image], box, relay_base=base.image)
        rows.append(("(a) filebox + base, relayed", n_bytes, n_time, o_bytes, o_time))

        # (b) the app: first ship, then the unchanged app again.
        o1_bytes, o1_time = ours(cluster, [app1.app])
        n_bytes, n_time = naive(doc, [app1.app.tag])
        rows.append(("    app, first time", n_bytes, n_time, o1_bytes, o1_time))
        o_bytes, o_time = ours(cluster, [app1.app])
        rows.append(("(b) unchanged app again", n_bytes, n_time, o_bytes, o_time))

        # (c) the app's code changes: one line in express.js.
        with open(app_dir / "express.js", "a") as f:
            f.write("// changed for the benchmark\n")
        app2 = build_app(app_dir, binaries=["consul", "/usr/bin/node"])
        load_locally([app2.app])
        local_tags.append(app2.app.tag)
        o_bytes, o_time = ours(cluster, [app2.app])
        n_bytes, n_time = naive(doc, [app2.app.tag])
        rows.append(("(c) app with changed code", n_bytes, n_time, o_bytes, o_time))

        print(f"{'shipping (3 hosts, uplink)':32} {'naive bytes':>12} {'naive time':>10} {'ours bytes':>12} {'ours time':>9} {'ours/naive':>10}")
        for name, nb, nt, ob, ot in rows:
            print(f"{name:32} {mb(nb)} {nt:9.2f}s {mb(ob)} {ot:8.2f}s {ob / nb:9.2%}")
        print()
        print("microcontainer sizes (as docker reports them):")
        for label, img in (("filebox (consul + node)", box.image), ("base (BusyBox + links)", base.image), ("express hello app", app1.app)):
            print(f"  {label:26} {img.size_bytes / 1e6:7.3f} MB")

        # Time from `up` start to a Consul leader, on hosts with Docker running and nothing else.
        proc = clusterctl(env, "lab", "up", "--name", "benchleader", "--hosts", "3")
        assert proc.returncode == 0, proc.stderr
        f2 = Path(proc.stdout.strip().splitlines()[-1])
        try:
            t0 = time.perf_counter()
            proc = clusterctl(env, "up", "-f", str(f2), "-o", "json")
            took = time.perf_counter() - t0
            report = json.loads(proc.stdout)
            assert proc.returncode == 0, proc.stderr
            consul_s = max(p["seconds"] for h in report["hosts"] for p in h["phases"] if p["phase"] == "consul")
            print(f"\n`up` start to Consul leader (3 hosts, Docker running): {took:.2f}s (consul phase {consul_s:.2f}s)")
        finally:
            clusterctl(env, "lab", "down", "--name", "benchleader")
    finally:
        clusterctl(env, "lab", "down", "--name", "benchship")
        if local_tags:
            subprocess.run([DOCKER, "rmi", "-f", *local_tags], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
