"""Load a cluster file: YAML -> typed models, every error as one line FILE:LINE: KEY.PATH: message.

Line numbers come from PyYAML's node tree (compose), walked once to map each key path to the
line where it stands; pydantic's error locations are then looked up in that map.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from clusterctl.config import models
from clusterctl.config.models import ClusterFile, Host, IndexedError
from clusterctl.errors import ConfigError

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Cluster:
    """A validated cluster file and where it came from."""

    path: Path
    spec: ClusterFile
    # Line of each key path in the file, for errors found after loading (e.g. building an app).
    lines: dict[Loc, int] = field(default_factory=dict, compare=False, repr=False)

    def where(self, *loc: str | int) -> str:
        """'FILE:LINE: KEY.PATH' for a message about that key."""
        line = _line_for(self.lines, loc)
        return f"{self.path}{f':{line}' if line else ''}: {format_loc(loc)}"

    @property
    def name(self) -> str:
        return self.spec.name or self.path.stem

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.spec.hosts

    def resolve_path(self, value: str) -> Path:
        """A path from the file: ~ expanded, relative to the file's own folder."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self.path.parent / p)


def _show(value: str) -> str:
    """A value from the file as printed in a message: quoted if it holds a newline or control character."""
    return value if value.isprintable() else repr(value)


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = _show(str(part))
            out += f".{part}" if out else part
    return out


# pydantic puts the member's tag into the location of a union error
# (hosts[0].bastion.Bastion.address); these are those tags, never keys of the file.
_UNION_TAGS = frozenset(
    {name for name, obj in vars(models).items() if isinstance(obj, type) and issubclass(obj, BaseModel)}
    | {"str", "int", "float", "bool", "none"}
)


def _clean_loc(loc: Loc, lines: dict[Loc, int]) -> Loc:
    out: Loc = ()
    for part in loc:
        if isinstance(part, str) and ("[" in part or part.startswith("function-")):
            continue
        if isinstance(part, str) and part in _UNION_TAGS and (*out, part) not in lines:
            continue
        out = (*out, part)
    return out


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader whose constructors fail only with YAMLError.

    PyYAML's own constructors let plain Python errors through for scalars that match a type's
    pattern but not its range ("2020-13-45", "!!int abc", "!!bool maybe", "0x_"); here each
    becomes a ConstructorError that carries the node's line.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            shown = repr(node.value) if isinstance(node, yaml.ScalarNode) else node.tag
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {shown}: {exc}", node.start_mark
            ) from None


def _line_map(node: yaml.Node, file: str) -> dict[Loc, int]:
    """Map each key path to its 1-based line; refuse duplicate keys (YAML would keep the last)."""
    lines: dict[Loc, int] = {}
    stack: list[tuple[yaml.Node, Loc]] = [(node, ())]
    # An alias shares its anchor's node: walk each node once, or "&a [*a]" loops for ever and
    # nested aliases ("billion laughs") take exponential time.
    visited: set[int] = set()
    while stack:
        current, loc = stack.pop()
        if isinstance(current, yaml.CollectionNode):
            if id(current) in visited:
                continue
            visited.add(id(current))
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in current.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
                child = (*loc, key)
                if key in seen:
                    raise ConfigError(file, format_loc(child), "duplicate key", key_node.start_mark.line + 1)
                seen.add(key)
                lines[child] = key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(current, yaml.SequenceNode):
            for i, item in enumerate(current.value):
                child = (*loc, i)
                lines[child] = item.start_mark.line + 1
                stack.append((item, child))
    return lines


def _line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def _message(err: dict[str, Any]) -> str:
    kind, msg = err.get("type", ""), err.get("msg", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_text(text: str, file: str, path: Path | None = None) -> Cluster:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            raise ConfigError(file, "", "the file is empty; it needs at least a hosts list")
        lines = _line_map(node, file)
        data = yaml.load(text, Loader=_SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file, "", f"malformed YAML: {_one_line(problem)}", mark.line + 1 if mark else None) from None
    except RecursionError:
        raise ConfigError(file, "", "malformed YAML: nested too deeply") from None
    if data is None:  # "---" or "null" alone: a document with nothing in it
        raise ConfigError(file, "", "the file is empty; it needs at least a hosts list", 1)
    if not isinstance(data, dict):
        raise ConfigError(file, "", f"the top level must be a mapping of keys, not {type(data).__name__}", 1)
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(file, str(key), "keys must be strings", _line_for(lines, (str(key),)))
    try:
        spec = ClusterFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc: Loc = tuple(err.get("loc", ()))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, IndexedError):
            loc = cause.loc
        loc = _clean_loc(loc, lines)
        raise ConfigError(file, format_loc(loc), _one_line(_message(err)), _line_for(lines, loc)) from None
    except RecursionError:
        raise ConfigError(file, "", "nested too deeply") from None
    cluster = Cluster(path=path or Path(file), spec=spec, lines=lines)
    _check_files(cluster, file, lines)
    return cluster


def _check_files(cluster: Cluster, file: str, lines: dict[Loc, int]) -> None:
    """Identity files named in the file must exist now, before any host is contacted."""
    if cluster.spec.ssh.identity_file:
        _must_exist(cluster, cluster.spec.ssh.identity_file, ("ssh", "identity_file"), file, lines)
    for i, host in enumerate(cluster.hosts):
        if host.identity_file:
            _must_exist(cluster, host.identity_file, ("hosts", i, "identity_file"), file, lines)
        if host.bastion is not None and not isinstance(host.bastion, str) and host.bastion.identity_file:
            _must_exist(cluster, host.bastion.identity_file, ("hosts", i, "bastion", "identity_file"), file, lines)
    for i, svc in enumerate(cluster.spec.services):
        if svc.app is not None:
            try:
                found = cluster.resolve_path(svc.app).is_dir()
            except (OSError, ValueError):
                found = False
            if not found:
                loc = ("services", i, "app")
                raise ConfigError(file, format_loc(loc), f"app folder not found: {_show(svc.app)}", _line_for(lines, loc))


def _must_exist(cluster: Cluster, value: str, loc: Loc, file: str, lines: dict[Loc, int]) -> None:
    try:
        found = cluster.resolve_path(value).is_file()
    except (OSError, ValueError):  # a NUL byte ("~\0x"), a name too long for the OS
        found = False
    if not found:
        raise ConfigError(file, format_loc(loc), f"identity file not found: {_show(value)}", _line_for(lines, loc))


def load(path: str | Path) -> Cluster:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(p), "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(str(p), "", "is a directory, not a cluster file") from None
    except OSError as exc:
        raise ConfigError(str(p), "", f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(str(p), "", f"not UTF-8 text (byte {exc.start})", line) from None
    return load_text(text, str(p), p)
