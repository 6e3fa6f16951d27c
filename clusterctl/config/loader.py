"""Load a cluster file: YAML 1.2 -> typed models, every error as one line FILE:LINE: KEY.PATH: message.

Line numbers come from ruamel.yaml's node tree (compose), walked once to map each key path to
the line where it stands; pydantic's error locations are then looked up in that map. Errors
come in stages, each reported all at once, in file order: the YAML itself (syntax: the first
error only), its keys (duplicates, keys that are not strings), the schema, then the files it
names (identity files, app folders).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.constructor import ConstructorError, SafeConstructor
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.tag import Tag

from clusterctl.config import models
from clusterctl.config.models import ClusterFile, CrossCheckErrors, Host, IndexedError
from clusterctl.errors import ConfigError, in_file_order

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


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

    def normalized(self) -> dict[str, Any]:
        """The model as JSON-ready data, every default filled in and the name given: a cluster
        file that loads to the same model. It holds no secret: those live in the state dir, and
        the weave password in an environment variable the file only names."""
        return {**self.spec.model_dump(mode="json"), "name": self.name}

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
# (hosts[0].bastion.Bastion.address, network.routed.host_prefix); these are those tags, never
# keys of the file.
_UNION_TAGS = frozenset(
    {name for name, obj in vars(models).items() if isinstance(obj, type) and issubclass(obj, BaseModel)}
    | {"str", "int", "float", "bool", "none"}
    | set(models.NETWORK_DRIVERS)
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


# Cluster files are small; a cap keeps `-f /dev/zero` or a huge file from filling memory.
MAX_FILE_BYTES = 1 << 20

_TAG = "tag:yaml.org,2002:"
# The YAML 1.2 core schema (spec 10.3.2), in the order it resolves plain scalars; "<<" merges
# mappings as PyYAML and ruamel.yaml both do.
_CORE_SCHEMA = (
    ("merge", re.compile(r"<<")),
    ("null", re.compile(r"~|null|Null|NULL|")),
    ("bool", re.compile(r"true|True|TRUE|false|False|FALSE")),
    ("int", re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")),
    ("float", re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")),
)


class _Yaml12Resolver(VersionedResolver):
    """Plain scalars as YAML 1.2 reads them (`no` and `on` are strings, 0022 is 22), whatever
    %YAML directive the file carries; no timestamps (1.2 has none: a date is a string).

    A plain scalar is a number only when YAML 1.1 (PyYAML) reads it as a number too: what a 1.1
    writer leaves unquoted ("09", "1e3", "0o7") is a string to it, and stays the string it wrote.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yaml_11 = yaml.resolver.Resolver()

    @property
    def processing_version(self) -> tuple[int, int]:
        return (1, 2)

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode and implicit[0]:
            return Tag(suffix=_TAG + self._plain_tag(value))
        return super().resolve(kind, value, (False, False))

    def _plain_tag(self, value: str) -> str:
        for name, pattern in _CORE_SCHEMA:
            if pattern.fullmatch(value):
                if name in ("int", "float") and self._yaml_11.resolve(yaml.ScalarNode, value, (True, False)) == _TAG + "str":
                    return "str"
                return name
        return "str"


class _SafeConstructor(SafeConstructor):
    """ruamel.yaml's safe constructor failing only with YAMLError.

    Its constructors let plain Python errors through for explicitly tagged scalars they cannot
    read ("!!int abc", "!!bool maybe", "!!float x"); here each becomes a ConstructorError that
    carries the node's line.
    """

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError) as exc:
            shown = repr(node.value) if isinstance(node, ScalarNode) else str(node.tag)
            raise ConstructorError(None, None, f"cannot read the value {shown} as {node.tag}: {exc}", node.start_mark) from None


def _reader() -> YAML:
    reader = YAML(typ="safe", pure=True)
    reader.Resolver = _Yaml12Resolver
    reader.Constructor = _SafeConstructor
    reader.allow_duplicate_keys = True  # refused with their lines before (_line_map)
    return reader


def read_yaml(text: str, file: str) -> tuple[Any, dict[Loc, int]]:
    """YAML 1.2 text -> (data, the line of each key path). None for an empty document.

    Malformed YAML is one ConfigError; duplicate keys and keys that are not strings are all
    reported at once (ConfigErrors), before anything is built from the file.
    """
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(file, "", f"larger than {MAX_FILE_BYTES} bytes, the limit for a clusterctl YAML file")
    reader = _reader()
    try:
        with warnings.catch_warnings():
            # A reused anchor is valid YAML (the later one counts): no warning on the terminal.
            warnings.simplefilter("ignore")
            node = reader.compose(text)
            if node is None:
                return None, {}
            lines, problems = _line_map(node, file)
            if problems:
                raise in_file_order(problems)
            data = reader.constructor.construct_document(node)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file, "", f"malformed YAML: {_one_line(problem)}", mark.line + 1 if mark else None) from None
    except RecursionError:
        raise ConfigError(file, "", "malformed YAML: nested too deeply") from None
    return data, lines


def _line_map(node: Node, file: str) -> tuple[dict[Loc, int], list[ConfigError]]:
    """Each key path's 1-based line, and the keys refused: duplicates (YAML would keep one of
    them silently) and keys that are not strings (no key of a cluster file is a number)."""
    lines: dict[Loc, int] = {}
    problems: list[ConfigError] = []
    stack: list[tuple[Node, Loc]] = [(node, ())]
    # An alias shares its anchor's node: walk each node once, or "&a [*a]" loops for ever and
    # nested aliases ("billion laughs") take exponential time.
    visited: set[int] = set()
    while stack:
        current, loc = stack.pop()
        if isinstance(current, CollectionNode):
            if id(current) in visited:
                continue
            visited.add(id(current))
        if isinstance(current, MappingNode):
            seen: set[str] = set()
            for key_node, value_node in current.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, ScalarNode):
                    problems.append(ConfigError(file, format_loc(loc), "a key must be a string, not a list or mapping", line))
                    continue
                key, child = key_node.value, (*loc, key_node.value)
                if str(key_node.tag) not in (_TAG + "str", _TAG + "merge"):
                    problems.append(ConfigError(file, format_loc(child), "a key must be a string: quote it", line))
                elif key in seen:
                    problems.append(ConfigError(file, format_loc(child), "duplicate key", line))
                seen.add(key)
                lines.setdefault(child, line)
                stack.append((value_node, child))
        elif isinstance(current, SequenceNode):
            for i, item in enumerate(current.value):
                child = (*loc, i)
                lines[child] = item.start_mark.line + 1
                stack.append((item, child))
    return lines, problems


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


def validate(model: type[M], data: Any, lines: dict[Loc, int], file: str) -> M:
    """Data read from a YAML file -> the model; every schema error at once, each on its key's line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise in_file_order(_schema_errors(exc, lines, file)) from None
    except RecursionError:
        raise ConfigError(file, "", "nested too deeply") from None


def _schema_errors(exc: ValidationError, lines: dict[Loc, int], file: str) -> list[ConfigError]:
    found: list[ConfigError] = []
    reported: list[Loc] = []
    for err in exc.errors():
        for loc, message in _problems(err):
            loc = _clean_loc(loc, lines)
            # One wrong value can give several errors on one branch of keys: a union's members
            # each report it, and a tuple whose item failed is "too short" after validation.
            # The first says it.
            if any(loc[: len(r)] == r or r[: len(loc)] == loc for r in reported):
                continue
            reported.append(loc)
            if loc[:1] == ("network",) and len(loc) == 2 and message == "unknown key":
                message += _other_drivers_key(str(loc[1]))
            found.append(ConfigError(file, format_loc(loc), _one_line(message), _line_for(lines, loc)))
    return found


def _other_drivers_key(key: str) -> str:
    """' (a key of driver routed, wireguard)' when another driver's section has that key."""
    owners = [name for name, m in _NETWORK_MODELS.items() if key in m.model_fields]
    return f" (a key of driver {', '.join(owners)})" if owners else ""


_NETWORK_MODELS = {
    "overlay": models.OverlayNetwork,
    "routed": models.RoutedNetwork,
    "weave": models.WeaveNetwork,
    "wireguard": models.WireguardNetwork,
}


def _problems(err: dict[str, Any]) -> list[tuple[Loc, str]]:
    """(key path, message) of one pydantic error: the cross-field checks name their own keys."""
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, CrossCheckErrors):
        return [(e.loc, str(e)) for e in cause.errors]
    if isinstance(cause, IndexedError):
        return [(cause.loc, _message(err))]
    return [(tuple(err.get("loc", ())), _message(err))]


def load_text(text: str, file: str, path: Path | None = None, identity_files: bool = True) -> Cluster:
    """`identity_files=False`: the SSH keys the file names need not exist (`place` uses no SSH)."""
    data, lines = read_yaml(text, file)
    if data is None:  # nothing, "---" or "null" alone: a document with nothing in it
        raise ConfigError(file, "", "the file is empty; it needs at least a hosts list")
    if not isinstance(data, dict):
        raise ConfigError(file, "", f"the top level must be a mapping of keys, not {type(data).__name__}", 1)
    spec = validate(ClusterFile, data, lines, file)
    cluster = Cluster(path=path or Path(file), spec=spec, lines=lines)
    missing = _missing_files(cluster, file, identity_files)
    if missing:
        raise in_file_order(missing)
    return cluster


def _missing_files(cluster: Cluster, file: str, identity_files: bool = True) -> list[ConfigError]:
    """Identity files and app folders named in the file must exist now, before any host is contacted."""
    wanted: list[tuple[Loc, str, str]] = []  # (key path, value, what it names)
    if cluster.spec.ssh.identity_file:
        wanted.append((("ssh", "identity_file"), cluster.spec.ssh.identity_file, "identity file"))
    for i, host in enumerate(cluster.hosts):
        if host.identity_file:
            wanted.append((("hosts", i, "identity_file"), host.identity_file, "identity file"))
        if host.bastion is not None and not isinstance(host.bastion, str) and host.bastion.identity_file:
            wanted.append((("hosts", i, "bastion", "identity_file"), host.bastion.identity_file, "identity file"))
    if not identity_files:
        wanted = []
    for i, svc in enumerate(cluster.spec.services):
        if svc.app is not None:
            wanted.append((("services", i, "app"), svc.app, "app folder"))
    missing = []
    for loc, value, what in wanted:
        try:
            path = cluster.resolve_path(value)
            found = path.is_dir() if what == "app folder" else path.is_file()
        except (OSError, ValueError):  # a NUL byte ("~\0x"), a name too long for the OS
            found = False
        if not found:
            missing.append(ConfigError(file, format_loc(loc), f"{what} not found: {_show(value)}", _line_for(cluster.lines, loc)))
    return missing


def read_text_file(path: Path) -> str:
    """A YAML file's text: ConfigError for a file that is missing, too big or not UTF-8."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "", "is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(str(path), "", f"larger than {MAX_FILE_BYTES} bytes, the limit for a clusterctl YAML file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(str(path), "", f"not UTF-8 text (byte {exc.start})", line) from None


def load(path: str | Path, identity_files: bool = True) -> Cluster:
    p = Path(path)
    return load_text(read_text_file(p), str(p), p, identity_files)
