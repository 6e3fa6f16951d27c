"""The catalog and health waits of the services phase and consul's leader wait in a local shell, their bash path against a
small HTTP server on loopback standing in for the agent's API (the real agent: e2e, test_06): a
blocking query that ends as the catalog changes, a timeout naming what is missing."""

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clusterctl.commands import consul
from clusterctl.commands import service as build


class Agent:
    """`answer(path) -> (status, body, index)`; records each request's path."""

    def __init__(self, answer):
        self.paths: list[str] = []
        self.tokens: list[str | None] = []  # each GET's X-Consul-Token
        self.puts: list[tuple[str, str | None, bytes]] = []  # (path, token, body)
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                agent.puts.append((self.path, self.headers.get("X-Consul-Token"), body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"true")

            def do_GET(self):  # noqa: N802 - http.server's name
                agent.paths.append(self.path)
                agent.tokens.append(self.headers.get("X-Consul-Token"))
                status, body, index = answer(self.path)
                self.send_response(status)
                self.send_header("X-Consul-Index", str(index))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def run(self, cmd, staged=None, token_file=None) -> subprocess.CompletedProcess:
        argv = list(cmd.argv)
        assert argv[9] == str(build.AGENT_PORT)
        argv[9] = str(self.server.server_address[1])  # the agent's port: the stand-in's
        if staged is not None:
            assert argv[11] == build.CATALOG_DIR
            argv[11] = str(staged)
        if token_file is not None:
            assert argv[11] == f"{consul.CONFIG_DIR}/{consul.AGENT_TOKEN}"
            argv[11] = str(token_file)
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def agent_with():
    made = []

    def make(answer):
        made.append(Agent(answer))
        return made[-1]

    yield make
    for a in made:
        a.close()


def _node(*ids: str) -> str:
    # Compact, as Consul writes it.
    return json.dumps({"Node": {"Node": "node1"}, "Services": {i: {"ID": i, "Service": i.split(".")[0]} for i in ids}}, separators=(",", ":"))


def test_the_catalog_wait_blocks_on_the_index_and_ends_as_the_sync_lands(agent_with):
    def answer(path):
        if "index=0&" in path:
            return 200, _node(), 7
        time.sleep(0.2)  # a blocking query: the agent's sync lands meanwhile
        return 200, _node("web", "web.2"), 8

    agent = agent_with(answer)
    t0 = time.monotonic()
    run = agent.run(build.wait_registered(["web", "web.2"], "node1"))
    assert run.returncode == 0, run.stderr
    assert agent.paths == ["/v1/catalog/node/node1?index=0&wait=2s", "/v1/catalog/node/node1?index=7&wait=2s"]
    assert time.monotonic() - t0 < 2


def test_the_catalog_wait_times_out_naming_what_is_missing(agent_with):
    def answer(path):
        if "index=3&" in path:
            time.sleep(0.4)  # blocks as Consul does, until its wait ends with no change
        return 200, _node("web"), 3

    agent = agent_with(answer)
    run = agent.run(build.wait_registered(["web", "web.2"], "node1", timeout=1))
    assert run.returncode == 1 and "the catalog does not list web.2 on node1 after 1s" in run.stderr
    # The same index again: blocking, never a busy loop.
    assert all(p.endswith("index=3&wait=2s") for p in agent.paths[1:]) and len(agent.paths) < 10


def test_the_deregistration_wait_ends_once_the_replica_is_gone(agent_with):
    answers = iter([(200, _node("web"), 4), (200, _node(), 5)])
    agent = agent_with(lambda path: next(answers))
    run = agent.run(build.wait_deregistered(["web"], "node1"))
    assert run.returncode == 0 and len(agent.paths) == 2


def test_no_agent_answering_is_named(agent_with):
    agent = agent_with(lambda path: (500, "rpc error", 0))
    run = agent.run(build.wait_registered(["web"], "node1", timeout=1))
    assert run.returncode == 1 and "the catalog does not list (its agent did not answer) on node1" in run.stderr


def test_the_health_wait_polls_until_the_replica_passes(agent_with):
    answers = iter([(503, "critical", 0), (503, "critical", 0), (200, "passing", 0)])
    agent = agent_with(lambda path: next(answers))
    run = agent.run(build.wait_healthy("web", 5))
    assert run.returncode == 0 and agent.paths == ["/v1/agent/health/service/id/web"] * 3


def test_the_health_wait_gives_up_after_its_deadline(agent_with):
    agent = agent_with(lambda path: (503, "critical", 0))
    run = agent.run(build.wait_healthy("web", 1))
    assert run.returncode == 1 and "web is not healthy after 1s" in run.stderr


def test_a_replica_the_agents_sync_has_not_brought_yet_is_registered_in_the_catalog_with_its_token(agent_with, tmp_path):
    """The agent's anti-entropy held back (a stagger of up to 3 s after a full sync was asked
    for): the staged entry goes to the catalog with the service's token, the wait ends, and the
    staging dir is gone."""
    staged = tmp_path / "catalog"
    staged.mkdir()
    (staged / "web.json").write_text('{"Node":"node1","SkipNodeUpdate":true,"Service":{"ID":"web"}}')
    (staged / "web.token").write_text("svc-token\n")
    agent = None

    def answer(path):
        return (200, _node("web"), 9) if agent.puts else (200, _node(), 7)

    agent = agent_with(answer)
    run = agent.run(build.wait_registered(["web"], "node1", staged=True), staged=staged)
    assert run.returncode == 0, run.stderr
    assert agent.puts == [("/v1/catalog/register", "svc-token", b'{"Node":"node1","SkipNodeUpdate":true,"Service":{"ID":"web"}}')]
    assert not staged.exists()
    assert "svc-token" not in " ".join(build.wait_registered(["web"], "node1", staged=True).argv)


def test_without_a_staged_entry_the_wait_only_waits(agent_with, tmp_path):
    answers = iter([(200, _node(), 4), (200, _node("web"), 5)])
    agent = agent_with(lambda path: next(answers))
    run = agent.run(build.wait_registered(["web"], "node1", staged=True), staged=tmp_path / "none")
    assert run.returncode == 0 and agent.puts == [] and len(agent.paths) == 2


def _raft(**voters: bool) -> str:
    servers = [{"ID": n, "Node": n, "Address": f"{n}:8300", "Leader": False, "ProtocolVersion": "3", "Voter": v} for n, v in voters.items()]
    return json.dumps({"Servers": servers, "Index": 9}, separators=(",", ":"))


def test_the_leader_wait_ends_once_raft_counts_the_server_a_voter_read_with_the_agents_token(agent_with, tmp_path):
    token = tmp_path / "agent.token"
    token.write_text("agent-secret\n")
    asked = {"leader": 0, "raft": 0}

    def answer(path):
        if path == "/v1/status/leader":
            asked["leader"] += 1
            return 200, '""' if asked["leader"] < 3 else '"10.0.0.1:8300"', 1
        if path == "/v1/operator/raft/configuration":
            asked["raft"] += 1
            return 200, _raft(node2=True, node1=asked["raft"] >= 2), 9
        return 404, "", 0

    agent = agent_with(answer)
    started = time.monotonic()
    proc = agent.run(consul.wait_for_leader(10, voter="node1"), token_file=token)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 3  # polled every 0.1 s, not every 0.5
    assert asked == {"leader": 4, "raft": 2}
    assert set(agent.tokens) == {"agent-secret"}


def test_the_leader_wait_of_a_client_or_of_an_agent_whose_token_is_not_made_yet_needs_a_leader_only(agent_with, tmp_path):
    def answer(path):
        if path == "/v1/status/leader":
            return 200, '"10.0.0.1:8300"', 1
        return 403, "ACL not found", 0

    agent = agent_with(answer)
    assert agent.run(consul.wait_for_leader(10), token_file=tmp_path / "none").returncode == 0
    assert agent.paths == ["/v1/status/leader"]
    proc = agent.run(consul.wait_for_leader(10, voter="node1"), token_file=tmp_path / "none")
    assert proc.returncode == 0 and agent.paths[1:] == ["/v1/status/leader", "/v1/operator/raft/configuration"]
    assert agent.tokens == [None, None, None]


def test_the_leader_wait_times_out_when_the_server_stays_a_non_voter(agent_with, tmp_path):
    def answer(path):
        if path == "/v1/status/leader":
            return 200, '"10.0.0.1:8300"', 1
        return 200, _raft(node1=False, node2=True), 9

    proc = agent_with(answer).run(consul.wait_for_leader(1, voter="node1"), token_file=tmp_path / "none")
    assert proc.returncode == 1 and "no leader (or is not a voter) after 1s" in proc.stderr
