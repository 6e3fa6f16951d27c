"""The probe's consul_facts function run in a local shell, with stand-ins for docker, consul and
wget on PATH (the real ones run on hosts: tests/e2e)."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

PROBE = Path(__file__).parent.parent.parent / "clusterctl" / "facts" / "probe.sh"


def _consul_facts(tmp_path, consul_script: str) -> dict:
    body = re.search(r"^consul_facts\(\) \{.*?^\}$", PROBE.read_text(), re.S | re.M).group(0)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_ins = {
        "docker": '#!/bin/sh\nshift 2\nexec "$@"\n',  # docker exec CONTAINER CMD... -> CMD...
        "consul": "#!/bin/sh\n" + consul_script,
        "wget": '#!/bin/sh\nfor a; do case "$a" in /tmp/*) exec >"$a" ;; esac; done\necho \'{"hello-alive":{"ServiceName":"hello","Status":"passing"}}\'\n',
    }
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = f'SUDO=""\n{body}\nprintf "{{\\"x\\":1"; consul_facts; printf "}}"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_raft_servers_are_read_as_json(tmp_path):
    peers = (
        'echo "Node   ID   Address          State     Voter  RaftProtocol"\n'
        'echo "node1  a1   10.0.0.1:8300    leader    true   3"\n'
        'echo "node2  b2   10.0.0.2:8300    follower  false  3"\n'
    )
    d = _consul_facts(tmp_path, peers)
    assert d["consul_raft"] == {"Servers": [{"Node": "node1", "Voter": True}, {"Node": "node2", "Voter": False}]}
    assert "consul_token_missing" not in d and d["consul_checks"]["hello-alive"]["Status"] == "passing"


@pytest.mark.parametrize(("error", "missing"), [("403 (ACL not found)", True), ("connection refused", False)])
def test_an_agent_token_consul_does_not_know_is_reported(tmp_path, error, missing):
    d = _consul_facts(tmp_path, f'echo "Error getting peers: Unexpected response code: {error}" >&2; exit 1\n')
    assert d["consul_raft"] is None and d.get("consul_token_missing", False) is missing
