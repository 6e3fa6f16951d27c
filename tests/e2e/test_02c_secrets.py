"""End to end on the shared lab (Consul running after test_02): a second operator with an empty
state dir is refused by `up` (exit 2, one line) and the agents keep running untouched; with the
first operator's `secrets export` imported, its `up` is a no-op."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import CLI

pytestmark = pytest.mark.e2e


def _agent_ids(lab) -> dict[str, str]:
    ids = {}
    for host in ("node1", "node2", "node3"):
        proc = lab.docker("exec", lab.container(host), "docker", "inspect", "-f", "{{.Id}}", "clusterctl-consul")
        ids[host] = proc.stdout.strip()
    return ids


def test_a_second_operator_without_the_key_is_refused_then_imports_it_and_changes_nothing(cli, lab, tmp_path):
    code, report = cli.json("up", "-f", str(lab.cluster_file))  # converged after test_02: a no-op
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    before = _agent_ids(lab)
    assert all(before.values()), before

    other = CLI(dict(cli.env, CLUSTERCTL_STATE_DIR=str(tmp_path / "other-operator")))
    proc = other("up", "-f", str(lab.cluster_file), timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "runs Consul on node1, node2, node3" in errors[0] and "gossip.key is missing" in errors[0], errors
    assert str(tmp_path / "other-operator") in errors[0]
    assert proc.stdout == ""
    assert _agent_ids(lab) == before
    assert not (tmp_path / "other-operator" / "clusters" / f"lab-{lab.name}" / "gossip.key").exists()

    bundle = tmp_path / "secrets.json"
    proc = cli("secrets", "export", "-o", str(bundle), "-f", str(lab.cluster_file))
    assert proc.returncode == 0, proc.stderr
    assert os.stat(bundle).st_mode & 0o777 == 0o600
    code, doc = other.json("secrets", "import", str(bundle), "-f", str(lab.cluster_file))
    assert code == 0 and doc["secrets"]["gossip.key"] == "imported", doc

    code, report = other.json("up", "-f", str(lab.cluster_file), timeout=120)
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    assert report["changed"] is False, json.dumps(report, indent=1)[-3000:]
    assert _agent_ids(lab) == before
