"""The catalog and health waits of the services phase in a local shell, their bash path against a
small HTTP server on loopback standing in for the agent's API (the real agent: e2e, test_06): a
blocking query that ends as the catalog changes, a timeout naming what is missing."""

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clusterctl.commands import service as build


class Agent:
    """`answer(path) -> (status, body, index)`; records each request's path."""

    def __init__(self, answer):
        self.paths: list[str] = []
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
                status, body, index = answer(self.path)
                self.send_response(status)
                self.send_header("X-Consul-Index", str(index))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def run(self, cmd, staged=None) -> subprocess.CompletedProcess:
        argv = list(cmd.argv)
        assert argv[9] == str(build.AGENT_PORT)
        argv[9] = str(self.server.server_address[1])  # the agent's port: the stand-in's
        if staged is not None:
            assert argv[11] == build.CATALOG_DIR
            argv[11] = str(staged)
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
