"""Property tests for the cluster-file loader.

Whatever the file holds, the loader gives a Cluster or a ConfigError: one line per problem, each
starting with the file name, in file order; never any other exception. Valid generated files
always load; whatever PyYAML (YAML 1.1) writes reads back as what it wrote; several wrong values
are all reported at once.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from clusterctl.config.loader import Cluster, load, load_text
from clusterctl.errors import ConfigError

FILE = "gen-cluster.yaml"
SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck)}

# --- valid pieces -------------------------------------------------------------------------------

names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
users = st.from_regex(r"\A[a-z_][a-z0-9_.-]{0,12}\Z")
ports = st.integers(min_value=1, max_value=65535)
_dns_label = st.from_regex(r"\A[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")
dns_names = st.lists(_dns_label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
addresses = st.one_of(ipv4, ipv6, dns_names)
roles = st.sampled_from(["server", "client", ["server"], ["client"]])
label_keys = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._/-]{0,15}\Z")
label_values = st.from_regex(r"\A[A-Za-z0-9._:/@+-]{0,15}\Z")
labels = st.dictionaries(label_keys, label_values, max_size=3)


def _address_key(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower().rstrip(".")


@st.composite
def bastions(draw: st.DrawFn, earlier: list[str]) -> Any:
    kinds = ["shorthand", "mapping"] + (["host"] if earlier else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "host":
        return draw(st.sampled_from(earlier))
    address = draw(st.one_of(ipv4, dns_names))  # a shorthand IPv6 address cannot carry a port
    user, port = draw(st.none() | users), draw(st.none() | ports)
    if kind == "mapping":
        return {k: v for k, v in {"address": address, "user": user, "port": port}.items() if v is not None}
    if not user and not port and not address[0].isdigit():
        port = 22  # a bare DNS name is read as the name of a host in the file
    return f"{user + '@' if user else ''}{address}{':' + str(port) if port else ''}"


@st.composite
def hosts(draw: st.DrawFn) -> list[dict[str, Any]]:
    pairs = draw(
        st.lists(
            st.tuples(names, addresses),
            min_size=1,
            max_size=6,
            unique_by=(lambda p: p[0], lambda p: _address_key(p[1])),
        )
    )
    out: list[dict[str, Any]] = []
    for i, (name, address) in enumerate(pairs):
        host: dict[str, Any] = {"name": name, "address": address}
        if draw(st.booleans()):
            host["roles"] = draw(roles)
        if draw(st.booleans()):
            host["labels"] = draw(labels)
        if draw(st.integers(0, 3)) == 0:
            host["port"] = draw(ports)
        if draw(st.integers(0, 3)) == 0:
            host["user"] = draw(users)
        if draw(st.integers(0, 3)) == 0:
            host["cluster_address"] = draw(ipv4)
        if draw(st.integers(0, 3)) == 0:
            host["bastion"] = draw(bastions([h["name"] for h in out]))
        out.append(host)
    return out


@st.composite
def cluster_data(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if draw(st.booleans()):
        data["name"] = draw(names)
    if draw(st.booleans()):
        ssh: dict[str, Any] = {}
        if draw(st.booleans()):
            ssh["user"] = draw(users)
        if draw(st.booleans()):
            ssh["port"] = draw(ports)
        if draw(st.booleans()):
            ssh["connect_timeout"] = draw(st.integers(1, 300))
        data["ssh"] = ssh
    if draw(st.booleans()):
        data["docker"] = {"install": draw(st.sampled_from(["package", "script", "none"]))}
        if draw(st.booleans()):
            data["docker"]["start_timeout"] = draw(st.integers(1, 3600))
    if draw(st.booleans()):
        data["filebox"] = {"binaries": ["consul"], "relay": draw(st.booleans()), "relay_port": draw(ports)}
    data["hosts"] = draw(hosts())
    if draw(st.booleans()):
        driver = draw(st.sampled_from(["overlay", "routed", "weave", "wireguard"]))
        data["network"] = {
            "driver": driver,
            "name": draw(names),
            "subnet": draw(st.sampled_from(["10.42.0.0/16", "172.20.0.0/24", "10.250.0.0/20"])),
        }
        if driver in ("routed", "wireguard"):  # the drivers with a subnet a host
            data["network"]["host_prefix"] = draw(st.integers(24, 30))
    if draw(st.booleans()):
        data["consul"] = {"enabled": draw(st.booleans()), "datacenter": draw(names)}
    if draw(st.booleans()):
        service_names = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")
        data["services"] = [
            {"name": n, "image": "nginx:1", "replicas": draw(st.integers(0, len(data["hosts"])))}
            | ({"port": draw(ports)} if draw(st.booleans()) else {})
            | ({"check": {"http": "/health", "interval": "10s"}} if draw(st.booleans()) else {})
            | ({"env": {"PLAIN": "x", "SECRET": {"from_env": "OPERATOR_VAR"}}} if draw(st.booleans()) else {})
            for n in draw(st.lists(service_names, max_size=3, unique=True))
        ]
    return data


@st.composite
def dumped(draw: st.DrawFn, data: dict[str, Any]) -> str:
    flow = draw(st.sampled_from([False, True, None]))
    return yaml.safe_dump(data, default_flow_style=flow, sort_keys=False, allow_unicode=True)


valid_files = cluster_data().flatmap(lambda d: st.tuples(st.just(d), dumped(d)))

# --- broken pieces ------------------------------------------------------------------------------

SHELL_BITS = [";", "$(id)", "`id`", " ", "\n", "|", "&&", ">", "'", '"', "\\", "\t", "\r", "\x00", "\u2028", "%x y"]
WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(SHELL_BITS),
)
YAMLISH = "ab01:-, \n[]{}&*!|>'\"#%@`?\t.~<=\\/"


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def broken_data(draw: st.DrawFn) -> dict[str, Any] | Any:
    data = copy.deepcopy(draw(cluster_data()))
    how = draw(st.sampled_from(["wrong_type", "unknown_key", "shell", "duplicate_host", "drop_key"]))
    if how == "duplicate_host":
        hosts_ = data["hosts"]
        twin = copy.deepcopy(draw(st.sampled_from(hosts_)))
        if draw(st.booleans()):
            twin["name"] = draw(names)  # same address, other name
        hosts_.insert(draw(st.integers(0, len(hosts_))), twin)
        return data
    path = draw(st.sampled_from(_paths(data)))
    if how == "wrong_type":
        if not path:
            return draw(WRONG_VALUES)
        _get(data, path[:-1])[path[-1]] = draw(WRONG_VALUES)
    elif how == "unknown_key":
        dicts = [p for p in _paths(data) if isinstance(_get(data, p), dict)]
        target = _get(data, draw(st.sampled_from(dicts)))
        target[draw(st.text(min_size=1, max_size=12))] = draw(WRONG_VALUES)
    elif how == "shell":
        leaves = [p for p in _paths(data) if p and isinstance(_get(data, p), str)]
        if leaves:
            leaf = draw(st.sampled_from(leaves))
            value = _get(data, leaf)
            at = draw(st.integers(0, len(value)))
            bit = draw(st.sampled_from(SHELL_BITS))
            _get(data, leaf[:-1])[leaf[-1]] = value[:at] + bit + value[at:]
    elif how == "drop_key" and path and isinstance(_get(data, path[:-1]), dict):
        del _get(data, path[:-1])[path[-1]]
    return data


@st.composite
def broken_text(draw: st.DrawFn) -> str:
    text = draw(valid_files)[1]
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["insert", "delete", "duplicate_line", "swap_indent", "alias"]))
        at = draw(st.integers(0, len(text)))
        if how == "insert":
            text = text[:at] + draw(st.text(alphabet=YAMLISH, min_size=1, max_size=4)) + text[at:]
        elif how == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
        elif how == "duplicate_line":
            lines = text.splitlines(keepends=True)
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "".join(lines)
        elif how == "swap_indent":
            text = text.replace("\n  ", "\n" + draw(st.sampled_from(["", " ", "   ", "\t"])), 1)
        else:
            text = "x: &a [*a, *a]\n" + text
    return text


def _dump_any(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)


inputs = st.one_of(
    valid_files.map(lambda p: ("text", p[1])),
    broken_data().map(lambda d: ("text", _dump_any(d))),
    broken_text().map(lambda t: ("text", t)),
    st.text(alphabet=YAMLISH, max_size=120).map(lambda t: ("text", t)),
    st.text(max_size=60).map(lambda t: ("text", t)),
    st.binary(max_size=200).map(lambda b: ("bytes", b)),
    valid_files.flatmap(
        lambda p: st.tuples(st.integers(0, len(p[1].encode())), st.binary(min_size=1, max_size=3)).map(
            lambda ib: ("bytes", p[1].encode()[: ib[0]] + ib[1] + p[1].encode()[ib[0] :])
        )
    ),
)


def _check_lines(err: ConfigError, file: str) -> None:
    """One line per problem, each naming the file, in file order."""
    assert str(err).split("\n") == [str(e) for e in err.errors], str(err)
    for one in err.errors:
        message = str(one)
        assert message.startswith(file), message
        assert one.file == file
        assert "\n" not in message and "\r" not in message, message
        assert len(message.splitlines()) == 1, message
    lines = [e.line or 0 for e in err.errors]
    assert lines == sorted(lines), str(err)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-files")


@settings(max_examples=1000, **SETTINGS)
@given(case=inputs)
def test_any_input_gives_a_cluster_or_config_error_lines(workdir: Path, case: tuple[str, Any]) -> None:
    kind, payload = case
    if kind == "bytes":
        path = workdir / FILE
        path.write_bytes(payload)
        file = str(path)
        run = lambda: load(path)  # noqa: E731
    else:
        file = FILE
        run = lambda: load_text(payload, FILE)  # noqa: E731
    try:
        result = run()
    except ConfigError as err:
        _check_lines(err, file)
        event("ConfigError: " + re.split(r"[:('0-9]", err.message)[0].strip())
        event(f"errors: {min(len(err.errors), 3)}{'+' if len(err.errors) > 3 else ''}")
    else:
        event("Cluster")
        assert isinstance(result, Cluster)
        assert len(result.hosts) >= 1


@settings(max_examples=300, **SETTINGS)
@given(case=valid_files)
def test_valid_files_always_load_and_keep_host_order(case: tuple[dict[str, Any], str]) -> None:
    data, text = case
    cluster = load_text(text, FILE)
    assert [h.name for h in cluster.hosts] == [h["name"] for h in data["hosts"]]
    assert [h.address for h in cluster.hosts] == [
        str(ipaddress.ip_address(h["address"])) if ":" in h["address"] else h["address"] for h in data["hosts"]
    ]
    assert cluster.name == data.get("name", Path(FILE).stem)


@settings(max_examples=300, **SETTINGS)
@given(case=valid_files, values=st.lists(st.text(max_size=12), min_size=1, max_size=4))
def test_strings_pyyaml_writes_read_back_unchanged(case: tuple[dict[str, Any], str], values: list[str]) -> None:
    """YAML 1.2 reads some plain scalars that 1.1 writes unquoted ("09", "1e3", "0o7") as
    numbers; the loader keeps them the strings PyYAML meant."""
    data = copy.deepcopy(case[0])
    env = {f"V{i}": v for i, v in enumerate(values)}
    data["services"] = [{"name": "probe", "image": "nginx:1", "replicas": 0, "env": env}]
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    assume(yaml.safe_load(text) == data)  # PyYAML writes "\x85" as a line break it reads back as " "
    cluster = load_text(text, FILE)
    assert cluster.spec.services[0].env == env


@st.composite
def several_wrong_hosts(draw: st.DrawFn) -> tuple[str, list[int]]:
    """A valid file with a wrong value in each of some hosts: (text, the wrong hosts' indexes)."""
    data = copy.deepcopy(draw(cluster_data()))
    hosts_ = data["hosts"]
    wrong = sorted(draw(st.sets(st.integers(0, len(hosts_) - 1), min_size=1, max_size=len(hosts_))))
    for i in wrong:
        how = draw(st.sampled_from(["unknown_key", "port", "user", "roles"]))
        if how == "unknown_key":
            hosts_[i]["colour"] = draw(WRONG_VALUES)
        elif how == "port":
            hosts_[i]["port"] = draw(st.sampled_from([0, 70000, "twenty", [22], True]))
        elif how == "user":
            hosts_[i]["user"] = draw(st.sampled_from(SHELL_BITS)) + "x"
        else:
            hosts_[i]["roles"] = draw(st.sampled_from([[], ["boss"], ["server", "client"], {"a": 1}]))
    return draw(dumped(data)), wrong


@settings(max_examples=300, **SETTINGS)
@given(case=several_wrong_hosts())
def test_a_wrong_value_in_each_of_several_hosts_gives_one_line_each_in_file_order(case: tuple[str, list[int]]) -> None:
    text, wrong = case
    with pytest.raises(ConfigError) as info:
        load_text(text, FILE)
    err = info.value
    _check_lines(err, FILE)
    assert [e.key_path.split(".")[0] for e in err.errors] == [f"hosts[{i}]" for i in wrong], str(err)
