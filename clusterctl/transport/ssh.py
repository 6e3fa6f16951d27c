"""SSH to cluster hosts on fabric/paramiko, with strict host keys kept per cluster.

- Endpoints are resolved purely from the cluster file and the ssh config (ssh.config_file,
  ~/.ssh/config by default; see ssh_config.py for Include, Match, ProxyJump/ProxyCommand). The
  cluster file's per-host values win, then the ssh config, then the file's `ssh:` defaults.
- Jump hosts nest: a host's `bastion` is the last hop, whose own `bastion` is the hop before it
  (ProxyJump a,b: host via b, b via a, and a via a's own ProxyJump, if any). Each hop is looked
  up in the ssh config itself (HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyJump,
  ProxyCommand), with the hop's `user@`/`:port` winning.
- Host keys: a known_hosts file owned by the cluster, checked for every hop and every host. An
  unknown key is accepted only when the caller allows it (--accept-new-host-keys); a changed key
  is always refused.
- Commands are rendered text from clusterctl.commands (argv quoted with shlex) and run on one
  exec channel each; `round_trips` counts them, so benchmarks can see what a run cost.
- Bastions: a run opens ONE connection per distinct bastion (a Connector owns them), shared by
  every host behind it, each host on its own direct-tcpip channel; a bastion behind another one
  is connected through a channel of its own front bastion's shared connection. A bastion that
  fails is one line (Connector.failures); each host behind it fails with "skipped: bastion X failed".
- ProxyCommand runs as OpenSSH runs it (`/bin/sh -c 'exec COMMAND'`) via paramiko.ProxyCommand.
"""

from __future__ import annotations

import errno
import os
import select
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import paramiko
from fabric import Config, Connection

from clusterctl.config.loader import Cluster
from clusterctl.config.models import Bastion, Host
from clusterctl.transport.ssh_config import (
    HostConfig,
    SSHConfigError,
    SSHConfigFile,
    expand_proxy_command,
    parse_jump,
)

DEFAULT_SSH_CONFIG = "~/.ssh/config"
# Jump hosts in front of one host, at most (a guard against configs that go round in circles
# through ever new names; a loop through the same name is caught at once).
MAX_HOPS = 16


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
    # IdentitiesOnly: only identity_files (or, without any, the default key files); no agent.
    identities_only: bool = False
    # A shell command line (tokens expanded and quoted) whose stdin/stdout is the connection.
    proxy_command: str | None = None

    @property
    def label(self) -> str:
        where = f"{self.user}@{self.address}" + (f":{self.port}" if self.port != 22 else "")
        if self.bastion:
            return f"{where} via {self.bastion.label}"
        return where + (" via ProxyCommand" if self.proxy_command else "")


def _ssh_config(cluster: Cluster) -> SSHConfigFile:
    value = cluster.spec.ssh.config_file
    if not value:
        return SSHConfigFile()
    path = cluster.resolve_path(value)
    if not path.exists():
        if value == DEFAULT_SSH_CONFIG:
            return SSHConfigFile()
        raise SSHConfigError(f"{cluster.where('ssh', 'config_file')}: ssh config not found: {path}")
    return SSHConfigFile.load(path)


class _Resolver:
    """Turns ssh config answers into Endpoints, following ProxyJump hops through the config."""

    def __init__(self, conf: SSHConfigFile, user: str, identity_files: tuple[str, ...], timeout: float):
        self.conf = conf
        self.user = user  # for hops the config gives no User: the file's ssh.user, else root
        self.identity_files = identity_files  # for hops without IdentityFile: the file's ssh.identity_file
        self.timeout = timeout

    def behind(self, ep: Endpoint, found: HostConfig, trail: tuple[str, ...]) -> Endpoint:
        """ep with what the config puts in front of it: its ProxyJump hops or its ProxyCommand."""
        if found.proxy_jump:
            return replace(ep, bastion=self.chain(found.proxy_jump, trail))
        if found.proxy_command:
            command = expand_proxy_command(
                found.proxy_command, host=ep.address, port=ep.port, user=ep.user, alias=found.alias
            )
            return replace(ep, proxy_command=command)
        return ep

    def chain(self, hops: tuple[str, ...], trail: tuple[str, ...]) -> Endpoint:
        """The last hop of `ProxyJump hops` for trail[-1], each hop behind the one before it;
        the first hop behind its own ProxyJump/ProxyCommand (as OpenSSH's `ssh -J a b` does)."""
        owner = trail[-1]
        if len(trail) - 1 + len(hops) > MAX_HOPS:
            raise SSHConfigError(f"{self.conf.path or 'ssh config'}: {trail[0]}: more than {MAX_HOPS} jump hosts")
        front: Endpoint | None = None
        for spec in hops:
            jump = parse_jump(spec, f"{self.conf.path or 'ssh config'}: {owner}")
            if jump.host in trail:
                loop = " -> ".join((*trail, jump.host))
                raise SSHConfigError(
                    f"{self.conf.path or 'ssh config'}: ProxyJump loop: {loop} "
                    f"(a jump host caught by a wider Host block needs its own 'ProxyJump none')"
                )
            found = self.conf.lookup(jump.host)
            ep = Endpoint(
                name=f"bastion {jump.host}",
                address=found.hostname or jump.host,
                port=jump.port or found.port or 22,
                user=jump.user or found.user or self.user,
                identity_files=found.identity_files or self.identity_files,
                identities_only=found.identities_only,
                connect_timeout=self.timeout,
            )
            ep = self.behind(ep, found, (*trail, jump.host)) if front is None else replace(ep, bastion=front)
            front = ep
        assert front is not None
        return front


def resolve_endpoints(cluster: Cluster) -> dict[str, Endpoint]:
    """Host name -> Endpoint. Pure apart from reading the ssh config (and its Match exec).
    Raises SSHConfigError (one line) for a config that cannot be used."""
    spec = cluster.spec
    conf = _ssh_config(cluster)
    timeout = spec.ssh.connect_timeout

    def ids(*values: str | None) -> tuple[str, ...]:
        return tuple(str(cluster.resolve_path(v)) for v in values if v)

    hops = _Resolver(conf, spec.ssh.user or "root", ids(spec.ssh.identity_file), timeout)

    def base(host: Host) -> tuple[Endpoint, HostConfig]:
        # The ssh config is looked up by host name first, then by address.
        found = conf.lookup(host.name)
        if not found.says_anything and host.address != host.name:
            found = conf.lookup(host.address)
        ep = Endpoint(
            name=host.name,
            address=host.address if host.address != host.name else (found.hostname or host.address),
            port=host.port or found.port or spec.ssh.port or 22,
            user=host.user or found.user or spec.ssh.user or "root",
            identity_files=ids(host.identity_file) or found.identity_files or ids(spec.ssh.identity_file),
            identities_only=found.identities_only,
            connect_timeout=timeout,
        )
        return ep, found

    bare = {h.name: base(h) for h in cluster.hosts}
    plain: dict[str, Endpoint] = {}

    def behind_config(name: str) -> Endpoint:
        """The host behind what the ssh config puts in front of it (used unless the file
        gives the host a `bastion`, which wins)."""
        if name not in plain:
            ep, found = bare[name]
            plain[name] = hops.behind(ep, found, (found.alias,))
        return plain[name]

    out: dict[str, Endpoint] = {}
    for h in cluster.hosts:
        if h.bastion is None:
            ep = behind_config(h.name)
        elif isinstance(h.bastion, str):
            ep = replace(bare[h.name][0], bastion=replace(behind_config(h.bastion), name=f"bastion {h.bastion}"))
        else:
            assert isinstance(h.bastion, Bastion)
            b, ep = h.bastion, bare[h.name][0]
            found = conf.lookup(b.address)
            gateway = Endpoint(
                name=f"bastion {b.address}",
                address=found.hostname or b.address,
                port=b.port or found.port or 22,
                user=b.user or found.user or ep.user,
                identity_files=ids(b.identity_file) or found.identity_files or ep.identity_files,
                identities_only=found.identities_only,
                connect_timeout=timeout,
            )
            ep = replace(ep, bastion=hops.behind(gateway, found, (h.name, b.address)))
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
        from clusterctl.errors import printable

        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return printable(" | ".join(text[-lines:])) if text else f"exit code {self.exit_code}"


@dataclass
class Session:
    """One open SSH connection to a host."""

    endpoint: Endpoint
    connection: Connection
    round_trips: int = 0
    bytes_sent: int = 0
    # Set by open_session(): a one-off Connector (with its bastion connection) this session owns.
    _owner: Connector | None = field(default=None, repr=False)

    def run(self, command: str, timeout: float | None = None, stdin: object = None, watch: object = None) -> RunResult:
        """Run one command line; stdout/stderr are read concurrently; `timeout` bounds the whole run.

        `stdin` is bytes, or a stream source with write_to(write) (e.g. an image archive written
        straight into the channel, never held in memory whole). `watch`, when given, sees the
        run as it goes: watch.stderr(chunk) for what arrives on stderr, watch.sent(n) for bytes
        sent on stdin (progress output; its errors never stop the run).
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
                        _tell(watch, "stderr", data)
                except (socket.timeout, OSError):
                    pass

            reader = threading.Thread(target=read_stderr, daemon=True)
            reader.start()
            # A memoryview: paramiko's sendall slices what is left after each packet, and a slice of
            # bytes is a copy (quadratic in the piece's size; 0.1 s of CPU per 72 MB in 1 MB pieces).
            if isinstance(stdin, (bytes, bytearray)):
                chan.sendall(memoryview(stdin))
                self.bytes_sent += len(stdin)
                _tell(watch, "sent", len(stdin))
            elif stdin is not None:

                def send(data: bytes) -> None:
                    chan.sendall(memoryview(data))
                    self.bytes_sent += len(data)
                    _tell(watch, "sent", len(data))

                sink = _Coalesced(send)
                stdin.write_to(sink.write)
                sink.flush()
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


def _tell(watch: object, what: str, arg: object) -> None:
    if watch is None:
        return
    try:
        getattr(watch, what)(arg)
    except Exception:  # noqa: BLE001 - progress output never stops a run
        pass


class _ProxyCommand(paramiko.ProxyCommand):
    """A ProxyCommand run as OpenSSH runs it, `/bin/sh -c 'exec COMMAND'`; closing it ends the
    process and reaps it (paramiko's own close only signals it)."""

    def __init__(self, command: str):
        super().__init__(shlex.join(["/bin/sh", "-c", f"exec {command}"]))
        self._stderr = b""

    def recv(self, size: int) -> bytes:
        """What the command wrote, at most size bytes, b"" once it ended: a socket's recv.
        (paramiko's own waits for all of size and, after the end, spins until closed.)"""
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        if not ready:
            raise socket.timeout()
        try:
            return os.read(self.process.stdout.fileno(), size)
        except OSError as exc:
            raise paramiko.ProxyCommandFailure(" ".join(self.cmd), exc.strerror) from None

    def _drain_stderr(self) -> None:
        try:
            os.set_blocking(self.process.stderr.fileno(), False)
            self._stderr += self.process.stderr.read() or b""
        except (OSError, ValueError):  # nothing more, or closed already
            pass

    def exit_reason(self, wait: float = 1.0) -> str | None:
        """Why the command ended (its exit code and last stderr line), or None while it runs."""
        try:
            code = self.process.wait(wait)
        except subprocess.TimeoutExpired:
            return None
        self._drain_stderr()
        lines = self._stderr.decode("utf-8", "replace").strip().splitlines()
        return f"ProxyCommand exited with code {code}" + (f": {lines[-1].strip()}" if lines else "")

    def close(self) -> None:
        if self.process.poll() is None:
            super().close()  # SIGTERM
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._drain_stderr()  # kept for exit_reason (the transport closes us on its own errors)
        # stdin/stdout stay open: the transport's thread may still be reading them (EOF now).
        try:
            self.process.stderr.close()
        except OSError:
            pass


# AES-GCM first (an AEAD: one cipher pass per packet, no separate HMAC): paramiko spends about a
# third less CPU per byte sending than with aes-ctr + hmac-sha2, and sshd less receiving; the
# filebox's tens of MB go to every host from one operator process. A server without GCM
# negotiates the next cipher in paramiko's own order.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
# Stream stdin is sent in pieces of at least this size: an image archive's 512-byte tar headers
# would each be an SSH packet of their own (a packet costs both ends a syscall and a MAC).
SEND_AT_LEAST = 256 * 1024


def _transport(sock: object, **kwargs: object) -> paramiko.Transport:
    """SSHClient.connect's transport_factory: paramiko's Transport with PREFERRED_CIPHERS first."""
    transport = paramiko.Transport(sock, **kwargs)  # type: ignore[arg-type]
    options = transport.get_security_options()
    known = tuple(options.ciphers)
    options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in known) + tuple(c for c in known if c not in PREFERRED_CIPHERS)
    return transport


class _Coalesced:
    """A sink that hands `send` pieces of at least SEND_AT_LEAST bytes (the last may be less)."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self.send, self.parts, self.size = send, [], 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.parts.append(data)
        self.size += len(data)
        if self.size >= SEND_AT_LEAST:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
            self.parts, self.size = [], 0
            self.send(data)


def _connection(ep: Endpoint, known: KnownHosts, sock: object = None) -> Connection:
    """A fabric Connection with our host key policy (never fabric's AutoAddPolicy); not opened.
    `sock` is the direct-tcpip channel through a bastion, or the ProxyCommand, when there is one."""
    # Fabric would read ~/.ssh/config again and auto-add host keys; we resolved the config
    # ourselves and install our own host key policy, so turn both off here.
    config = Config(overrides={"load_ssh_configs": False})
    connect_kwargs: dict = {
        "compress": False, "banner_timeout": ep.connect_timeout, "auth_timeout": ep.connect_timeout, "transport_factory": _transport,
    }  # fmt: skip
    if ep.identity_files:
        connect_kwargs["key_filename"] = list(ep.identity_files)
    if ep.identities_only:
        # OpenSSH's IdentitiesOnly: no agent keys; the default key files only when none is named.
        connect_kwargs["allow_agent"] = False
        connect_kwargs["look_for_keys"] = not ep.identity_files
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
    """Open a connection (raises on failure, with nothing left open). Without a `sock` (a
    channel through the bastion), an endpoint with a ProxyCommand is reached through it."""
    proxy: _ProxyCommand | None = None
    if sock is None and ep.proxy_command:
        try:
            sock = proxy = _ProxyCommand(ep.proxy_command)
        except OSError as exc:
            raise SSHError(f"cannot reach {ep.label}: ProxyCommand did not start: {exc.strerror or exc}") from None
    conn = _connection(ep, known, sock)
    try:
        conn.open()
    except BaseException as exc:
        # A key or login the host refused is the host's answer; anything else with a
        # ProxyCommand that ended is worded as the command's failure.
        why = None
        if proxy is not None and not isinstance(exc, (paramiko.BadHostKeyException, paramiko.AuthenticationException, SSHError)):
            why = proxy.exit_reason()
        conn.close()
        if sock is not None:
            sock.close()  # type: ignore[attr-defined]
        if why:
            raise SSHError(f"cannot reach {ep.label}: {why}") from None
        raise
    return conn


Connect = Callable[[Endpoint, KnownHosts, object], Connection]


class BastionFailed(SSHError):
    """Raised for a host whose bastion could not be opened (the bastion's own reason is one
    line in Connector.failures)."""

    def __init__(self, bastion: Endpoint, reason: str, origin: _Gateway | None = None):
        super().__init__(f"skipped: {bastion.name} failed")
        self.bastion = bastion
        self.reason = reason
        self.origin = origin  # the gateway that failed (this bastion's, or one in front of it)


def gateway_key(ep: Endpoint) -> tuple:
    """What makes two bastion endpoints the same connection: who, where, which keys, via what.
    The name is not part of it (`bastion: node1` and `bastion: root@<node1's address>` share)."""
    return (ep.user, ep.address.lower().rstrip("."), ep.port, ep.identity_files, ep.identities_only,
            ep.proxy_command, gateway_key(ep.bastion) if ep.bastion else None)  # fmt: skip


def _depth(ep: Endpoint) -> int:
    """How many bastions stand in front of ep."""
    return 0 if ep.bastion is None else 1 + _depth(ep.bastion)


class _Gateway:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.lock = threading.Lock()
        self.connection: Connection | None = None
        # Why it failed: the failed bastion (this one, or the one in front of it) and one line.
        self.failure: tuple[Endpoint, str] | None = None
        self.origin: _Gateway | None = None  # the gateway whose failure that is (self, or one in front)
        self.skipped: list[str] = []  # hosts behind it that were skipped because it failed

    def fail(self, bastion: Endpoint, reason: str, origin: _Gateway) -> None:
        self.failure, self.origin = (bastion, reason), origin

    def skip(self, requester: str | None) -> BastionFailed:
        """The error for a host (or, requester None, a bastion) behind this failed gateway; a
        host is named in the line of the bastion that failed, however many hops in front."""
        assert self.failure is not None and self.origin is not None
        if requester is not None:
            self.origin.skipped.append(requester)
        return BastionFailed(*self.failure, origin=self.origin)

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
        return [g.line() for g in gates if g.failure is not None and g.origin is g]

    def close(self) -> None:
        """Close every bastion connection, once (after the sessions through them)."""
        with self._lock:
            gates, self._closed = list(self._gateways.values()), True
        # A bastion reached through another one closes first (its channel rides on the other).
        for gate in sorted(gates, key=lambda g: -_depth(g.endpoint)):
            with gate.lock:
                if gate.connection is not None:
                    try:
                        gate.connection.close()
                    except Exception:  # noqa: BLE001 - closing is best effort
                        pass
                    gate.connection = None

    def _gateway(self, bastion: Endpoint, requester: str | None) -> Connection:
        """The shared connection to a bastion (opened on first use, through its own bastion
        when it has one). requester: the host asking, or None for a bastion behind this one."""
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
                sock = self._channel(bastion, requester=None) if bastion.bastion is not None else None
                gate.connection = self._connect(bastion, self.known, sock)
            except BastionFailed as exc:  # the bastion in front of this one failed: same reason
                gate.fail(exc.bastion, exc.reason, exc.origin or gate)
                raise gate.skip(requester) from None
            except Exception as exc:  # noqa: BLE001 - worded once for the operator
                first = gate.endpoint  # named as the first host behind it named it
                gate.fail(first, f"{first.name} ({first.label}): {explain(exc, first, self.known.path)}", gate)
                raise gate.skip(requester) from None
            return gate.connection

    def _channel(self, ep: Endpoint, requester: str | None):  # noqa: ANN202 - a paramiko Channel
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
