"""`clusterctl validate`: the file, its filebox binaries and its apps checked, the normalized file
printed; no host contacted (127.0.0.1:1: nothing listens), no state dir created."""

import json
import re
import subprocess
import sys

import pytest

from clusterctl.config.loader import load

FILE = """\
ssh: {connect_timeout: 1}
network: {driver: weave, weave_password_env: WEAVE_PW}
hosts:
  - {name: a, address: 127.0.0.1, port: 0022, labels: {country: no}}
  - {name: b, address: 127.0.0.2, port: 1, labels: {country: on}}
services:
  - {name: web, image: nginx:1, replicas: 2, env: {MODE: "off"}}
"""


def _validate(tmp_path, text, *args, command="validate"):
    f = tmp_path / "cluster.yaml"
    f.write_text(text)
    env = {
        "CLUSTERCTL_STATE_DIR": str(tmp_path / "state"),
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "COLUMNS": "300",
        "WEAVE_PW": "hunter2-not-to-be-printed",
    }
    proc = subprocess.run([sys.executable, "-m", "clusterctl", command, "-f", str(f), *args], capture_output=True, text=True, env=env)
    assert not (tmp_path / "state").exists(), f"{command} made a state dir"
    return f, proc


def test_text_is_the_normalized_file_which_loads_to_the_same_model(tmp_path):
    f, proc = _validate(tmp_path, FILE)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(rf"{re.escape(str(f))}: valid: cluster cluster, 2 hosts, 1 service, filebox [0-9a-f]{{12}}\n", proc.stderr), proc.stderr
    again = tmp_path / "normalized.yaml"
    again.write_text(proc.stdout)
    assert load(again).spec == load(f).spec.model_copy(update={"name": "cluster"})
    assert "port: 22\n" in proc.stdout and "country: 'no'" in proc.stdout


def test_json_is_the_model_with_no_secret(tmp_path):
    f, proc = _validate(tmp_path, FILE, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    model = json.loads(proc.stdout)
    assert model["name"] == "cluster"
    assert [(h["port"], h["labels"]) for h in model["hosts"]] == [(22, {"country": "no"}), (1, {"country": "on"})]
    assert model["network"]["weave_password_env"] == "WEAVE_PW"
    assert "hunter2" not in proc.stdout

    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from keys(v)
        elif isinstance(node, list):
            for v in node:
                yield from keys(v)

    secretish = {k for k in keys(model) if re.search(r"password|token|secret|private|gossip", k)}
    assert secretish == {"weave_password_env"}  # the name of a variable, never its value


@pytest.mark.parametrize("command", ["validate", "up"])
def test_every_error_of_the_file_at_once(tmp_path, command):
    text = "hosts:\n  - {name: a, address: 127.0.0.1, port: 0}\n  - {name: a b, address: x;y}\ncolour: blue\n"
    f, proc = _validate(tmp_path, text, command=command)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line.split(": ")[:3] for line in proc.stderr.splitlines()] == [
        ["error", f"{f}:2", "hosts[0].port"],
        ["error", f"{f}:3", "hosts[1].name"],
        ["error", f"{f}:3", "hosts[1].address"],
        ["error", f"{f}:4", "colour"],
    ], proc.stderr


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("filebox: {binaries: [consul, /nonexistent/node]}\n", "filebox.binaries: "),
        ("filebox: {files: ['/etc/hostname:/']}\n", "filebox.files[0]: "),
    ],
)
def test_the_filebox_is_checked(tmp_path, extra, fragment):
    f, proc = _validate(tmp_path, "hosts:\n  - {name: a, address: 127.0.0.1, port: 1}\n" + extra)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {f}:3: {fragment}"), proc.stderr


def test_apps_are_checked(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "clusterctl-app.yaml").write_text("name: hi\ncommand: [node, x.js]\nport: 3000\n")
    f, proc = _validate(tmp_path, "hosts:\n  - {name: a, address: 127.0.0.1, port: 1}\nservices:\n  - {name: hi, app: app}\n")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {f}:4: services[0].app: command 'node' is neither in the filebox (consul)"), proc.stderr
    (app / "clusterctl-app.yaml").write_text("name: hi\nport: 2020-13-45\nport: 1\n")
    f, proc = _validate(tmp_path, "hosts:\n  - {name: a, address: 127.0.0.1, port: 1}\nservices:\n  - {name: hi, app: app}\n")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"error: {f}:4: services[0].app: {app / 'clusterctl-app.yaml'}:3: port: duplicate key"], proc.stderr
