"""The probe's consul_facts run in a local shell: its reads over bash's /dev/tcp against a small
HTTP server on loopback standing in for the agent's API; the fallback for hosts without bash
(docker exec, the consul CLI, wget) with stand-ins on PATH (the real ones run on hosts: e2e)."""

import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PROBE = Path(__file__).parent.parent.parent / "clusterctl" / "facts" / "probe.sh"
RAFT = {"Servers": [{"ID": "a1", "Node": "node1", "Address": "10.0.0.1:8300", "Leader": True, "Voter": True},
                    {"ID": "b2", "Node": "node2", "Address": "10.0.0.2:8300", "Leader": False, "Voter": False}], "Index": 7}  # fmt: skip
CHECKS = {"hello-alive": {"ServiceID": "hello", "ServiceName": "hello", "Status": "passing", "Output": "HTTP GET: 200\nok"}}


def _part(name: str) -> str:
    text = PROBE.read_text()
    if name == "CONSUL_HTTP":
        return re.search(r"^CONSUL_HTTP='.*?'$", text, re.S | re.M).group(0)
    return re.search(rf"^{name}\(\) \{{.*?^\}}$", text, re.S | re.M).group(0)


class Agent:
    """Answers like Consul's HTTP API: `answers` by path -> (status, body), or a list of them
    given in turn (the last one again after); records each request."""

    def __init__(self, answers: dict[str, tuple[int, str]]):
        self.requests: list[tuple[str, str | None]] = []
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                agent.requests.append((self.path, self.headers.get("X-Consul-Token")))
                answer = answers.get(self.path, (404, "not found"))
                if isinstance(answer, list):
                    answer = answer.pop(0) if len(answer) > 1 else answer[0]
                status, body = answer
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _run(tmp_path, port: int, token: str | None, agent_here: str = "") -> dict:
    """consul_facts ("" as when the probe cannot tell whether the agent's container is there);
    `sleep` a stand-in noting its calls in tmp_path/slept."""
    token_file = tmp_path / "agent.token"
    if token is not None:
        token_file.write_text(token + "\n")
    body = _part("consul_facts").replace("8500 /etc/clusterctl/consul/agent.token", f"{port} {token_file}")
    assert str(port) in body  # the agent's address is where the test put it
    script = f'SUDO=""\n{_part("CONSUL_HTTP")}\n{body}\nprintf "{{\\"x\\":1"; consul_facts {agent_here}; printf "}}"'
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sleep").write_text(f'#!/bin/sh\necho "$*" >>{tmp_path / "slept"}\n')
    (bin_dir / "sleep").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def agent_with():
    made = []

    def make(answers):
        made.append(Agent(answers))
        return made[-1]

    yield make
    for a in made:
        a.close()


def test_raft_and_checks_are_read_from_the_api_raft_with_the_agents_token(tmp_path, agent_with):
    agent = agent_with({"/v1/operator/raft/configuration?stale": (200, json.dumps(RAFT)), "/v1/agent/checks": (200, json.dumps(CHECKS))})
    d = _run(tmp_path, agent.port, "s3cret-token")
    assert d["consul_raft"]["Servers"][1] == RAFT["Servers"][1]
    assert d["consul_checks"] == CHECKS and "consul_token_missing" not in d
    assert agent.requests == [("/v1/operator/raft/configuration?stale", "s3cret-token"), ("/v1/agent/checks", None)]


def test_without_a_token_file_raft_is_asked_without_one(tmp_path, agent_with):
    agent = agent_with({"/v1/operator/raft/configuration?stale": (200, json.dumps(RAFT)), "/v1/agent/checks": (200, "{}")})
    d = _run(tmp_path, agent.port, None)
    assert d["consul_raft"]["Servers"][0]["Node"] == "node1" and d["consul_checks"] == {}
    assert agent.requests[0] == ("/v1/operator/raft/configuration?stale", None)


@pytest.mark.parametrize(("body", "missing"), [("ACL not found", True), ("Permission denied", False)])
def test_an_agent_token_consul_does_not_know_is_reported(tmp_path, agent_with, body, missing):
    agent = agent_with({"/v1/operator/raft/configuration?stale": (403, body), "/v1/agent/checks": (200, json.dumps(CHECKS))})
    d = _run(tmp_path, agent.port, "old-token")
    assert d["consul_raft"] is None and d.get("consul_token_missing", False) is missing
    assert d["consul_checks"] == CHECKS


def test_raft_is_asked_twice_before_it_counts_as_unknown(tmp_path, agent_with):
    raft = "/v1/operator/raft/configuration?stale"
    agent = agent_with({raft: [(500, "rpc error"), (200, json.dumps(RAFT))], "/v1/agent/checks": (200, "{}")})
    d = _run(tmp_path, agent.port, "t")
    assert d["consul_raft"]["Servers"][0]["Node"] == "node1" and d["consul_checks"] == {}
    assert [p for p, _ in agent.requests] == [raft, raft, "/v1/agent/checks"]
    agent = agent_with({raft: (500, "rpc error"), "/v1/agent/checks": (200, "{}")})
    d = _run(tmp_path, agent.port, "t")
    assert d["consul_raft"] is None and d["consul_checks"] == {}
    assert [p for p, _ in agent.requests] == [raft, raft, "/v1/agent/checks"]
    # Why, for the plan to say: the status line and the start of the body, JSON-safe.
    assert d["consul_raft_error"].startswith("HTTP/1.0 500 ") and d["consul_raft_error"].endswith(": rpc error")


def test_other_answers_are_unknown(tmp_path, agent_with):
    d = _run(tmp_path, agent_with({}).port, "t")  # 404 to both
    assert d["consul_raft"] is None and d["consul_checks"] is None


def test_no_agent_listening_is_unknown(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    d = _run(tmp_path, port, "t")
    assert d["consul_raft"] is None and d["consul_checks"] is None
    assert (tmp_path / "slept").read_text() == "0.3\n"  # asked again: the agent may be restarting
    assert d["consul_raft_error"] == "nothing listens on its port"


def test_no_agent_listening_and_no_agent_container_is_unknown_at_once(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    d = _run(tmp_path, port, "t", agent_here="0")
    assert d["consul_raft"] is None and not (tmp_path / "slept").exists()


def _in_container(tmp_path, consul_script: str) -> list[str]:
    """consul_in_container (hosts without bash) with stand-ins for docker, consul and wget."""
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
    script = f'SUDO=""\n{_part("consul_in_container")}\nconsul_in_container'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_without_bash_raft_comes_from_the_consul_cli_in_the_container(tmp_path):
    peers = (
        'echo "Node   ID   Address          State     Voter  RaftProtocol"\n'
        'echo "node1  a1   10.0.0.1:8300    leader    true   3"\n'
        'echo "node2  b2   10.0.0.2:8300    follower  false  3"\n'
    )
    raft, checks = _in_container(tmp_path, peers)[:2]
    assert json.loads(raft) == {"Servers": [{"Node": "node1", "Voter": True}, {"Node": "node2", "Voter": False}]}
    assert json.loads(checks)["hello-alive"]["Status"] == "passing"


@pytest.mark.parametrize(("error", "missing"), [("403 (ACL not found)", True), ("connection refused", False)])
def test_without_bash_an_unknown_agent_token_is_reported(tmp_path, error, missing):
    lines = _in_container(tmp_path, f'echo "Error getting peers: Unexpected response code: {error}" >&2; exit 1\n')
    assert (lines[0] == '{"TokenMissing":true}') is missing
