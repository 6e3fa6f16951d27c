"""A local TCP port forwarded through an open SSH session to host:port on the far side.

Used to reach an agent's HTTP API that listens on the host's loopback only (Consul's 8500),
so clients such as py-consul can talk to it without opening it to the network.
"""

from __future__ import annotations

import select
import socket
import threading
from contextlib import contextmanager

from clusterctl.transport.ssh import Session


def _pipe(local: socket.socket, chan) -> None:  # noqa: ANN001 - a paramiko Channel
    try:
        while True:
            ready, _, _ = select.select([local, chan], [], [], 30)
            if not ready:
                continue
            if local in ready:
                data = local.recv(65536)
                if not data:
                    break
                chan.sendall(data)
            if chan in ready:
                data = chan.recv(65536)
                if not data:
                    break
                local.sendall(data)
    except Exception:  # noqa: BLE001 - either end went (a closed socket, the SSH session ended): the pipe ends, quietly
        pass
    finally:
        _close_quietly(chan, local)


def _close_quietly(*ends) -> None:  # noqa: ANN002 - sockets and paramiko Channels
    # Closing a channel sends on the SSH transport, which may be gone already (the run ended).
    for end in ends:
        try:
            end.close()
        except Exception:  # noqa: BLE001 - nothing is left to tell
            pass


@contextmanager
def forward(session: Session, remote_host: str, remote_port: int, local_port: int = 0):
    """Yield a local port on 127.0.0.1 (`local_port`, or a free one when 0); each connection to
    it opens a direct-tcpip channel to the remote. OSError when `local_port` is taken."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if local_port:
        # The same port again soon after a tunnel on it closed (its connections in TIME_WAIT);
        # on Linux and macOS this never lets two sockets listen on one port.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("127.0.0.1", local_port))
    except OSError:
        server.close()
        raise
    server.listen(8)
    server.settimeout(0.2)
    transport = session.connection.client.get_transport()
    stop = threading.Event()
    # Every pipe's ends and thread: closed and joined on the way out, so no pipe outlives the
    # tunnel (a pipe thread still running as clusterctl exits printed a traceback once).
    pipes: list[tuple[socket.socket, object, threading.Thread]] = []

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                local, addr = server.accept()
            except (socket.timeout, OSError):
                continue
            try:
                chan = transport.open_channel("direct-tcpip", (remote_host, remote_port), addr)
            except Exception:  # noqa: BLE001 - the client sees a closed connection
                local.close()
                continue
            pipe = threading.Thread(target=_pipe, args=(local, chan), daemon=True)
            # A long-lived tunnel (`clusterctl ui`: a browser opens many connections) keeps
            # only the pipes still running.
            pipes[:] = [p for p in pipes if p[2].is_alive()]
            pipes.append((local, chan, pipe))
            pipe.start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        try:  # wakes the accept loop at once rather than at its next timeout
            server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        server.close()
        thread.join(1)
        for local, chan, pipe in pipes:
            if pipe.is_alive():
                try:  # wakes its select at once (a close alone would not)
                    local.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                _close_quietly(chan, local)
                pipe.join(1)


@contextmanager
def consul_api(session: Session, token: str | None = None, port: int = 8500):
    """A py-consul client on the host's agent (its HTTP API on the host's loopback), through SSH."""
    import consul

    with forward(session, "127.0.0.1", port) as local:
        api = consul.Consul(host="127.0.0.1", port=local, token=token, connections_timeout=10)
        # py-consul leaves the token out of some calls (members, raft): send it with every one.
        api.http.session.headers.pop("X-Consul-Token", None)
        if token:
            api.http.session.headers["X-Consul-Token"] = token
        try:
            yield api
        finally:
            api.http.session.close()
