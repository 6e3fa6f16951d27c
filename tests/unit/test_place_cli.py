"""`clusterctl place`: the placement from the file alone, as a table or JSON; no host contacted
(127.0.0.x: nothing listens), no state dir created."""

import json

from tests.unit.test_validate import _validate

FILE = """\
name: demo
hosts:
  - {name: a1, address: 127.0.0.1, labels: {provider: aws}, capacity: {cpu: 4, memory: 8G}}
  - {name: a2, address: 127.0.0.2, labels: {provider: aws}}
  - {name: h1, address: 127.0.0.3, labels: {provider: hetzner}}
services:
  - {name: web, image: nginx, replicas: 2, port: 80, spread: provider, resources: {cpu: 2, memory: 1G}}
  - {name: api, image: nginx, replicas: 3, port: 8080, spread: {label: provider, targets: {aws: 90%}}}
"""


def test_json_lists_the_hosts_of_each_service_and_the_targets_it_could_not_meet(tmp_path):
    text = FILE.replace("cpu: 2, memory", "cpu: 1, memory").replace("aws: 90%", "hetzner: 90%")
    _, proc = _validate(tmp_path, text, "-o", "json", "--all-up", command="place")
    assert proc.returncode == 0, proc.stderr
    note = "services.api: spread target provider=hetzner wants 2.7 replicas, 1 fit there; the others took the rest"
    assert json.loads(proc.stdout) == {
        "cluster": "demo",
        "services": [{"name": "web", "hosts": ["a1", "h1"]}, {"name": "api", "hosts": ["a1", "a2", "h1"]}],
        "notes": [note],
    }
    assert proc.stderr == f"note: {note}\n"


def test_a_placement_that_does_not_fit_is_one_line_naming_the_file_and_exit_2(tmp_path):
    f, proc = _validate(tmp_path, FILE, command="place")
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr == (
        f"error: {f}: services.web: 2 replicas need 2 hosts (one per host: a fixed port), but 1 is up with room for 2 cpu, 1G"
        " (a2 lacks 0.5 cpu, h1 lacks 0.5 cpu)\n"
    )


def test_the_table_shows_each_service_with_its_hosts(tmp_path):
    _, proc = _validate(tmp_path, FILE.replace("cpu: 2, memory", "cpu: 1, memory"), command="place")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "web" in line or "api" in line]
    assert "a1, h1" in rows[0] and "1 cpu, 1G" in rows[0] and "a1, a2, h1" in rows[1], proc.stdout


def test_the_ssh_keys_the_file_names_need_not_be_here(tmp_path):
    text = "ssh: {identity_file: ~/no-such-key}\n" + FILE.replace("cpu: 2, memory", "cpu: 1, memory")
    _, proc = _validate(tmp_path, text, "-o", "json", command="place")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["services"][0] == {"name": "web", "hosts": ["a1", "h1"]}


def test_piped_at_80_columns_names_are_never_cut(tmp_path):
    import subprocess
    import sys

    long = "a-service-with-a-rather-long-name"
    text = FILE.replace("cpu: 2, memory", "cpu: 1, memory").replace("name: api", f"name: {long}").replace("a1,", "host-number-one-of-the-aws-side,")
    text = text.replace("{name: a1,", "{name: host-number-one-of-the-aws-side,")
    f = tmp_path / "cluster.yaml"
    f.write_text(text)
    env = {"CLUSTERCTL_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin", "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, "-m", "clusterctl", "place", "-f", str(f)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert long in proc.stdout and "host-number-one-of-the-aws-side" in proc.stdout and "…" not in proc.stdout, proc.stdout
