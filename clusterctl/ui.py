"""`clusterctl ui`: Consul's web UI through an SSH tunnel to one server's loopback.

Consul's servers serve the UI (`-ui`, commands/consul.py) on the HTTP API port, which listens
on the host's 127.0.0.1 only; clusterctl forwards a port on the operator's 127.0.0.1 to it
through the same SSH machinery as every other command (known_hosts, bastions, ssh_config).

Which server: `--host`, or the first host in the file's order whose probe shows a running
Consul server agent of this cluster and whose UI answers. The probe goes first to the servers
the file alone names (roles, else the default choice: schedule/servers.py); when none of them
runs one, to the servers raft names (every agent's probe reads raft), else to every other host.

The management token is never printed unless asked for (`--show-token`): the UI's login wants
it, so a line on stderr says where it is kept.
"""

from __future__ import annotations

import http.client
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clusterctl.commands.consul import CONTAINER as CONSUL_CONTAINER
from clusterctl.config.loader import Cluster
from clusterctl.errors import EXIT_HOSTS_FAILED, UserError
from clusterctl.facts.parser import HostFacts
from clusterctl.phases.consul import running_servers
from clusterctl.schedule.servers import choose_servers

UI_PATH = "/ui/"
# Where each agent's HTTP API (and a server's UI) listens on its host.
CONSUL_HTTP = ("127.0.0.1", 8500)


class HostsFailed(UserError):
    """What the hosts said stops the command (none reachable, none runs a server): exit 1."""

    exit_code = EXIT_HOSTS_FAILED


def ui_url(port: int) -> str:
    return f"http://127.0.0.1:{port}{UI_PATH}"


def ui_status_ok(status: int) -> bool:
    """GET /ui/ served the UI: 200, or a redirect to it (Consul versions differ)."""
    return status == 200 or status in (301, 302, 303, 307, 308)


def first_candidates(cluster: Cluster, wanted: str | None) -> tuple[str, ...]:
    """The hosts to probe first: `wanted` alone, else the servers the file alone names (its
    roles, else the default choice), in the file's order."""
    if wanted is not None:
        return (wanted,)
    spec = cluster.spec
    return choose_servers(spec.hosts, spec.consul.servers_spread).servers


def _own_agent(cluster: Cluster, facts: HostFacts):
    agent = facts.container(CONSUL_CONTAINER)
    return agent if agent is not None and agent.labels.get("clusterctl.cluster") == cluster.name else None


def serving_servers(cluster: Cluster, facts: Mapping[str, HostFacts]) -> tuple[str, ...]:
    """The probed hosts whose Consul agent of this cluster is a running server, in file order."""
    found = []
    for h in cluster.hosts:
        f = facts.get(h.name)
        agent = _own_agent(cluster, f) if f is not None else None
        if agent is not None and agent.running and agent.labels.get("clusterctl.consul.mode") == "server":
            found.append(h.name)
    return tuple(found)


def more_to_probe(cluster: Cluster, facts: Mapping[str, HostFacts], probed: set[str] | frozenset[str]) -> tuple[str, ...]:
    """Hosts to probe next when no probed host runs a server: those raft names as servers (from
    the agents that answered), else every host not probed yet; in file order."""
    raft = running_servers(cluster, facts)
    named = tuple(h.name for h in cluster.hosts if h.name in raft and h.name not in probed)
    return named or tuple(h.name for h in cluster.hosts if h.name not in probed)


def _join(failed: Mapping[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in failed.items())


def no_server(cluster: Cluster, facts: Mapping[str, HostFacts], failed: Mapping[str, str], wanted: str | None) -> UserError:
    """Why no host can serve the UI, as one line: exit 2 for a --host that is not a server,
    else exit 1 (hosts unreachable, or no server running: the cluster is not up)."""
    up = f"`clusterctl up -f {cluster.path}`"
    if wanted is not None:
        if wanted in failed:
            return HostsFailed(f"{wanted}: {failed[wanted]}")
        f = facts.get(wanted)
        agent = _own_agent(cluster, f) if f is not None else None
        if agent is None:
            return HostsFailed(f"{wanted} runs no Consul agent of cluster {cluster.name}: is the cluster up? ({up})")
        if agent.labels.get("clusterctl.consul.mode") != "server":
            raft = f.docker.consul_voters or {}
            servers = ", ".join([h.name for h in cluster.hosts if h.name in raft] or first_candidates(cluster, None))
            return UserError(f"{wanted} runs a Consul client; the UI is served by the servers: --host one of {servers}, or leave --host out")
        return HostsFailed(f"{wanted}: its Consul server is stopped ({up} starts it)")
    if failed:
        return HostsFailed(f"no Consul server of cluster {cluster.name} answered: {_join(failed)}")
    probed = ", ".join(h.name for h in cluster.hosts if h.name in facts)
    return HostsFailed(f"cluster {cluster.name} runs no Consul server (probed {probed}): is it up? ({up})")


def acl_on(cluster: Cluster, facts: HostFacts) -> bool:
    """The server's agent runs with ACLs (its clusterctl.consul.acl step, commands/consul.py)."""
    agent = _own_agent(cluster, facts)
    return agent is not None and agent.labels.get("clusterctl.consul.acl", "0") not in ("", "0")


def login_hint(token_file: Path, has_token: bool) -> str:
    """Where the UI's login token is; never the token itself."""
    if has_token:
        return (
            f"Consul's ACLs are on: log in (top right, Log in) with the management token kept in {token_file} "
            "(0600; `--show-token` prints it here)"
        )
    return (
        f"Consul's ACLs are on, and this state dir has no management token ({token_file}): get it from the "
        "operator that made the cluster (`clusterctl secrets export -o FILE` there, `clusterctl secrets import FILE` here)"
    )


def should_open_browser(no_browser: bool, env: Mapping[str, str], platform: str) -> bool:
    """A browser only when asked not otherwise and one can show: a display on Linux and the
    like; macOS and Windows always have one."""
    if no_browser:
        return False
    if platform == "darwin" or platform.startswith("win"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def check_ui(port: int, timeout: float = 10.0) -> str | None:
    """None when GET /ui/ through the local port serves the UI, else why not (one line)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", UI_PATH)
        resp = conn.getresponse()
        resp.read(1 << 20)
    except (OSError, http.client.HTTPException) as exc:
        return f"GET {UI_PATH}: {exc or type(exc).__name__}"
    finally:
        conn.close()
    if ui_status_ok(resp.status):
        return None
    hint = " (is the UI on? servers run with -ui)" if resp.status == 404 else ""
    return f"GET {UI_PATH} answered {resp.status} {resp.reason}{hint}"


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:PORT can be listened on now (checked before any host is contacted)."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


@dataclass
class Found:
    """Servers that may serve the UI (file order) and what the probe saw."""

    servers: tuple[str, ...]
    facts: dict[str, HostFacts]
    failed: dict[str, str]


def find_servers(cluster: Cluster, endpoints, known, workers: int, wanted: str | None, stack) -> tuple[Found, dict]:
    """Probe the candidates (then raft's servers, else the other hosts, when none runs one):
    the servers found and every open session by host (closed by `stack`)."""
    from clusterctl.phases.manager import Manager, Options

    facts: dict[str, HostFacts] = {}
    failed: dict[str, str] = {}
    sessions: dict = {}
    probed: set[str] = set()
    names = first_candidates(cluster, wanted)
    while names:
        m = stack.enter_context(Manager(cluster, endpoints, known, Options(workers=workers, only=frozenset(names))))
        m.connect()
        m.probe()
        probed.update(names)
        for name, report in m.reports.items():
            if report.facts is not None:
                facts[name] = report.facts
                sessions[name] = m.sessions[name]
            elif report.failed is not None:
                failed[name] = report.failed.message
        for line in m.errors:  # a bastion that failed: named once
            print(f"error: {line}", file=sys.stderr)
        servers = serving_servers(cluster, facts)
        if servers or wanted is not None:
            break
        names = more_to_probe(cluster, facts, probed)
    return Found(serving_servers(cluster, facts), facts, failed), sessions


def serve(
    cluster: Cluster,
    endpoints,
    known,
    workers: int,
    wanted: str | None,
    port: int,
    show_token: bool,
    no_browser: bool,
    say,
) -> None:
    """Open the tunnel to the first server whose UI answers, print its URL (stdout, one line),
    then hold it until Ctrl-C (or SIGTERM, made a KeyboardInterrupt by the CLI): returns then.
    `say(line)`: a line for the operator on stderr. HostsFailed / UserError: one line."""
    import time
    from contextlib import ExitStack

    from clusterctl.phases.consul_acl import MANAGEMENT_TOKEN, management_token
    from clusterctl.state import cluster_path
    from clusterctl.transport.tunnel import forward

    with ExitStack() as stack:
        found, sessions = find_servers(cluster, endpoints, known, workers, wanted, stack)
        if not found.servers:
            raise no_server(cluster, found.facts, found.failed, wanted)
        tried: dict[str, str] = {}
        chosen = local = None
        for name in found.servers:
            attempt = ExitStack()
            try:
                local = attempt.enter_context(forward(sessions[name], *CONSUL_HTTP, local_port=port))
            except OSError as exc:
                attempt.close()
                raise UserError(f"--port {port}: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
            why = check_ui(local)
            if why is None:
                stack.enter_context(attempt)
                chosen = name
                break
            attempt.close()
            tried[name] = why
        if chosen is None:
            raise HostsFailed(f"Consul's UI did not answer through the tunnel: {_join(tried)}")
        for name, session in sessions.items():  # only the chosen host's connection stays open
            if name != chosen:
                try:
                    session.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        url = ui_url(local)
        transport = sessions[chosen].connection.client.get_transport()
        transport.set_keepalive(30)  # a quiet tunnel stays open through NATs, a dead one is noticed
        for name, why in tried.items():
            say(f"{name}: {why}; using {chosen}")
        say(f"Consul's UI of cluster {cluster.name} on {chosen} ({endpoints[chosen].label}), through SSH to its 127.0.0.1:{CONSUL_HTTP[1]}; Ctrl-C closes it")
        if acl_on(cluster, found.facts[chosen]):
            directory = cluster_path(cluster.name)
            token = management_token(directory)  # a malformed file: one line, before the URL
            say(login_hint(directory / MANAGEMENT_TOKEN, token is not None))
            if show_token and token is not None:
                say(f"management token: {token}")
        print(url, flush=True)
        if should_open_browser(no_browser, os.environ, sys.platform):
            import webbrowser

            try:
                webbrowser.open(url)
            except Exception:  # noqa: BLE001 - the URL is printed: the browser is a convenience
                pass
        try:
            while transport.is_active():
                time.sleep(0.5)
        except KeyboardInterrupt:
            stopped = True
        else:
            stopped = False
    # Here the tunnel and every connection are closed (a second Ctrl-C while they close is the
    # CLI's plain "interrupted").
    if not stopped:
        raise HostsFailed(f"{chosen}: the SSH connection closed, and the tunnel with it")
    say("tunnel closed")
