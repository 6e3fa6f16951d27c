"""`up` refuses bad filebox input with one line and exit 2, before any host is contacted.

The host is 127.0.0.1:1 (nothing listens): if a check were skipped, the run would fail to
connect with exit 1 instead, so exit 2 and the message prove nothing was sent.
"""

import shutil
import subprocess
import sys

from pathlib import Path

import pytest


def _up(tmp_path, filebox: str, consul: str = "", services: str = ""):
    f = tmp_path / "cluster.yaml"
    f.write_text(
        "ssh: {known_hosts: kh, connect_timeout: 1}\n"
        "hosts:\n  - {name: a, address: 127.0.0.1, port: 1}\n"
        f"{consul}filebox:\n{filebox}{services}"
    )
    env = {"CLUSTERCTL_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin:/usr/local/bin", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "clusterctl", "up", "-f", str(f)], capture_output=True, text=True, env=env)
    return f, proc


def _one_line_exit_2(proc):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_missing_binary(tmp_path):
    f, proc = _up(tmp_path, "  binaries: [consul, /nonexistent/node]\n")
    _one_line_exit_2(proc)
    assert "/nonexistent/node" in proc.stderr
    assert proc.stderr.startswith(f"error: {f}:5: filebox.binaries: "), proc.stderr


def test_not_an_elf_binary(tmp_path):
    script = tmp_path / "node"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    f, proc = _up(tmp_path, f"  binaries: [consul, {script}]\n")
    _one_line_exit_2(proc)
    assert "not an ELF" in proc.stderr


@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler to make a binary with a missing library")
def test_unresolvable_library(tmp_path):
    (tmp_path / "lib.c").write_text("int f(void) { return 1; }\n")
    (tmp_path / "main.c").write_text("int f(void); int main(void) { return f(); }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "libgone.so"), str(tmp_path / "lib.c")], check=True)
    subprocess.run(["cc", "-o", str(tmp_path / "app"), str(tmp_path / "main.c"), f"-L{tmp_path}", "-lgone"], check=True)
    (tmp_path / "libgone.so").unlink()
    f, proc = _up(tmp_path, f"  binaries: [consul, {tmp_path / 'app'}]\n")
    _one_line_exit_2(proc)
    assert "libgone.so" in proc.stderr


def test_filebox_without_consul_while_consul_is_on(tmp_path):
    f, proc = _up(tmp_path, "  binaries: [/usr/bin/true]\n")
    _one_line_exit_2(proc)
    assert "filebox.binaries" in proc.stderr and "consul" in proc.stderr and f"{f}:" in proc.stderr


def test_service_app_whose_runtime_is_not_in_the_filebox(tmp_path):
    hello = Path(__file__).resolve().parents[2] / "examples" / "hello"
    f, proc = _up(tmp_path, "  binaries: [consul]\n", consul="", services=f"services:\n  - {{name: hello, app: {hello}}}\n")
    _one_line_exit_2(proc)
    assert proc.stderr.startswith(f"error: {f}:7: services[0].app: command 'node' is neither in the filebox (consul)"), proc.stderr


def test_a_filebox_file_at_the_root_is_refused_before_any_host(tmp_path):
    f, proc = _up(tmp_path, "  binaries: [consul]\n  files: ['/etc/hostname:/']\n")
    _one_line_exit_2(proc)
    assert proc.stderr.startswith(f"error: {f}:6: filebox.files[0]: filebox file '/etc/hostname:/': DEST must be a path below /"), proc.stderr
