"""One `up` at a time per cluster: an flock on the operator's side.

The kernel drops the lock when the holder dies, so a crashed run never leaves a stale lock;
the holder's description sits beside it only to name it in the refusal.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from clusterctl.errors import LockHeld


@contextmanager
def cluster_lock(directory: Path, cluster: str, what: str, wait: float = 5.0):
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / "lock"
    holder_path = directory / "lock.holder.json"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockHeld(f"cluster {cluster!r} is busy: {_holder(holder_path)}; try again when it ends") from None
                time.sleep(0.2)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "user": os.environ.get("USER", ""),
                  "what": what, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        holder_path.write_text(json.dumps(holder))
        try:
            yield
        finally:
            holder_path.unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"'{h['what']}' holds it (pid {h['pid']} on {h['host']}, since {h['since']})"
    except (OSError, ValueError, KeyError):
        return "another clusterctl run holds its lock"


# --- the cluster's own lock: a Consul session lock in KV --------------------------------------
# Two operators (a laptop and CI) with copies of the same state do not share an flock; once the
# cluster runs Consul, the lock lives in the cluster. The session has a TTL and no node checks
# (an agent restarted by this very run must not drop it), renewed through any agent; an operator
# that dies loses it within two TTLs. lock_delay 0: a released lock is free at once.

LOCK_KEY = "clusterctl/lock"
SESSION_TTL = 30
RENEW_EVERY = 10.0


def holder_doc(what: str) -> dict:
    import pwd

    try:
        user = os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    return {"pid": os.getpid(), "host": socket.gethostname(), "user": user,
            "what": what, "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}  # fmt: skip


def _describe(doc: dict | None) -> str:
    if not doc:
        return "another clusterctl run holds its lock"
    return f"'{doc.get('what', '?')}' holds it ({doc.get('user', '?')} on {doc.get('host', '?')}, pid {doc.get('pid', '?')}, since {doc.get('since', '?')})"


def _server_error(exc: BaseException | None) -> bool:
    """An HTTP 500 from an agent (py-consul's ConsulException "500 ..."), not a refused token or
    an agent that did not answer."""
    import consul

    return type(exc) is consul.ConsulException and str(exc).startswith("500")


def _leaderless(hosts: list[str], open_api, token: str) -> bool:
    """Whether an agent answers but the cluster cannot serve: no leader known, or the one it
    names does not answer a read that needs it (servers stopped a moment ago). No agent
    answering at all: not known (False)."""
    import consul

    for host in hosts:
        try:
            with open_api(host, token) as api:
                if not api.status.leader():
                    return True
                try:
                    api.kv.get(LOCK_KEY)  # a consistent read: the leader's
                except consul.ConsulException:  # an HTTP answer: 500 no leader / rpc error
                    return True
                return False
        except Exception:  # noqa: BLE001 - the next agent may answer
            continue
    return False


@contextmanager
def consul_lock(cluster: str, hosts: list[str], open_api, token: str, what: str, wait: float):
    """Hold the cluster's KV lock for the block; its value: whether it had to wait for another
    run to release it. `open_api(host, token)` gives a py-consul client on that host's agent
    (through SSH); `hosts` are tried in turn for every call. LockHeld (one line naming the
    holder) when another run holds it for longer than `wait`."""
    import threading
    from contextlib import ExitStack

    stack = ExitStack()
    clients: list = []  # the one client in use, kept open for the run (one tunnel, not one a call)

    def call(fn):
        last: Exception | None = None
        if clients:
            try:
                return fn(clients[0])
            except Exception as exc:  # noqa: BLE001 - that agent went away: try the others
                last = exc
                stack.close()
                clients.clear()
        for host in hosts:
            inner = ExitStack()
            try:
                api = inner.enter_context(open_api(host, token))
                value = fn(api)
            except Exception as exc:  # noqa: BLE001 - the next agent may answer
                inner.close()
                last = exc
                continue
            stack.push(inner)
            clients.append(api)
            return value
        raise LockHeld(f"cluster {cluster!r}: its lock in Consul cannot be taken: no agent answered ({last})") from last

    me = holder_doc(what)
    try:
        session = call(lambda api: api.session.create(name=f"clusterctl {what}", checks=[], ttl=SESSION_TTL, lock_delay=0, behavior="release"))
    except LockHeld as exc:
        # An agent answered 500 (the servers cannot take a write: no quorum, a leader just gone),
        # or one knows no leader: the cluster cannot hold a lock until this run heals it.
        if not (_server_error(exc.__cause__) or _leaderless(hosts, open_api, token)):
            raise
        # No leader anywhere (e.g. servers a failed run left stopped): no lock can be held in
        # Consul until this very run starts them; the operator's flock alone keeps runs apart.
        stack.close()
        yield False
        return
    try:
        deadline = time.monotonic() + wait
        waited = False
        while True:
            if call(lambda api: api.kv.put(LOCK_KEY, json.dumps(me), acquire=session)):
                break
            waited = True
            if time.monotonic() >= deadline:
                _, entry = call(lambda api: api.kv.get(LOCK_KEY))
                try:
                    doc = json.loads(entry["Value"]) if entry and entry.get("Value") else None
                except ValueError:
                    doc = None
                raise LockHeld(f"cluster {cluster!r} is busy: {_describe(doc)}; try again when it ends")
            time.sleep(1.0)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(RENEW_EVERY):
                try:
                    call(lambda api: api.session.renew(session))
                except LockHeld:
                    pass  # the next renewal may reach an agent; the TTL leaves room for two misses

        renewer = threading.Thread(target=renew, daemon=True)
        renewer.start()
        try:
            yield waited
        finally:
            stop.set()
            renewer.join(2)
    finally:
        try:
            call(lambda api: api.session.destroy(session))  # releases the key
        except LockHeld:
            pass  # e.g. `down` removed every agent: the session went with the cluster
        finally:
            stack.close()
