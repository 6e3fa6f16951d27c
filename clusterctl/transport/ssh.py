"""SSH to cluster hosts on fabric/paramiko, with strict host keys kept per cluster.

- Endpoints are resolved purely from the cluster file and ~/.ssh/config (Host blocks,
  IdentityFile, ProxyJump); the cluster file's per-host values win.
- Host keys: a known_hosts file owned by the cluster. An unknown key is accepted only when the
  caller allows it (--accept-new-host-keys); a changed key is always refused.
- Commands are rendered text from clusterctl.commands (argv quoted with shlex) and run on one
  exec channel each; `round_trips` counts them, so benchmarks can see what a run cost.
- Bastions: a run opens ONE connection per distinct bastion (a Connector owns them), shared by
  every host behind it, each host on its own direct-tcpip channel. A bastion that fails is one
  line (Connector.failures); each host behind it fails with "skipped: bastion X failed".
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import paramiko
from fabric import Config, Connection

from clusterctl.config.loader import Cluster
from clusterctl.config.models import Bastion, Host


class SSHError(Exception):
    """A connection-level failure, worded for the operator (one line)."""


class HostKeyChanged(SSHError):
    pass


class HostKeyUnknown(SSHError):
    pass


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach one host (or a bastion) over SSH."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    identity_files: tuple[str, ...] = ()
    bastion: Endpoint | None = None
    connect_timeout: float = 10.0

    @property
    def label(self) -> str:
        where = f"{self.user}@{self.address}" + (f":{self.port}" if self.port != 22 else "")
        return where + (f" via {self.bastion.label}" if self.bastion else "")


def _ssh_config(path: str) -> paramiko.SSHConfig:
    p = Path(os.path.expanduser(path)) if path else None
    if p and p.is_file():
        return paramiko.SSHConfig.from_path(str(p))
    return paramiko.SSHConfig()


def _from_ssh_config(conf: paramiko.SSHConfig, alias: str) -> dict:
    """The options ~/.ssh/config gives for an alias (empty when no Host block matches it)."""
    found = conf.lookup(alias)
    out: dict = {}
    if found.get("hostname") and found["hostname"] != alias:
        out["address"] = found["hostname"]
    if "user" in found:
        out["user"] = found["user"]
    if "port" in found:
        out["port"] = int(found["port"])
    if "identityfile" in found:
        out["identity_files"] = tuple(found["identityfile"])
    if "proxyjump" in found and found["proxyjump"].lower() != "none":
        out["proxyjump"] = found["proxyjump"].split(",")[-1].strip()
    return out


def _jump_endpoint(spec: str, conf: paramiko.SSHConfig, timeout: float) -> Endpoint:
    user, _, rest = spec.rpartition("@")
    address, _, port = rest.partition(":")
    via = _from_ssh_config(conf, address)
    return Endpoint(
        name=f"bastion {address}",
        address=via.get("address", address),
        port=int(port) if port else via.get("port", 22),
        user=user or via.get("user", "root"),
        identity_files=via.get("identity_files", ()),
        connect_timeout=timeout,
    )


def resolve_endpoints(cluster: Cluster) -> dict[str, Endpoint]:
    """Host name -> Endpoint. Pure apart from reading ~/.ssh/config."""
    spec = cluster.spec
    conf = _ssh_config(spec.ssh.config_file)
    timeout = spec.ssh.connect_timeout

    def ids(*values: str | None) -> tuple[str, ...]:
        return tuple(str(cluster.resolve_path(v)) for v in values if v)

    def base(host: Host) -> Endpoint:
        # The ssh config is looked up by host name first, then by address.
        via = _from_ssh_config(conf, host.name) or _from_ssh_config(conf, host.address)
        bastion = None
        if via.get("proxyjump"):
            bastion = _jump_endpoint(via["proxyjump"], conf, timeout)
        return Endpoint(
            name=host.name,
            address=host.address if host.address != host.name else via.get("address", host.address),
            port=host.port or via.get("port") or spec.ssh.port or 22,
            user=host.user or via.get("user") or spec.ssh.user or "root",
            identity_files=ids(host.identity_file) or via.get("identity_files") or ids(spec.ssh.identity_file),
            bastion=bastion,
            connect_timeout=timeout,
        )

    plain = {h.name: base(h) for h in cluster.hosts}
    out: dict[str, Endpoint] = {}
    for h in cluster.hosts:
        ep = plain[h.name]
        if isinstance(h.bastion, str):
            ep = replace(ep, bastion=replace(plain[h.bastion], name=f"bastion {h.bastion}"))
        elif isinstance(h.bastion, Bastion):
            b = h.bastion
            ep = replace(
                ep,
                bastion=Endpoint(
                    name=f"bastion {b.address}",
                    address=b.address,
                    port=b.port or 22,
                    user=b.user or ep.user,
                    identity_files=ids(b.identity_file) or ep.identity_files,
                    connect_timeout=timeout,
                ),
            )
        out[h.name] = ep
    return out


class KnownHosts:
    """The cluster's known_hosts file; shared by all sessions of a run (thread-safe appends)."""

    def __init__(self, path: Path, accept_new: bool):
        self.path = path
        self.accept_new = accept_new
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch(mode=0o600)
        self.keys = paramiko.HostKeys(str(path))

    def install(self, client: paramiko.SSHClient) -> None:
        # Share our HostKeys object: paramiko checks it before consulting the policy.
        client._host_keys = self.keys  # noqa: SLF001 - paramiko has no public setter
        client.set_missing_host_key_policy(_Policy(self))

    def add(self, hostname: str, key: paramiko.PKey) -> None:
        with self._lock:
            self.keys.add(hostname, key.get_name(), key)
            with self.path.open("a") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class _Policy(paramiko.MissingHostKeyPolicy):
    def __init__(self, known: KnownHosts):
        self.known = known

    def missing_host_key(self, client, hostname, key):  # noqa: ANN001 - paramiko's signature
        if not self.known.accept_new:
            raise HostKeyUnknown(
                f"unknown host key for {hostname} ({key.get_name()} {key.fingerprint}); "
                f"run again with --accept-new-host-keys to trust it (recorded in {self.known.path})"
            )
        self.known.add(hostname, key)


def explain(exc: BaseException, ep: Endpoint, known_hosts: Path) -> str:
    """One line an operator can act on, for any connection failure."""
    where = ep.label
    if isinstance(exc, SSHError):
        return str(exc)
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"host key for {where} CHANGED (got {exc.key.get_name()} {exc.key.fingerprint}); refusing to connect. "
            f"If the host was rebuilt, remove its line from {known_hosts}"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        keys = ", ".join(ep.identity_files) or "agent/default keys"
        return f"authentication failed for {where} (tried {keys})"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"cannot reach {where}: timed out after {ep.connect_timeout:g}s"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        # paramiko folds both ECONNREFUSED and EHOSTUNREACH into this one exception.
        codes = {getattr(e, "errno", None) for e in exc.errors.values()}
        return f"cannot reach {where}: " + ("connection refused" if errno.ECONNREFUSED in codes else "no route to host")
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc}"
    if isinstance(exc, paramiko.SSHException):
        return f"SSH error on {where}: {exc}"
    return f"{type(exc).__name__} on {where}: {exc}"


@dataclass
class RunResult:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 1) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:]) if text else f"exit code {self.exit_code}"


@dataclass
class Session:
    """One open SSH connection to a host."""

    endpoint: Endpoint
    connection: Connection
    round_trips: int = 0
    bytes_sent: int = 0
    # Set by open_session(): a one-off Connector (with its bastion connection) this session owns.
    _owner: Connector | None = field(default=None, repr=False)

    def run(self, command: str, timeout: float | None = None, stdin: object = None) -> RunResult:
        """Run one command line; stdout/stderr are read concurrently; `timeout` bounds the whole run.

        `stdin` is bytes, or a stream source with write_to(write) (e.g. an image archive written
        straight into the channel, never held in memory whole).
        """
        self.round_trips += 1
        t0 = time.monotonic()
        transport = self.connection.client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(f"connection to {self.endpoint.label} is closed")
        chan = transport.open_session(timeout=self.endpoint.connect_timeout)
        chan.settimeout(timeout)
        try:
            chan.exec_command(command)
            err_chunks: list[bytes] = []

            def read_stderr() -> None:
                try:
                    while data := chan.recv_stderr(65536):
                        err_chunks.append(data)
                except (socket.timeout, OSError):
                    pass

            reader = threading.Thread(target=read_stderr, daemon=True)
            reader.start()
            if isinstance(stdin, (bytes, bytearray)):
                chan.sendall(stdin)
                self.bytes_sent += len(stdin)
            elif stdin is not None:

                def write(data: bytes) -> None:
                    chan.sendall(data)
                    self.bytes_sent += len(data)

                stdin.write_to(write)
            chan.shutdown_write()
            out_chunks: list[bytes] = []
            try:
                while data := chan.recv(65536):
                    out_chunks.append(data)
            except socket.timeout:
                raise TimeoutError(f"command timed out after {timeout:g}s on {self.endpoint.label}") from None
            reader.join(timeout)
            code = chan.recv_exit_status()
        finally:
            chan.close()
        return RunResult(
            exit_code=code,
            stdout=b"".join(out_chunks).decode("utf-8", "replace"),
            stderr=b"".join(err_chunks).decode("utf-8", "replace"),
            seconds=time.monotonic() - t0,
        )

    def close(self) -> None:
        """Close this host's connection. A shared bastion connection stays open: its
        Connector closes it, once, at the end of the run."""
        self.connection.close()
        if self._owner is not None:
            self._owner.close()


def _connection(ep: Endpoint, known: KnownHosts, sock: object = None) -> Connection:
    """A fabric Connection with our host key policy (never fabric's AutoAddPolicy); not opened.
    `sock` is the direct-tcpip channel through a bastion, when there is one."""
    # Fabric would read ~/.ssh/config again and auto-add host keys; we resolved the config
    # ourselves and install our own host key policy, so turn both off here.
    config = Config(overrides={"load_ssh_configs": False})
    connect_kwargs: dict = {"compress": False, "banner_timeout": ep.connect_timeout, "auth_timeout": ep.connect_timeout}
    if ep.identity_files:
        connect_kwargs["key_filename"] = list(ep.identity_files)
    if sock is not None:
        connect_kwargs["sock"] = sock
    conn = Connection(
        ep.address,
        user=ep.user,
        port=ep.port,
        config=config,
        connect_timeout=int(max(1, ep.connect_timeout)),
        connect_kwargs=connect_kwargs,
    )
    known.install(conn.client)
    return conn


def _connect(ep: Endpoint, known: KnownHosts, sock: object = None) -> Connection:
    """Open a connection (raises on failure, with nothing left open)."""
    conn = _connection(ep, known, sock)
    try:
        conn.open()
    except BaseException:
        conn.close()
        if sock is not None:
            sock.close()  # type: ignore[attr-defined]
        raise
    return conn


Connect = Callable[[Endpoint, KnownHosts, object], Connection]


class BastionFailed(SSHError):
    """Raised for a host whose bastion could not be opened (the bastion's own reason is one
    line in Connector.failures)."""

    def __init__(self, bastion: Endpoint, reason: str):
        super().__init__(f"skipped: {bastion.name} failed")
        self.bastion = bastion
        self.reason = reason


def gateway_key(ep: Endpoint) -> tuple:
    """What makes two bastion endpoints the same connection: who, where, which keys, via what.
    The name is not part of it (`bastion: node1` and `bastion: root@<node1's address>` share)."""
    return (ep.user, ep.address.lower().rstrip("."), ep.port, ep.identity_files,
            gateway_key(ep.bastion) if ep.bastion else None)  # fmt: skip


class _Gateway:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.lock = threading.Lock()
        self.connection: Connection | None = None
        # Why it failed: the failed bastion (this one, or the one in front of it) and one line.
        self.failure: tuple[Endpoint, str] | None = None
        self.skipped: list[str] = []  # hosts behind it that were skipped because it failed

    def skip(self, requester: str) -> BastionFailed:
        assert self.failure is not None
        self.skipped.append(requester)
        return BastionFailed(*self.failure)

    def line(self) -> str:
        assert self.failure is not None
        behind = f"; skipped the hosts behind it: {', '.join(self.skipped)}" if self.skipped else ""
        return f"{self.failure[1]}{behind}"


def _active(conn: Connection | None) -> bool:
    transport = conn.client.get_transport() if conn is not None else None
    return transport is not None and transport.is_active()


class Connector:
    """Opens the SSH sessions of one run, thread-safe; close() it at the end of the run.

    Hosts behind the same bastion (same gateway_key) share ONE connection to it, opened on first
    use by whichever worker gets there first while the others wait; each host then gets its own
    direct-tcpip channel on it. A bastion is tried once per run: when it fails (unreachable,
    refused auth, unknown or changed host key) every host behind it raises BastionFailed, and the
    bastion's reason is one line in `failures`.
    """

    def __init__(self, known: KnownHosts, connect: Connect | None = None):
        self.known = known
        self._connect = connect or _connect
        self._lock = threading.Lock()
        self._gateways: dict[tuple, _Gateway] = {}
        self._closed = False

    def open(self, ep: Endpoint) -> Session:
        """Connect to one host (through its bastion when it has one); raises on failure:
        BastionFailed when the bastion failed, else what paramiko raised (see explain())."""
        sock = self._channel(ep, requester=ep.name) if ep.bastion is not None else None
        return Session(endpoint=ep, connection=self._connect(ep, self.known, sock))

    @property
    def failures(self) -> list[str]:
        """One line per bastion that failed in this run (naming the hosts skipped behind it)."""
        with self._lock:
            gates = list(self._gateways.values())
        return [g.line() for g in gates if g.failure is not None and g.failure[0] is g.endpoint]

    def close(self) -> None:
        """Close every bastion connection, once (after the sessions through them)."""
        with self._lock:
            gates, self._closed = list(self._gateways.values()), True
        for gate in reversed(gates):  # a bastion reached through another one closes first
            with gate.lock:
                if gate.connection is not None:
                    try:
                        gate.connection.close()
                    except Exception:  # noqa: BLE001 - closing is best effort
                        pass
                    gate.connection = None

    def _gateway(self, bastion: Endpoint, requester: str) -> Connection:
        key = gateway_key(bastion)
        with self._lock:
            if self._closed:
                raise SSHError("the run's connections are closed")
            gate = self._gateways.setdefault(key, _Gateway(bastion))
        with gate.lock:
            if gate.failure is not None:
                raise gate.skip(requester)
            if _active(gate.connection):
                return gate.connection  # type: ignore[return-value]
            if gate.connection is not None:  # it dropped mid-run (the bastion restarted): reopen
                gate.connection.close()
                gate.connection = None
            try:
                sock = self._channel(bastion, requester=bastion.name) if bastion.bastion is not None else None
                gate.connection = self._connect(bastion, self.known, sock)
            except BastionFailed as exc:  # the bastion in front of this one failed: same reason
                gate.failure = (exc.bastion, exc.reason)
                raise gate.skip(requester) from None
            except Exception as exc:  # noqa: BLE001 - worded once for the operator
                first = gate.endpoint  # named as the first host behind it named it
                gate.failure = (first, f"{first.name} ({first.label}): {explain(exc, first, self.known.path)}")
                raise gate.skip(requester) from None
            return gate.connection

    def _channel(self, ep: Endpoint, requester: str):  # noqa: ANN202 - a paramiko Channel
        """A direct-tcpip channel from ep's bastion to ep's SSH port."""
        assert ep.bastion is not None
        transport = self._gateway(ep.bastion, requester).client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(f"cannot reach {ep.label}: the connection to the bastion closed")
        try:
            return transport.open_channel(
                "direct-tcpip", (ep.address, ep.port), ("127.0.0.1", 0), timeout=ep.connect_timeout
            )
        except paramiko.ChannelException as exc:
            # The bastion's sshd tried and could not connect, or does not forward at all.
            why = "the bastion does not allow TCP forwarding" if exc.code == 1 else f"the bastion could not connect ({exc.text})"
            raise SSHError(f"cannot reach {ep.label}: {why}") from None
        except paramiko.SSHException as exc:
            raise SSHError(f"cannot reach {ep.label}: {exc}") from None


def open_session(ep: Endpoint, known: KnownHosts) -> Session:
    """Connect to one host on its own (through its own bastion connection, closed with the
    session). A run over many hosts uses one Connector instead, so a bastion is opened once.
    Raises on failure (callers turn it into the host's result via explain())."""
    connector = Connector(known)
    try:
        session = connector.open(ep)
    except BastionFailed as exc:
        connector.close()
        raise SSHError(exc.reason) from None
    except BaseException:
        connector.close()
        raise
    session._owner = connector  # noqa: SLF001 - closed with the session
    return session
