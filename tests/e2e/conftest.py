"""The session's lab: 3 bare hosts (no Docker yet) of the stacks users run, created once, always
removed at the end: node1 Debian 12 (Docker 20.10, classic image store), node2 Debian 13 (Docker
26) and node3 Debian sid (Docker 28), both with the containerd image store (Docker 29's default)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from clusterctl.lab import lab as lab_mod


@contextmanager
def watching_processes(lab, hosts=("node1", "node2", "node3")):
    """Every host's process list (`ps -eo args`), polled all along the block: the lists seen,
    to show that no secret was ever on a command line."""
    seen: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for host in hosts:
                seen.append(lab.docker("exec", lab.container(host), "ps", "-eo", "args", check=False).stdout)
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield seen
    finally:
        stop.set()
        poller.join(10)


def _engine_ok() -> bool:
    try:
        return subprocess.run([lab_mod.docker_cli(), "info"], capture_output=True, timeout=20).returncode == 0
    except Exception:  # noqa: BLE001
        return False


@dataclass
class Lab:
    name: str
    cluster_file: Path

    def container(self, host: str) -> str:
        return lab_mod.container_name(self.name, int(host.removeprefix("node")))

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([lab_mod.docker_cli(), *args], capture_output=True, text=True, check=check)

    def bridge(self) -> str:
        """The Linux bridge of the lab's network on this machine: every packet between its hosts crosses it."""
        net_id = self.docker("network", "inspect", "-f", "{{.Id}}", lab_mod.network_name(self.name)).stdout.strip()
        return f"br-{net_id[:12]}"


def _remove_stale_test_labs() -> None:
    """Labs left by an earlier test run that was killed before its teardown."""
    out = subprocess.run(
        [lab_mod.docker_cli(), "ps", "-a", "--filter", f"label={lab_mod.LABEL}", "--format", '{{.Label "clusterctl.lab"}}'],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for name in set(out):
        m = re.fullmatch(r"e2e[a-z]*(\d+)", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            lab_mod.down(name)


MIXED = ("--os", "debian-12,debian-13,debian-sid", "--image-store", "containerd")
# What the mixed lab's hosts run, by host: Docker's major version and image store.
MIXED_STACKS = {"node1": ("20.10", "classic"), "node2": ("26.", "containerd"), "node3": ("28.", "containerd")}


def on_all(cli, cluster_file: Path, script: str) -> dict[str, str]:
    """`clusterctl exec --all -- sh -c SCRIPT` (as the file's SSH user): each host's output lines,
    joined by spaces."""
    proc = cli("exec", "-f", str(cluster_file), "--all", "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        host, _, value = line.partition("|")
        out.setdefault(host.strip(), []).append(value.strip())
    return {h: " ".join(v) for h, v in out.items()}


@contextmanager
def lab_for_tests(cli, name: str, *flags: str, hosts: int = 3):
    """A lab for a test scope, removed at the end even when the tests fail."""
    if not _engine_ok():
        if os.environ.get("CLUSTERCTL_SKIP_E2E") == "1":
            pytest.skip("CLUSTERCTL_SKIP_E2E=1 and no Docker engine")
        pytest.fail("no Docker engine on this machine: run scripts/setup.sh (or set CLUSTERCTL_SKIP_E2E=1)")
    _remove_stale_test_labs()
    try:
        proc = cli("lab", "up", "--name", name, "--hosts", str(hosts), *flags, timeout=900)
        assert proc.returncode == 0, proc.stderr
        path = Path(proc.stdout.strip().splitlines()[-1])
        assert path.is_file()
        yield Lab(name, path)
    finally:
        proc = cli("lab", "down", "--name", name)
        assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="session")
def lab(cli, state_dir):
    with lab_for_tests(cli, f"e2e{os.getpid()}", "--bare", *MIXED) as shared:
        yield shared
