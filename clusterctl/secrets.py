"""Operator-side secrets of a cluster, each a 0600 file in the cluster's state directory.

SECRETS is the one registry of them (file name or pattern under the state directory, what it
is, how a new one is made, what a valid one looks like); export and import carry exactly these
files. A future secret (an ACL token) is one more entry here and uses `ensure_secret` /
`read_secret`; one whose files another module makes (the TLS CA, pki.py) registers its names and
a check, and writes them with `install`.

Every file is written atomically: a temp file in the same directory (0600 from its creation),
written, fsync'ed, then hard-linked to its final name, which fails when the name exists, so the
first writer wins and every caller re-reads the final file: concurrent first runs all get the
same value, and no one ever sees an empty or partial file under the final name. A file found
empty or malformed is an error naming it (exit 2), never silently replaced by a new secret.

Only stdlib here: the Inputs dataclass imports `Secret`, and `clusterctl secrets` stays quick.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import os
import re
import tempfile
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from clusterctl.errors import UserError

GOSSIP_KEY = "gossip.key"
WEAVE_PASSWORD = "weave.password"
PLACEHOLDER = "<generated on first up>"


class SecretError(UserError):
    """A secret file that is unreadable, empty or malformed, or one that may not be made: one line."""


class Secret(str):
    """A str whose repr never shows it (reports, logs, dataclass reprs, tracebacks' locals)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<secret>"


@dataclass(frozen=True)
class SecretKind:
    # Its file under the cluster's state directory; a `*` stands for a host name (one file each).
    name: str
    what: str  # for messages
    # Why a value read from the file is not a valid one (None: valid); the value is stripped.
    malformed: Callable[[bytes], str | None]
    # How a new one is made by ensure_secret (None: another module makes it, with install).
    make: Callable[[], bytes] | None = None

    def matches(self, name: str) -> bool:
        head, star, tail = self.name.partition("*")
        if not star:
            return name == self.name
        middle = name[len(head) : len(name) - len(tail)] if len(name) > len(head) + len(tail) else ""
        return name.startswith(head) and name.endswith(tail) and bool(_HOST_RE.fullmatch(middle))


_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _new_gossip_key() -> bytes:
    # What `consul keygen` prints: 32 random bytes, base64.
    return base64.b64encode(os.urandom(32))


def _gossip_malformed(value: bytes) -> str | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "not a Consul gossip key (base64 of 16, 24 or 32 bytes)"
    if len(raw) not in (16, 24, 32):
        return f"not a Consul gossip key (base64 of 16, 24 or 32 bytes; this is {len(raw)} bytes)"
    return None


def _new_weave_password() -> bytes:
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=")


def _token_malformed(value: bytes) -> str | None:
    if not all(0x21 <= b <= 0x7E for b in value):
        return "not a password (one line of printable ASCII, no spaces)"
    return None


def _cert_and_key_malformed(value: bytes) -> str | None:
    end = value.find(b"-----END CERTIFICATE-----")
    if not value.startswith(b"-----BEGIN CERTIFICATE-----") or end < 0 or b"PRIVATE KEY-----" not in value[end:]:
        return "not a PEM certificate followed by its private key"
    return None


def _new_uuid() -> bytes:
    import uuid

    return str(uuid.uuid4()).encode()


_UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _uuid_malformed(value: bytes) -> str | None:
    return None if _UUID_RE.fullmatch(value) else "not a Consul ACL token (a UUID)"


SECRETS: dict[str, SecretKind] = {
    k.name: k
    for k in (
        SecretKind(GOSSIP_KEY, "Consul gossip encryption key", _gossip_malformed, _new_gossip_key),
        SecretKind(WEAVE_PASSWORD, "weave encryption password", _token_malformed, _new_weave_password),
        # Consul's RPC TLS (pki.py): the CA, and each agent's certificate, kept so that a second
        # operator's run renews nothing.
        SecretKind("tls/ca.pem", "Consul TLS CA certificate and key", _cert_and_key_malformed),
        SecretKind("tls/agent-*.pem", "Consul agent TLS certificate and key", _cert_and_key_malformed),
        # Consul's ACLs (phases/consul_acl.py): the management token from the bootstrap, and the
        # tokens made here first, then created in Consul with these secrets.
        SecretKind("acl/management.token", "Consul ACL management token", _uuid_malformed),
        SecretKind("acl/agent-*.token", "Consul agent ACL token", _uuid_malformed, _new_uuid),
        SecretKind("acl/service-*.token", "Consul service ACL token", _uuid_malformed, _new_uuid),
    )
}


def kind_of(name: str) -> SecretKind | None:
    return next((k for k in SECRETS.values() if k.matches(name)), None)


def present(directory: Path) -> list[str]:
    """The names of the registered secrets that have a file in the directory, in registry order."""
    found: list[str] = []
    for kind in SECRETS.values():
        if "*" not in kind.name:
            found += [kind.name] if (directory / kind.name).exists() else []
        else:
            names = sorted(str(p.relative_to(directory)) for p in directory.glob(kind.name) if p.is_file())
            found += [n for n in names if kind.matches(n)]
    return found


def check_value(name: str, value: bytes) -> str | None:
    """Why `value` is not a valid secret `name` (None: valid)."""
    kind = kind_of(name)
    if kind is None:
        return f"unknown secret {name!r} (known: {', '.join(SECRETS)})"
    if not value:
        return "empty"
    return kind.malformed(value)


def read_secret(directory: Path, name: str) -> bytes | None:
    """The secret's value (stripped), None when its file does not exist; SecretError when it
    cannot be read or is empty or malformed."""
    path = directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretError(f"{path}: cannot read: {exc.strerror or exc}") from None
    value = data.strip()
    why = check_value(name, value)
    if why:
        raise SecretError(
            f"{path}: {why}: restore it (`clusterctl secrets import FILE --force`); it is never replaced by a new one"
        )
    return value


def ensure_secret(directory: Path, name: str) -> bytes:
    """The secret, made (once, atomically) when its file does not exist yet. Concurrent callers
    all get the value of the first one to install it."""
    value = read_secret(directory, name)
    if value is not None:
        return value
    kind = kind_of(name)
    make = kind.make if kind is not None else None
    assert make is not None, f"{name} is made by its own module"
    install(directory / name, make())
    value = read_secret(directory, name)
    if value is None:  # removed between our write and our read: say so rather than guess
        raise SecretError(f"{directory / name}: removed while it was being made; run again")
    return value


def install(path: Path, value: bytes, replace: bool = False) -> bool:
    """Write one secret file atomically (0600, in a 0700 directory). Without `replace`, an
    existing file wins and is left as it is (False). With it, the old file is swapped for the
    new one in one rename. Either way the final name never shows an empty or partial file.
    A directory that cannot be written is a SecretError naming the file."""
    try:
        return _install(path, value, replace)
    except OSError as exc:
        raise SecretError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _install(path: Path, value: bytes, replace: bool) -> bool:
    directory = path.parent
    private_dir(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(value.rstrip(b"\n") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails when the name exists: the first writer wins
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                    raise
                if not _replace_if_absent(tmp, path):  # a file system without hard links
                    return False
        _fsync_dir(directory)
        return True
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def _replace_if_absent(tmp: str, path: Path) -> bool:
    """No hard links here: check and rename under an flock of the directory's lock file."""
    fd = os.open(path.parent / ".secrets.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if path.exists():
            return False
        os.replace(tmp, path)
        return True
    finally:
        os.close(fd)


def private_dir(directory: Path) -> None:
    """The directory, made 0700 with any missing parent (an existing one is narrowed to 0700)."""
    missing = []
    for d in (directory, *directory.parents):
        if d.exists():
            break
        missing.append(d)
    for d in reversed(missing):
        with suppress(FileExistsError):  # a concurrent run made it
            d.mkdir(mode=0o700)
    if directory.stat().st_mode & 0o077:
        directory.chmod(0o700)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def gossip_key(directory: Path) -> Secret:
    """Consul's gossip encryption key, made once. Call it only once the hosts are known not to
    run Consul of this cluster (phases/gossip.py): a new key over a running cluster cuts it off."""
    return Secret(ensure_secret(directory, GOSSIP_KEY).decode())


def weave_password(directory: Path) -> bytes:
    """The weave driver's encryption password: 32 random bytes as url-safe base64, made once."""
    return ensure_secret(directory, WEAVE_PASSWORD)


# -- export and import ------------------------------------------------------------------------

BUNDLE_FORMAT = "clusterctl-secrets/1"


def export_bundle(directory: Path, cluster: str) -> tuple[bytes, list[str]]:
    """Every secret of the cluster's state directory as one JSON document, and their names."""
    import json

    found = {}
    for name in present(directory):
        value = read_secret(directory, name)
        if value is not None:
            found[name] = value.decode()
    if not found:
        raise SecretError(f"cluster {cluster!r} has no secrets in {directory} yet: nothing to export")
    doc = {"format": BUNDLE_FORMAT, "cluster": cluster, "secrets": found}
    return (json.dumps(doc, indent=2) + "\n").encode(), list(found)


def write_bundle(path: Path, data: bytes, force: bool) -> None:
    """The bundle into a new 0600 file (atomically); an existing one only with `force`."""
    where = path.parent
    if not where.is_dir():
        raise SecretError(f"{path}: no such directory: {where}")
    if path.is_dir():
        raise SecretError(f"{path}: is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=where)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise SecretError(f"{path}: exists; pass --force to write over it") from None
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def parse_bundle(data: bytes, source: str, cluster: str) -> dict[str, bytes]:
    """The secrets of an exported bundle meant for `cluster`; SecretError (one line) otherwise."""
    import json

    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise SecretError(f"{source}: not a clusterctl secrets file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT or not isinstance(doc.get("secrets"), dict):
        raise SecretError(f"{source}: not a clusterctl secrets file (made by `clusterctl secrets export`)")
    if doc.get("cluster") != cluster:
        raise SecretError(
            f"{source}: holds the secrets of cluster {doc.get('cluster')!r}, not {cluster!r}: "
            "import it with -f that cluster's file"
        )
    out: dict[str, bytes] = {}
    for name, value in doc["secrets"].items():
        if not isinstance(value, str):
            raise SecretError(f"{source}: secrets.{name}: not a string")
        raw = value.strip().encode()
        why = check_value(name, raw)
        if why:
            raise SecretError(f"{source}: secrets.{name}: {why}")
        out[name] = raw
    if not out:
        raise SecretError(f"{source}: holds no secrets")
    return out


def import_secrets(directory: Path, secrets: dict[str, bytes], force: bool) -> dict[str, str]:
    """Install each secret: "imported" (was missing), "unchanged" (same value), "replaced"
    (different, only with `force`). Nothing is written when one would be refused."""
    current = {name: read_secret_or_broken(directory, name) for name in secrets}
    different = [n for n, v in secrets.items() if current[n] is not None and current[n] != v]
    if different and not force:
        names = ", ".join(str(directory / n) for n in different)
        raise SecretError(f"{names}: a different secret is there already; pass --force to replace it")
    done: dict[str, str] = {}
    for name, value in secrets.items():
        path = directory / name
        if current[name] == value:
            done[name] = "unchanged"
        elif current[name] is None:
            if not install(path, value) and read_secret(directory, name) != value:
                raise SecretError(f"{path}: another secret was written there meanwhile; not replaced")
            done[name] = "imported"
        else:
            install(path, value, replace=True)
            done[name] = "replaced"
    return done


def read_secret_or_broken(directory: Path, name: str) -> bytes | None:
    """Like read_secret, but a broken (empty, malformed) file reads as b"" so --force can mend it."""
    try:
        return read_secret(directory, name)
    except SecretError:
        if (directory / name).is_file():
            return b""
        raise
