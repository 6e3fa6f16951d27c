"""`clusterctl ui` (clusterctl/ui.py): which host serves the UI, what is printed, and the
tunnel's fixed local port; then bad input from the command line, one line and no traceback."""

import json
import socket
import subprocess
import sys
from pathlib import Path


from clusterctl.commands import consul as build
from clusterctl.config.loader import load_text
from clusterctl.errors import EXIT_BAD_INPUT, EXIT_HOSTS_FAILED
from clusterctl.facts.parser import parse_probe_output
from clusterctl.ui import (
    acl_on,
    first_candidates,
    login_hint,
    more_to_probe,
    no_server,
    serving_servers,
    should_open_browser,
    ui_status_ok,
    ui_url,
)

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"
FILE = """
name: c1
hosts:
  - {name: w0, address: 10.0.0.9, roles: [client]}
  - {name: n1, address: 10.0.0.1}
  - {name: n2, address: 10.0.0.2}
  - {name: n3, address: 10.0.0.3}
  - {name: w1, address: 10.0.0.4, roles: [client]}
"""
CLUSTER = load_text(FILE, "c.yaml")


def facts(mode=None, state="running", cluster="c1", acl="2", raft=None):
    """A host's probe facts; `mode`: its Consul agent's (server, client), None for no agent."""
    data = json.loads(FIXTURE.read_text())
    containers = []
    if mode is not None:
        labels = f"clusterctl.cluster={cluster},clusterctl.role=consul,clusterctl.consul.mode={mode},clusterctl.consul.acl={acl}"
        containers.append({"ID": "x", "Names": build.CONTAINER, "Image": "i", "State": state, "Labels": labels})
    data["docker"]["containers"] = containers
    data["docker"]["consul_raft"] = {"Servers": [{"Node": n, "Voter": True} for n in raft]} if raft else None
    return parse_probe_output(json.dumps(data))


def test_url_and_what_counts_as_the_ui_answering():
    assert ui_url(18500) == "http://127.0.0.1:18500/ui/"
    assert ui_status_ok(200) and ui_status_ok(301) and ui_status_ok(302) and ui_status_ok(307)
    assert not ui_status_ok(404) and not ui_status_ok(403) and not ui_status_ok(500)


def test_servers_serve_the_ui_and_clients_do_not():
    # The UI is served on the HTTP API's port (loopback only): servers run with -ui, clients not.
    def args(server):
        return build.AgentConfig("n1", server, 3, ("10.0.0.2",), "10.0.0.1", ("127.0.0.1",), ("127.0.0.1",),
                                 "dc1", (), "img", "box", "c1").args()  # fmt: skip

    assert "-ui" in args(True) and "-client=127.0.0.1" in args(True)
    assert "-ui" not in args(False)


def test_first_candidates_are_the_files_servers_in_file_order_or_the_host_asked_for():
    assert first_candidates(CLUSTER, None) == ("n1", "n2", "n3")
    assert first_candidates(CLUSTER, "w1") == ("w1",)


def test_the_first_running_server_in_file_order_serves():
    seen = {"n1": facts("server", state="exited"), "n2": facts("server"), "n3": facts("server"), "w0": facts("client")}
    assert serving_servers(CLUSTER, seen) == ("n2", "n3")
    # Another cluster's agent, or a client, is no candidate.
    assert serving_servers(CLUSTER, {"n1": facts("server", cluster="other"), "w0": facts("client")}) == ()


def test_when_no_probed_host_runs_a_server_raft_names_them_else_every_other_host():
    # The file's choice (n1..n3) runs clients (servers kept elsewhere, by an older file): their
    # agents' raft view names the servers, probed next.
    seen = {n: facts("client", raft=("w0", "w1")) for n in ("n1", "n2", "n3")}
    assert more_to_probe(CLUSTER, seen, {"n1", "n2", "n3"}) == ("w0", "w1")
    # No raft view (agents down, hosts unreachable): every host not probed yet.
    assert more_to_probe(CLUSTER, {}, {"n1", "n2", "n3"}) == ("w0", "w1")
    assert more_to_probe(CLUSTER, {}, {h.name for h in CLUSTER.hosts}) == ()


def test_why_no_server_serves_is_one_line_with_its_exit_code():
    err = no_server(CLUSTER, {}, {"n1": "cannot reach root@10.0.0.1: timed out", "n2": "x"}, None)
    assert err.exit_code == EXIT_HOSTS_FAILED
    assert str(err) == "no Consul server of cluster c1 answered: n1: cannot reach root@10.0.0.1: timed out; n2: x"
    err = no_server(CLUSTER, {n: facts() for n in ("n1", "n2", "n3")}, {}, None)
    assert err.exit_code == EXIT_HOSTS_FAILED and "runs no Consul server (probed n1, n2, n3): is it up?" in str(err)
    assert "clusterctl up -f c.yaml" in str(err)
    # --host: a client is the operator's mistake (exit 2), naming the servers raft knows.
    err = no_server(CLUSTER, {"w0": facts("client", raft=("n1", "n3", "n2"))}, {}, "w0")
    assert err.exit_code == EXIT_BAD_INPUT
    assert str(err) == "w0 runs a Consul client; the UI is served by the servers: --host one of n1, n2, n3, or leave --host out"
    assert no_server(CLUSTER, {}, {"n2": "refused"}, "n2").exit_code == EXIT_HOSTS_FAILED
    assert "stopped" in str(no_server(CLUSTER, {"n2": facts("server", state="exited")}, {}, "n2"))
    assert "runs no Consul agent of cluster c1" in str(no_server(CLUSTER, {"n2": facts()}, {}, "n2"))


def test_acl_hint_names_the_file_never_the_token():
    assert acl_on(CLUSTER, facts("server", acl="2")) and acl_on(CLUSTER, facts("server", acl="1"))
    assert not acl_on(CLUSTER, facts("server", acl="0"))
    where = Path("/state/clusters/c1/acl/management.token")
    hint = login_hint(where, True)
    assert str(where) in hint and "--show-token" in hint
    assert "clusterctl secrets import" in login_hint(where, False)


def test_a_browser_only_where_one_can_show():
    assert should_open_browser(False, {"DISPLAY": ":0"}, "linux")
    assert should_open_browser(False, {"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert not should_open_browser(False, {}, "linux")
    assert should_open_browser(False, {}, "darwin")
    assert not should_open_browser(True, {"DISPLAY": ":0"}, "darwin")


def _ui(tmp_path, *args, consul="", hosts=None):
    f = tmp_path / "cluster.yaml"
    f.write_text(
        "ssh: {known_hosts: kh, connect_timeout: 1}\n"
        + (hosts or "hosts:\n  - {name: a, address: 127.0.0.1, port: 1}\n  - {name: b, address: 127.0.0.2, port: 1}\n")
        + consul
    )
    env = {"CLUSTERCTL_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin:/usr/local/bin", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "clusterctl", "ui", "-f", str(f), "--no-browser", *args],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return f, proc


def test_unknown_host_is_bad_input(tmp_path):
    f, proc = _ui(tmp_path, "--host", "zz")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {f}: no host named zz (hosts: a, b)"


def test_consul_off_is_bad_input(tmp_path):
    f, proc = _ui(tmp_path, consul="consul: {enabled: false}\nfilebox: {binaries: []}\n")
    assert proc.returncode == 2 and "consul.enabled: Consul is off in this cluster" in proc.stderr, proc.stderr


def test_a_port_in_use_is_bad_input_before_any_host(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        f, proc = _ui(tmp_path, "--port", str(port))
    assert proc.returncode == 2 and f"--port {port}: 127.0.0.1:{port} is in use" in proc.stderr, proc.stderr


def test_no_reachable_server_names_each_host(tmp_path):
    f, proc = _ui(tmp_path)
    assert proc.returncode == 1, proc.stderr
    # 2 hosts: one server (a), the default; then b, as no probed host ran one.
    assert proc.stderr.startswith("error: no Consul server of cluster cluster answered: a: cannot reach root@127.0.0.1:1"), proc.stderr
    assert "; b: cannot reach root@127.0.0.2:1" in proc.stderr
