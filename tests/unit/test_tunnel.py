"""The tunnel (clusterctl/transport/tunnel.py): a chosen local port on loopback, taken again
right after it closed, refused while taken; bytes flow both ways."""

import socket
import threading
from types import SimpleNamespace

import pytest

from clusterctl.transport.tunnel import forward


class _FakeTransport:
    """direct-tcpip channels that are sockets to a local echo server (paramiko's Channel is
    select()-able the same way)."""

    def __init__(self, echo_port):
        self.echo_port, self.opened = echo_port, []

    def open_channel(self, kind, dest, origin):
        self.opened.append((kind, dest))
        return socket.create_connection(("127.0.0.1", self.echo_port))


def _echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_forward_on_a_chosen_loopback_port_and_again_right_after():
    echo = _echo_server()
    transport = _FakeTransport(echo.getsockname()[1])
    session = SimpleNamespace(connection=SimpleNamespace(client=SimpleNamespace(get_transport=lambda: transport)))
    port = _free_port()
    try:
        for _ in range(2):  # the same port again at once (its last connection in TIME_WAIT)
            with forward(session, "127.0.0.1", 8500, local_port=port) as local:
                assert local == port
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.sendall(b"ping")
                    assert c.recv(4) == b"ping"
                # Taken while the tunnel is open: an OSError, the socket closed.
                with pytest.raises(OSError):
                    with forward(session, "127.0.0.1", 8500, local_port=port):
                        pass
        assert transport.opened == [("direct-tcpip", ("127.0.0.1", 8500))] * 2
        # Loopback only: the listening socket was bound to 127.0.0.1 (the port is free again).
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    finally:
        echo.close()
