"""End to end on the shared lab, plans only (cheap): the server choice for hosts without roles
reads the running servers from the real probe (clusterctl/schedule/servers.py, phases/consul.py),
and a server made a client is planned to leave raft gracefully first. Nothing is changed."""

from __future__ import annotations

import json

import pytest
import yaml

from clusterctl.commands.consul import consul_cli

pytestmark = pytest.mark.e2e


def _file(lab, tmp_path, name, roles):
    """The lab's file with each host's roles from `roles` (missing: no roles at all)."""
    doc = yaml.safe_load(lab.cluster_file.read_text())
    for h in doc["hosts"]:
        h.pop("roles", None)
        if h["name"] in roles:
            h["roles"] = roles[h["name"]]
    f = tmp_path / name
    f.write_text(yaml.safe_dump(doc))
    return f


def test_hosts_without_roles_keep_their_servers_and_a_demoted_one_would_leave_first(cli, lab, tmp_path):
    code, report = cli.json("up", "-f", str(lab.cluster_file))  # converged after test_02: a no-op
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    # Without roles, 3 hosts get 3 servers: the three running ones, so nothing to do.
    code, report = cli.json("plan", "-f", str(_file(lab, tmp_path, "auto.yaml", {})))
    assert code == 0 and report["changed"] is False, json.dumps(report, indent=1)[-3000:]
    code, report = cli.json("plan", "-f", str(_file(lab, tmp_path, "demoted.yaml", {"node3": ["client"]})))
    assert code == 0, json.dumps(report, indent=1)[-3000:]
    steps = {h["name"]: next(p for p in h["phases"] if p["phase"] == "consul") for h in report["hosts"]}
    assert steps["node1"]["status"] == steps["node2"]["status"] == "ok"  # the other servers stay as they are
    assert steps["node3"]["status"] == "planned"
    # Its files (now a client's certificate) are written first; they count only from its restart.
    assert steps["node3"]["commands"][0].endswith("(not shown)") and "client" not in steps["node3"]["commands"][0]
    assert steps["node3"]["commands"][1:4] == [
        "docker update --restart no clusterctl-consul",
        consul_cli("leave", description="").render(),
        "docker rm -f clusterctl-consul || true",
    ]  # fmt: skip
    assert any("consul.mode=client" in c for c in steps["node3"]["commands"])
