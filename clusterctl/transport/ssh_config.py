"""An ssh config file (~/.ssh/config) read the way OpenSSH reads it, on paramiko.SSHConfig.

paramiko.SSHConfig does the lookup (Host and Match blocks, first value wins, HostName/%h tokens,
IdentityFile lists). What it lacks is completed here, before and after it:

- Include: the files are expanded into one text for SSHConfig.from_text. Globs are sorted; a
  pattern that matches nothing is skipped (as OpenSSH does); a relative path is relative to the
  folder of the top config file (for ~/.ssh/config that is ~/.ssh, OpenSSH's rule for user
  configs), at any depth. An Include inside a Host/Match block applies only where that block
  does: each block of the included file becomes a Match of both conditions, and the rest of the
  outer block is opened again after it. Includes nest 16 deep at most; a cycle is an error.
- Match: all, canonical, final, exec, host, originalhost, user, localuser (paramiko's); any other
  criterion is an error rather than a silent match. Note: the condition of a block holding an
  Include is checked again for each block of the included file (OpenSSH checks it once), which
  differs only for `Match host/user/exec` blocks whose included lines change HostName or User.
- ProxyJump and ProxyCommand: whichever comes first wins, as in OpenSSH, and `none` counts.
  ProxyCommand keeps its tokens (%%, %h, %n, %p, %r) for expand_proxy_command, which quotes each
  value for the shell; paramiko would paste them in unquoted.
- Files that others can write (or owned by another user) are refused, like OpenSSH: a
  ProxyCommand or Match exec in them would run here.

Errors are one line: FILE:LINE: message, or naming the alias whose values are wrong.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

import paramiko

from clusterctl.config.models import check_ip
from clusterctl.errors import UserError

INCLUDE_MAX_DEPTH = 16
# What paramiko.SSHConfig.parse accepts as a line (its own pattern).
_LINE_RE = re.compile(r"(\w+)(?:\s*=\s*|\s+)(.+)")
MATCH_CRITERIA = ("all", "canonical", "final", "exec", "host", "originalhost", "user", "localuser")
_NO_ARGUMENT = ("all", "canonical", "final")
# An alias or HostName: a DNS-like name (underscores allowed, as resolvers do) or an IP address.
_NAME_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})\Z")
_USER_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@+-]{0,127}\Z")


# The keys resolve_endpoints uses (HostName aside): whether a lookup said anything for a name.
_SAYING = ("user", "port", "identityfile", "identitiesonly", "proxyjump", "proxycommand")


class SSHConfigError(UserError):
    """A problem in the ssh config (one line, naming the file and line or the alias)."""


@dataclass(frozen=True)
class HostConfig:
    """What the ssh config says for one alias (the name looked up)."""

    alias: str
    hostname: str | None = None  # HostName, when it differs from the alias
    user: str | None = None
    port: int | None = None
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    # ProxyJump's hops, first to last ([user@]host[:port] each); () for none or `none`.
    proxy_jump: tuple[str, ...] = ()
    # ProxyCommand with its tokens unexpanded; None for none (or when ProxyJump came first).
    proxy_command: str | None = None
    # Whether any block gave the alias one of these (a `none` counts).
    says_anything: bool = False


@dataclass(frozen=True)
class Jump:
    """One ProxyJump hop: [user@]host[:port] (or ssh://...); host is looked up in the config."""

    host: str
    user: str | None = None
    port: int | None = None


class _Config(paramiko.SSHConfig):
    # Keep ProxyCommand's tokens for expand_proxy_command (paramiko pastes values in unquoted).
    def _allowed_tokens(self, key: str) -> list[str]:
        return [] if key == "proxycommand" else super()._allowed_tokens(key)


class SSHConfigFile:
    """A parsed ssh config with its Includes expanded; lookup(alias) -> HostConfig."""

    def __init__(self, text: str = "", path: Path | None = None):
        self.path = path
        self.text = text
        try:
            self._conf = _Config.from_text(text)
        except paramiko.ssh_exception.ConfigParseError as exc:  # checked line by line before; a guard
            raise SSHConfigError(f"{path or 'ssh config'}: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> SSHConfigFile:
        """Read path and every file it includes (relative Includes: from path's folder)."""
        path = Path(path)
        return cls(expand_includes(path, base=path.parent), path)

    def lookup(self, alias: str) -> HostConfig:
        where = f"{self.path or 'ssh config'}: {alias}"
        try:
            found = self._conf.lookup(alias)
        except (paramiko.SSHException, OSError, ValueError) as exc:  # Match exec, canonicalization
            raise SSHConfigError(f"{where}: {exc}") from None
        hostname = found.get("hostname")
        if hostname is not None and hostname != alias:
            _check_name(hostname, f"{where}: HostName")
        else:
            hostname = None
        user = found.get("user")
        if user is not None and not _USER_RE.match(user):
            raise SSHConfigError(f"{where}: invalid User {user!r}")
        port = None
        if "port" in found:
            text = found["port"]
            if not text.isdigit() or not 1 <= int(text) <= 65535:
                raise SSHConfigError(f"{where}: invalid Port {text!r}")
            port = int(text)
        only = found.get("identitiesonly", "no").lower()
        if only not in ("yes", "true", "no", "false"):
            raise SSHConfigError(f"{where}: IdentitiesOnly must be yes or no, got {only!r}")
        jumps: tuple[str, ...] = ()
        command: str | None = None
        for key in found:  # in the order the values were first obtained: the first one wins
            if key == "proxyjump":
                value = found[key].strip()
                if value.lower() != "none":
                    jumps = tuple(hop.strip() for hop in value.split(","))
                    if not all(jumps):
                        raise SSHConfigError(f"{where}: ProxyJump {value!r} has an empty hop")
                break
            if key == "proxycommand":
                value = found[key]  # None for `ProxyCommand none`
                command = value if value and value.strip().lower() != "none" else None
                break
        return HostConfig(
            alias=alias,
            hostname=hostname,
            user=user,
            port=port,
            identity_files=tuple(found.get("identityfile", ())),
            identities_only=only in ("yes", "true"),
            proxy_jump=jumps,
            proxy_command=command,
            says_anything=bool(hostname) or any(k in found for k in _SAYING),
        )


# -- Include ---------------------------------------------------------------------------------


class _Block:
    """A Host or Match line: its condition, as Match criteria (keyword, argument or None)."""

    __slots__ = ("host", "criteria")

    def __init__(self, host: tuple[str, ...] | None = None, criteria: tuple[tuple[str, str | None], ...] = ()):
        self.host = host  # Host patterns (when a Host line)
        self.criteria = criteria


def _word(word: str) -> str:
    # Quoted only when it must be (paramiko splits Host and Match values with shlex).
    return word if word and not re.search(r"[\s'\"\\#]", word) else shlex.quote(word)


def _render(cond: tuple[_Block, ...]) -> str:
    """The header line for a block whose condition is every block of cond at once."""
    if not cond:
        return "Host *"
    if len(cond) == 1 and cond[0].host is not None:
        return "Host " + " ".join(_word(p) for p in cond[0].host)
    words: list[str] = []
    for block in cond:
        if block.host is not None:  # Host matches the name as given: Match originalhost
            words += ["originalhost", ",".join(block.host)]
            continue
        for keyword, argument in block.criteria:
            if keyword == "all":  # true; paramiko allows it only alone
                continue
            words += [keyword] if argument is None else [keyword, argument]
    return "Match " + (" ".join(_word(w) for w in words) if words else "all")


def _check_perms(path: Path, where: str) -> None:
    try:
        st = path.stat()
    except OSError as exc:
        raise SSHConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SSHConfigError(f"{where}: cannot read {path}: it is a directory")
    if (st.st_uid not in (0, os.getuid())) or st.st_mode & 0o022:
        raise SSHConfigError(
            f"{where}: bad owner or permissions on {path} (others can write it; OpenSSH refuses it too)"
        )


def _read(path: Path, where: str) -> list[str]:
    _check_perms(path, where)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SSHConfigError(f"{where}: cannot read {path}: {why}") from None


def _match_criteria(value: str, where: str) -> tuple[tuple[str, str | None], ...]:
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise SSHConfigError(f"{where}: cannot parse Match {value!r}: {exc}") from None
    out: list[tuple[str, str | None]] = []
    while words:
        word = words.pop(0)
        keyword = word.lower()
        bare = keyword.removeprefix("!")
        if bare not in MATCH_CRITERIA:
            raise SSHConfigError(
                f"{where}: Match {bare} is not supported (supported: {', '.join(MATCH_CRITERIA)}); "
                "set ssh.config_file to a file without it"
            )
        if bare in _NO_ARGUMENT:
            if keyword.startswith("!"):
                raise SSHConfigError(f"{where}: Match {word} cannot be negated")
            out.append((keyword, None))
            continue
        if not words:
            raise SSHConfigError(f"{where}: Match {word} needs an argument")
        out.append((keyword, words.pop(0)))
    if not out:
        raise SSHConfigError(f"{where}: Match needs a criterion (e.g. Match host NAME, or Match all)")
    keywords = [k for k, _ in out]
    if "all" in keywords and any(k not in ("all", "canonical", "final") for k in keywords):
        raise SSHConfigError(f"{where}: Match all cannot be combined with other criteria")
    return tuple(out)


def _include_paths(value: str, base: Path, where: str) -> list[Path]:
    try:
        patterns = shlex.split(value)
    except ValueError as exc:
        raise SSHConfigError(f"{where}: cannot parse Include {value!r}: {exc}") from None
    out: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if expanded.startswith("~"):
            raise SSHConfigError(f"{where}: Include {pattern}: unknown user in {pattern.split('/')[0]}")
        full = Path(expanded) if os.path.isabs(expanded) else base / expanded
        out += [Path(p) for p in sorted(glob.glob(str(full)))]  # none found: skipped, as OpenSSH does
    return out


def expand_includes(path: Path, base: Path) -> str:
    """The text of path with each Include replaced by the files it names (see the module's
    docstring for how blocks around an Include are kept), ready for SSHConfig.from_text."""
    out: list[str] = []
    header: list[tuple[_Block, ...]] = [()]  # the condition of the block being written to out

    def emit(cond: tuple[_Block, ...], line: str) -> None:
        if cond != header[0]:  # _Block compares by identity: each Host/Match line is its own block
            out.append(_render(cond))
            header[0] = cond
        out.append(line)

    def read(file: Path, outer: tuple[_Block, ...], trail: tuple[Path, ...], where: str) -> None:
        if len(trail) > INCLUDE_MAX_DEPTH:
            raise SSHConfigError(f"{where}: Include nested more than {INCLUDE_MAX_DEPTH} deep")
        real = Path(os.path.realpath(file))
        seen = [Path(os.path.realpath(t)) for t in trail]
        if real in seen:
            loop = " -> ".join(str(p) for p in (*trail[seen.index(real):], file))
            raise SSHConfigError(f"{where}: Include cycle: {loop}")
        cond = outer
        for number, raw in enumerate(_read(file, where), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            here = f"{file}:{number}"
            found = _LINE_RE.match(line)
            if not found:
                raise SSHConfigError(f"{here}: cannot parse {line!r}")
            key, value = found.group(1).lower(), found.group(2).strip()
            if key == "include":
                for included in _include_paths(value, base, here):
                    read(included, cond, (*trail, file), here)
            elif key == "host":
                try:
                    patterns = tuple(shlex.split(value))
                except ValueError as exc:
                    raise SSHConfigError(f"{here}: cannot parse Host {value!r}: {exc}") from None
                if not patterns:
                    raise SSHConfigError(f"{here}: Host needs a pattern")
                cond = (*outer, _Block(host=patterns))
            elif key == "match":
                cond = (*outer, _Block(criteria=_match_criteria(value, here)))
            else:
                emit(cond, line)

    read(path, (), (), "ssh config")
    return "\n".join(out) + "\n"


# -- values ----------------------------------------------------------------------------------


def _check_name(value: str, what: str) -> str:
    try:
        return check_ip(value)
    except ValueError:
        pass
    if not _NAME_RE.match(value):
        raise SSHConfigError(f"{what} {value!r} is not an IP address or host name")
    return value


def parse_jump(spec: str, where: str) -> Jump:
    """'[user@]host[:port]', '[user@][v6addr]:port' or 'ssh://[user@]host[:port]'."""
    text = spec.strip()
    if text.lower().startswith("ssh://"):
        text = text[6:].rstrip("/")
    user, at, rest = text.rpartition("@")
    port_text = ""
    if rest.startswith("["):
        host, close, tail = rest[1:].partition("]")
        if not close or (tail and not tail.startswith(":")):
            raise SSHConfigError(f"{where}: invalid ProxyJump hop {spec!r}")
        port_text = tail[1:] if tail else ""
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        if not port_text:
            raise SSHConfigError(f"{where}: invalid port in ProxyJump hop {spec!r}")
    else:
        host = rest  # a name, or a bare IPv6 address
    if at and not _USER_RE.match(user):
        raise SSHConfigError(f"{where}: invalid user in ProxyJump hop {spec!r}")
    if port_text and (not port_text.isdigit() or not 1 <= int(port_text) <= 65535):
        raise SSHConfigError(f"{where}: invalid port in ProxyJump hop {spec!r}")
    _check_name(host, f"{where}: ProxyJump hop")
    return Jump(host=host, user=user or None, port=int(port_text) if port_text else None)


_TOKEN_RE = re.compile(r"%(.?)", re.DOTALL)


def expand_proxy_command(template: str, *, host: str, port: int, user: str, alias: str) -> str:
    """ProxyCommand's tokens: %h host, %p port, %r remote user, %n the name as given, %% a %.
    Each value is quoted for the shell (the command runs as `sh -c 'exec COMMAND'`)."""
    values = {"h": host, "p": str(port), "r": user, "n": alias}

    def one(m: re.Match) -> str:
        token = m.group(1)
        if token == "%":
            return "%"
        if token not in values:
            shown = f"%{token}" if token else "a lone %"
            raise SSHConfigError(f"ProxyCommand for {alias}: unknown token {shown} (use %%, %h, %n, %p, %r)")
        return shlex.quote(values[token])

    return _TOKEN_RE.sub(one, template)
