"""Which cluster file a command uses when -f is not given."""

import subprocess
import sys


def _run(cwd, env_dir, *args):
    env = {"CLUSTERCTL_STATE_DIR": str(env_dir), "PATH": "/usr/bin:/bin:/usr/local/bin", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "clusterctl", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_clusterctl_yaml_in_the_current_folder_is_used(tmp_path):
    (tmp_path / "clusterctl.yaml").write_text("hosts:\n  - {name: a, address: 127.0.0.1, port: 1, bad: key}\n")
    proc = _run(tmp_path, tmp_path / "state", "plan")
    assert proc.returncode == 2 and "clusterctl.yaml:2: hosts[0].bad: unknown key" in proc.stderr


def test_without_a_file_or_a_lab_commands_other_than_up_say_what_to_do(tmp_path):
    proc = _run(tmp_path, tmp_path / "state", "plan")
    assert proc.returncode == 2
    assert "no cluster file" in proc.stderr and "clusterctl up" in proc.stderr
