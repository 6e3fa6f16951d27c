"""The Docker install builders, run for real in a local shell where they can be (no host)."""

import hashlib
import shutil
import subprocess

import pytest

from clusterctl.commands import docker as build


def _run(cmd, cwd):
    return subprocess.run(["sh", "-c", cmd.render()], capture_output=True, text=True, cwd=cwd, timeout=30)


def test_the_upstream_script_runs_from_a_private_dir_only_when_it_matches_its_pin(tmp_path):
    if not shutil.which("curl"):
        pytest.skip("no curl here")
    marker = tmp_path / "ran"
    script = tmp_path / "get-docker.sh"
    script.write_text(f"touch {marker}\n")
    url = f"file://{script}"
    wrong = _run(build.install_upstream_script(url, sha256="0" * 64), tmp_path)
    assert wrong.returncode == 1 and "not the pinned one" in wrong.stderr and not marker.exists()
    right = _run(build.install_upstream_script(url, sha256=hashlib.sha256(script.read_bytes()).hexdigest()), tmp_path)
    assert right.returncode == 0, right.stderr
    assert marker.exists()
    assert "/tmp/get-docker.sh" not in build.install_upstream_script().render()


def test_no_fixed_paths_under_tmp():
    for cmd in (build.install_package(), build.install_upstream_script(), build.wait_for_engine(5)):
        assert "/tmp/" not in cmd.render()
