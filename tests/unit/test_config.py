"""The cluster-file loader: every mistake is one ConfigError line FILE:LINE: KEY.PATH: message."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
import yaml
from fractions import Fraction

from clusterctl.config.loader import MAX_FILE_BYTES, Cluster, load, load_text
from clusterctl.config.models import Bastion
from clusterctl.errors import ConfigError

FILE = "cluster.yaml"


def _text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def refused_all(text: str, file: str = FILE) -> tuple[ConfigError, ...]:
    """Load text that must be refused; check each error is one line naming the file, in file order."""
    with pytest.raises(ConfigError) as info:
        load_text(_text(text), file)
    errors = info.value.errors
    assert str(info.value).splitlines() == [str(e) for e in errors]
    for err in errors:
        assert str(err).startswith(file) and err.file == file and "\n" not in str(err), str(err)
    assert [e.line or 0 for e in errors] == sorted(e.line or 0 for e in errors), str(info.value)
    return errors


def refused(text: str, file: str = FILE) -> ConfigError:
    """Load text that must be refused; check the error is one line naming the file."""
    with pytest.raises(ConfigError) as info:
        load_text(_text(text), file)
    err = info.value
    message = str(err)
    assert "\n" not in message and len(message.splitlines()) == 1, message
    assert message.startswith(file)
    assert err.file == file
    return err


def expect(err: ConfigError, key_path: str, line: int | None, *fragments: str) -> None:
    assert (err.key_path, err.line) == (key_path, line), str(err)
    for fragment in fragments:
        assert fragment in err.message, str(err)
    where = f"{FILE}:{line}" if line else FILE
    assert str(err).startswith(f"{where}: {key_path}:" if key_path else f"{where}: "), str(err)


TWO_HOSTS = """
hosts:
  - name: web1
    address: 10.0.0.1
  - name: web2
    address: 10.0.0.2
"""


# --- YAML itself ---------------------------------------------------------------------------------


def test_malformed_yaml_unclosed_bracket_gives_line():
    err = refused(
        """
        hosts:
          - name: web1
            address: 10.0.0.1
            roles: [server
          - name: web2
        """
    )
    assert err.key_path == ""
    assert err.line is not None and 4 <= err.line <= 6
    assert err.message.startswith("malformed YAML:")


def test_malformed_yaml_bad_indentation_gives_line():
    err = refused(
        """
        hosts:
          - name: web1
           address: 10.0.0.1
        """
    )
    assert err.line == 3 and err.message.startswith("malformed YAML:")


def test_duplicate_yaml_key_is_refused_with_its_line():
    err = refused(
        """
        hosts:
          - name: web1
            address: 10.0.0.1
            name: web2
        """
    )
    expect(err, "hosts[0].name", 4, "duplicate key")


def test_duplicate_top_level_key():
    err = refused(TWO_HOSTS + "ssh:\n  user: a\nssh:\n  user: b\n")
    expect(err, "ssh", 8, "duplicate key")


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int"), ("true\n", "bool")],
)
def test_top_level_must_be_a_mapping(text, kind):
    err = refused(text)
    expect(err, "", 1, "top level must be a mapping", kind)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(text):
    err = refused(text)
    assert err.key_path == "" and "empty" in err.message


def test_explicit_null_document_is_refused():
    err = refused("null\n")
    assert "top level must be a mapping" in err.message or "empty" in err.message


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"hosts:\n  - name: caf\xe9\n    address: 10.0.0.1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}:2: not UTF-8 text (byte 20)"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load(tmp_path)


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("!!int abc", 3),
        ("!!float x", 3),
        ("!!bool maybe", 3),  # PyYAML raised KeyError
        ("!!timestamp abc", 3),  # PyYAML raised AttributeError
    ],
)
def test_scalars_pyyaml_cannot_construct_are_config_errors(value, line):
    err = refused(f"hosts:\n  - name: web1\n    address: {value}\n")
    assert err.line == line and err.message.startswith("malformed YAML:"), str(err)


def test_unsafe_tags_are_refused():
    err = refused("hosts: !!python/object/apply:os.system [id]\n")
    assert err.line == 1 and "malformed YAML" in err.message


def test_recursive_alias_does_not_hang():
    start = time.monotonic()
    err = refused(
        """
        hosts:
          - name: web1
            address: 10.0.0.1
            labels: &loop [*loop]
        """
    )
    assert time.monotonic() - start < 5
    expect(err, "hosts[0].labels", 4)


def test_alias_bomb_is_fast():
    text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 10):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n"
    start = time.monotonic()
    errors = refused_all(text + TWO_HOSTS.lstrip("\n"))
    assert time.monotonic() - start < 5
    assert [(e.key_path, e.line, e.message) for e in errors] == [(f"a{i}", i + 1, "unknown key") for i in range(10)]


# --- unknown keys -------------------------------------------------------------------------------


def test_unknown_key_at_top_level():
    err = refused(TWO_HOSTS + "colour: blue\n")
    expect(err, "colour", 6, "unknown key")


def test_unknown_key_in_a_host():
    err = refused(
        """
        hosts:
          - name: web1
            address: 10.0.0.1
          - name: web2
            address: 10.0.0.2
            colour: blue
        """
    )
    expect(err, "hosts[1].colour", 6, "unknown key")


def test_unknown_key_in_ssh_section():
    err = refused(
        """
        ssh:
          user: ops
          pasword: hunter2
        hosts:
          - {name: web1, address: 10.0.0.1}
        """
    )
    expect(err, "ssh.pasword", 3, "unknown key")


def test_unknown_key_in_a_bastion_mapping_has_no_union_tag_in_path():
    err = refused(
        """
        hosts:
          - name: web1
            address: 10.0.0.1
            bastion:
              address: jump.example.com
              colour: blue
        """
    )
    expect(err, "hosts[0].bastion.colour", 6, "unknown key")


def test_key_with_a_newline_stays_on_one_line():
    err = refused('"col\\nour": 1\n' + TWO_HOSTS.lstrip("\n"))
    expect(err, "'col\\nour'", 1, "unknown key")


def test_missing_hosts_and_missing_address():
    expect(refused("name: c1\n"), "hosts", None, "required key is missing")
    err = refused("hosts:\n  - name: web1\n  - name: web2\n    address: 10.0.0.2\n")
    expect(err, "hosts[0].address", 2, "required key is missing")


def test_wrong_types():
    expect(refused("hosts: web1\n"), "hosts", 1)
    expect(refused(TWO_HOSTS + "ssh:\n  port: twenty\n"), "ssh.port", 7, "integer")
    expect(refused(TWO_HOSTS + "ssh:\n  port: 70000\n"), "ssh.port", 7)
    expect(refused(TWO_HOSTS + "ssh:\n  port: true\n"), "ssh.port", 7, "true/false")
    expect(refused(TWO_HOSTS + "ssh:\n  port: yes\n"), "ssh.port", 7, "valid integer")  # YAML 1.2: "yes" is a string
    err = refused("hosts:\n  - name: web1\n    address: 10.0.0.1\n    roles: [server, boss]\n")
    expect(err, "hosts[0].roles[1]", 4)
    err = refused("hosts:\n  - name: web1\n    address: 10.0.0.1\n    roles: [server, client]\n")
    expect(err, "hosts[0].roles", 4, "either a server or a client")


# --- duplicates ---------------------------------------------------------------------------------


def test_duplicate_host_name():
    err = refused(
        """
        hosts:
          - name: web1
            address: 10.0.0.1
          - address: 10.0.0.2
            name: web1
        """
    )
    expect(err, "hosts[1].name", 5, "duplicate host name 'web1'", "hosts[0]")


def test_duplicate_host_address():
    err = refused(
        """
        hosts:
          - name: web1
            address: 10.0.0.1
          - name: web2
            address: 10.0.0.1
        """
    )
    expect(err, "hosts[1].address", 5, "duplicate host address '10.0.0.1'", "hosts[0]")


@pytest.mark.parametrize(
    ("first", "second"),
    [("10.0.0.1", "10.0.0.1"), ("2001:db8::1", "2001:DB8:0::1"), ("web.example.com", "WEB.example.com.")],
)
def test_duplicate_address_in_another_spelling(first, second):
    err = refused(f"hosts:\n  - {{name: a, address: '{first}'}}\n  - {{name: b, address: '{second}'}}\n")
    expect(err, "hosts[1].address", 3, "duplicate host address")


def test_same_address_on_different_ports_is_allowed():
    cluster = load_text(
        "hosts:\n  - {name: a, address: 127.0.0.1, port: 2201}\n  - {name: b, address: 127.0.0.1, port: 2202}\n",
        FILE,
    )
    assert [h.port for h in cluster.hosts] == [2201, 2202]


def test_duplicate_service_name():
    err = refused(TWO_HOSTS + "services:\n  - {name: api, image: nginx}\n  - {name: api, image: redis}\n")
    expect(err, "services[1].name", 8, "duplicate service name")


SERVICE_ERRORS = [
    ("  - {name: Web, image: nginx}\n", "services[0].name", 7, "DNS label"),
    ("  - {name: web}\n", "services[0]", 7, "exactly one of app"),
    ("  - {name: web, image: nginx, app: ./web}\n", "services[0]", 7, "exactly one of app"),
    ("  - {name: web, image: 'nginx; reboot'}\n", "services[0].image", 7, "invalid image reference"),
    ("  - {name: web, image: nginx, replicas: 3, port: 80}\n", "services[0].replicas", 7, "3 replicas need 3 hosts (one per host: a fixed port)", "this file has 2"),
    ("  - {name: web, image: nginx, constraints: {zone: a}}\n", "services[0].constraints", 7, "1 replica needs a host, but this file has 0 matching its constraints"),
    ("  - {name: web, image: nginx, port: 80, ports: any}\n", "services[0].ports", 7, "'fixed' or 'dynamic'"),
    ("  - {name: web, image: nginx}\nplacement: {port_range: 3000-2000}\n", "placement.port_range", 8, "port range 3000-2000 is empty"),
    ("  - {name: web, image: nginx}\nplacement: {port_range: 3000}\n", "placement.port_range", 8, "LOW-HIGH"),
    ("  - {name: web, image: nginx, spread: zone}\n", "services[0].spread", 7, "no host has the label 'zone'"),
    ("  - {name: web, image: nginx, env: {'A-B': x}}\n", "services[0].env", 7, "environment variable name"),
    ("  - {name: web, image: nginx, check: {interval: soon}}\n", "services[0].check.interval", 7, "invalid duration"),
    ("  - {name: web, image: nginx, check: {http: health}}\n", "services[0].check.http", 7, "starting with '/'"),
    ("  - {name: web, app: ./nowhere}\n", "services[0].app", 7, "app folder not found"),
]


@pytest.mark.parametrize("case", SERVICE_ERRORS, ids=[e[1] + ":" + e[3] for e in SERVICE_ERRORS])
def test_service_errors_name_the_key_and_line(case):
    entry, key, line, *fragments = case
    err = refused(TWO_HOSTS + "services:\n" + entry)
    expect(err, key, line, *fragments)


LABELLED = """
hosts:
  - {name: a1, address: 10.0.0.1, labels: {provider: aws}}
  - {name: h1, address: 10.0.0.2, labels: {provider: hetzner}, capacity: {cpu: 8, memory: 16G}}
"""
RESOURCE_ERRORS = [
    ("resources: {cpu: 0}", "services[0].resources.cpu", "more than 0"),
    ("resources: {cpu: 0.0001}", "services[0].resources.cpu", "at most 3 decimals"),
    ("resources: {cpu: true}", "services[0].resources.cpu", "not true/false"),
    ("resources: {memory: 64}", "services[0].resources.memory", "a size needs a unit"),
    ("resources: {memory: 64 MB}", "services[0].resources.memory", "invalid size '64 MB'"),
    ("resources: {memory: 1M}", "services[0].resources.memory", "at least 6M"),
    ("resources: {disk: 1G}", "services[0].resources.disk", "unknown key"),
    ("strategy: pack", "services[0].strategy", "'spread' or 'binpack'"),
    ("spread: {label: provider, targets: {aws: 60%, hetzner: 50%}}", "services[0].spread.targets", "add up to 110%, more than 100%"),
    ("spread: {label: provider, targets: {aws: 0.5}}", "services[0].spread.targets", "aws: a target is a percentage"),
    ("spread: {label: provider, targets: {aws: 101%}}", "services[0].spread.targets", "from 0% to 100%"),
    ("spread: {label: 'a b'}", "services[0].spread.label", "invalid label key"),
    ("spread: {label: provider, targets: {gcp: 50%}}", "services[0].spread.targets.gcp", "no host has provider: gcp"),
    ("spread: {targets: {aws: 50%}}", "services[0].spread.label", "required key is missing"),
]


@pytest.mark.parametrize("case", RESOURCE_ERRORS, ids=[e[1] + ":" + e[2] for e in RESOURCE_ERRORS])
def test_resource_and_spread_errors_name_the_key_and_line(case):
    key_value, key, fragment = case
    err = refused(LABELLED + f"services:\n  - name: web\n    image: nginx\n    {key_value}\n")
    expect(err, key, 7, fragment)


def test_host_capacity_and_reserve_errors():
    err = refused(TWO_HOSTS.replace("10.0.0.2", "10.0.0.2\n    capacity: {memory: 2X}"))
    expect(err, "hosts[1].capacity.memory", 6, "invalid size")
    err = refused(TWO_HOSTS + "placement:\n  reserve: {cpu: -1}\n")
    expect(err, "placement.reserve.cpu", 7, "between 0 and 4096")


def test_resources_targets_capacity_and_reserve_load_and_normalize():
    text = LABELLED + (
        "placement: {reserve: {cpu: 0.25, memory: 256M}}\nservices:\n"
        "  - {name: web, image: nginx, resources: {cpu: 0.25, memory: 1.5G}, strategy: binpack,"
        " spread: {label: provider, targets: {aws: 33.3%}}}\n"
        "  - {name: api, image: nginx, spread: provider}\n"
    )
    cluster = load_text(text, FILE)
    web, api = cluster.spec.services
    assert (web.resources.cpu, web.resources.memory, web.strategy) == (0.25, 1536 << 20, "binpack")
    assert web.spread.shares() == {"aws": Fraction(333, 10)} and api.spread.label == "provider" and not api.spread.targets
    assert cluster.spec.hosts[1].capacity.memory == 16 << 30 and cluster.spec.placement.reserve.memory == 256 << 20
    normal = cluster.normalized()
    assert normal["services"][0]["resources"] == {"cpu": 0.25, "memory": "1536M"}
    assert normal["placement"] == {"reserve": {"cpu": 0.25, "memory": "256M"}, "port_range": "20000-32000"}
    assert load_text(yaml.safe_dump(normal), FILE).spec == cluster.spec.model_copy(update={"name": "cluster"})


def test_app_needs_a_filebox():
    err = refused(TWO_HOSTS + "filebox: {binaries: []}\nconsul: {enabled: false}\nservices:\n  - {name: web, app: .}\n")
    expect(err, "services[0].app", 9, "filebox.binaries is empty")


# --- shell metacharacters -----------------------------------------------------------------------

BAD_VALUES = [
    "web;reboot",
    "$(reboot)",
    "`reboot`",
    "web 1",
    "web\\n",  # a trailing newline: "$" in the patterns used to let this through
    "web\\nrm -rf /",
    "web|cat",
    "web&",
    "web>x",
    "-oProxyCommand=x",
    "",
]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_name_with_shell_syntax_is_refused(value):
    err = refused(f'hosts:\n  - address: 10.0.0.1\n    name: "{value}"\n')
    expect(err, "hosts[0].name", 3, "invalid name")


@pytest.mark.parametrize("value", [*BAD_VALUES, "fe80::1%;reboot", "fe80::1%$(id)", "fe80::1%eth0 x"])
def test_address_with_shell_syntax_is_refused(value):
    err = refused(f'hosts:\n  - name: web1\n    address: "{value}"\n')
    expect(err, "hosts[0].address", 3, "not an IP address or DNS name")


@pytest.mark.parametrize("value", ["fe80::1%$(id)", "10.0.0.1\\n", "10.0.0.1;x"])
def test_cluster_address_with_shell_syntax_is_refused(value):
    err = refused(f'hosts:\n  - name: web1\n    address: 10.0.0.1\n    cluster_address: "{value}"\n')
    expect(err, "hosts[0].cluster_address", 4, "must be an IP address")


@pytest.mark.parametrize("value", ["bob;x", "$(id)", "bob\\n", "bo b"])
def test_user_with_shell_syntax_is_refused(value):
    err = refused(f'hosts:\n  - name: web1\n    address: 10.0.0.1\n    user: "{value}"\n')
    expect(err, "hosts[0].user", 4, "invalid user name")


def test_label_with_shell_syntax_is_refused():
    err = refused('hosts:\n  - name: web1\n    address: 10.0.0.1\n    labels: {zone: "a;b"}\n')
    expect(err, "hosts[0].labels", 4, "invalid value for label")


def test_scoped_ipv6_address_with_plain_zone_is_accepted():
    cluster = load_text("hosts:\n  - {name: web1, address: 'fe80::1%eth0'}\n", FILE)
    assert cluster.hosts[0].address == "fe80::1%eth0"


# --- identity files -----------------------------------------------------------------------------


def test_missing_identity_file_relative_to_the_cluster_file(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "present").write_text("key")
    file = str(tmp_path / "c.yaml")
    ok = load_text("hosts:\n  - {name: web1, address: 10.0.0.1, identity_file: keys/present}\n", file)
    assert ok.resolve_path(ok.hosts[0].identity_file) == tmp_path / "keys" / "present"

    err = refused(
        """
        hosts:
          - name: web1
            address: 10.0.0.1
            identity_file: keys/present
          - name: web2
            address: 10.0.0.2
            identity_file: keys/absent
        """,
        file,
    )
    assert (err.key_path, err.line) == ("hosts[1].identity_file", 7)
    assert err.message == "identity file not found: keys/absent"


def test_identity_file_is_not_looked_up_in_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "k").write_text("key")
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    err = refused("hosts:\n  - {name: web1, address: 10.0.0.1, identity_file: k}\n", str(other / "c.yaml"))
    assert err.key_path == "hosts[0].identity_file"


def test_missing_identity_file_in_ssh_and_bastion(tmp_path):
    file = str(tmp_path / "c.yaml")
    err = refused("ssh:\n  identity_file: nokey\nhosts:\n  - {name: web1, address: 10.0.0.1}\n", file)
    assert (err.key_path, err.line) == ("ssh.identity_file", 2)
    err = refused(
        """
        hosts:
          - name: web1
            address: 10.0.0.1
            bastion:
              address: jump.example.com
              identity_file: nokey
        """,
        file,
    )
    assert (err.key_path, err.line) == ("hosts[0].bastion.identity_file", 6)


@pytest.mark.parametrize("value", ["~\\0x/key", "a\\nb", "x" * 5000])
def test_unusable_identity_file_names_are_config_errors(tmp_path, value):
    err = refused(f'hosts:\n  - name: web1\n    address: 10.0.0.1\n    identity_file: "{value}"\n', str(tmp_path / "c"))
    assert (err.key_path, err.line) == ("hosts[0].identity_file", 4)
    assert err.message.startswith("identity file not found")


# --- bastions -----------------------------------------------------------------------------------


def test_bastion_shorthand_user_host_port():
    cluster = load_text("hosts:\n  - {name: web1, address: 10.0.0.1, bastion: 'jump@gw.example.com:2222'}\n", FILE)
    assert cluster.hosts[0].bastion == Bastion(address="gw.example.com", user="jump", port=2222)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gw.example.com:2200", Bastion(address="gw.example.com", port=2200)),
        ("ops@10.9.9.9", Bastion(address="10.9.9.9", user="ops")),
        ("ops@2001:db8::1", Bastion(address="2001:db8::1", user="ops")),
    ],
)
def test_bastion_shorthand_partial_forms(value, expected):
    cluster = load_text(f"hosts:\n  - {{name: web1, address: 10.0.0.1, bastion: '{value}'}}\n", FILE)
    assert cluster.hosts[0].bastion == expected


def test_bastion_mapping(tmp_path):
    (tmp_path / "jump.pem").write_text("key")
    cluster = load_text(
        _text(
            """
            hosts:
              - name: web1
                address: 10.0.0.1
                bastion:
                  address: jump.example.com
                  user: ec2-user
                  port: 2022
                  identity_file: jump.pem
            """
        ),
        str(tmp_path / "c.yaml"),
    )
    assert cluster.hosts[0].bastion == Bastion(
        address="jump.example.com", user="ec2-user", port=2022, identity_file="jump.pem"
    )


def test_bastion_naming_another_host():
    cluster = load_text(TWO_HOSTS.replace("address: 10.0.0.2", "address: 10.0.0.2\n    bastion: web1"), FILE)
    assert cluster.hosts[1].bastion == "web1"


def test_bastion_naming_an_unknown_host_is_refused():
    err = refused(TWO_HOSTS.replace("address: 10.0.0.2", "address: 10.0.0.2\n    bastion: web9"))
    expect(err, "hosts[1].bastion", 6, "'web9' is not a host in this file")


def test_host_cannot_be_its_own_bastion():
    err = refused(TWO_HOSTS.replace("address: 10.0.0.2", "address: 10.0.0.2\n    bastion: web2"))
    expect(err, "hosts[1].bastion", 6, "its own bastion")


@pytest.mark.parametrize(
    ("value", "key_path", "fragment"),
    [
        ("'jump@gw.example.com:ssh'", "hosts[0].bastion", "invalid bastion port"),
        ("'jump@gw.example.com:99999'", "hosts[0].bastion.port", "65535"),
        ("'jump@gw;reboot:22'", "hosts[0].bastion.address", "not an IP address or DNS name"),
        ("'$(id)@gw.example.com'", "hosts[0].bastion.user", "invalid user name"),
        ("{user: ops}", "hosts[0].bastion.address", "required key is missing"),
        ("[gw.example.com]", "hosts[0].bastion", "valid dictionary"),
        ("22", "hosts[0].bastion", "valid dictionary"),
    ],
)
def test_bad_bastions(value, key_path, fragment):
    err = refused(f"hosts:\n  - name: web1\n    address: 10.0.0.1\n    bastion: {value}\n")
    expect(err, key_path, 4, fragment)


# --- a valid full file --------------------------------------------------------------------------

FULL = """
name: prod
ssh:
  user: ops
  port: 2222
  identity_file: keys/id_ed25519
  config_file: ""
  connect_timeout: 5
  command_timeout: 120
  known_hosts: state/known_hosts
docker:
  install: script
  start_timeout: 30
hosts:
  - name: srv1
    address: 10.0.0.1
    cluster_address: 192.168.10.1
    roles: [server]
    labels: {zone: a, "example.com/disk": ssd}
  - name: srv2
    address: srv2.example.com
    user: admin
    port: 22
    identity_file: keys/id_ed25519
    bastion: srv1
  - name: edge
    address: "2001:db8::10"
    roles: client
    bastion: jump@gw.example.com:2200
network:
  driver: routed
  name: prodnet
  subnet: 10.42.0.0/16
consul:
  enabled: false
  datacenter: eu-1
filebox:
  binaries: [jq, curl]
  files: [/etc/motd]
services:
  - name: api
    image: registry.example.com/api:1.2
    replicas: 3
    port: 8080
"""


def test_full_file_round_trips_into_the_model(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id_ed25519").write_text("key")
    path = tmp_path / "prod.yaml"
    path.write_text(_text(FULL))
    cluster = load(path)
    assert isinstance(cluster, Cluster)
    spec = cluster.spec
    assert cluster.name == "prod" and cluster.path == path
    assert (spec.ssh.user, spec.ssh.port, spec.ssh.config_file, spec.ssh.connect_timeout) == ("ops", 2222, "", 5.0)
    assert cluster.resolve_path(spec.ssh.identity_file) == tmp_path / "keys" / "id_ed25519"
    assert (spec.docker.install, spec.docker.start_timeout) == ("script", 30.0)
    assert [h.name for h in cluster.hosts] == ["srv1", "srv2", "edge"]
    srv1, srv2, edge = cluster.hosts
    assert srv1.cluster_address == "192.168.10.1" and srv1.labels == {"zone": "a", "example.com/disk": "ssd"}
    assert srv1.is_server and not edge.is_server and edge.roles == ("client",)
    assert (srv2.user, srv2.port, srv2.bastion) == ("admin", 22, "srv1")
    assert edge.address == "2001:db8::10" and edge.bastion == Bastion(address="gw.example.com", user="jump", port=2200)
    assert (spec.network.driver, spec.network.name, spec.network.subnet) == ("routed", "prodnet", "10.42.0.0/16")
    assert (spec.consul.enabled, spec.consul.datacenter) == (False, "eu-1")
    assert spec.filebox.binaries == ("jq", "curl")
    assert spec.services[0].replicas == 3 and spec.services[0].port == 8080
    assert spec.host("srv2") is srv2
    # The model is the whole truth: dumping it and loading the dump gives the same model.
    assert type(spec).model_validate(spec.model_dump()) == spec


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "staging.yaml"
    path.write_text(TWO_HOSTS)
    cluster = load(path)
    # No roles given: clusterctl chooses the servers (clusterctl/schedule/servers.py).
    assert cluster.name == "staging" and cluster.hosts[0].roles is None


def test_bad_subnet_in_network_section():
    err = refused(TWO_HOSTS + "network:\n  subnet: 10.42.0.1/16\n")
    expect(err, "network.subnet", 7, "invalid subnet")


@pytest.mark.parametrize(
    "body, key, line, message",
    [
        ("  subnet: fd00::/64\n", "network.subnet", 7, "must be an IPv4 network"),
        ("  driver: vxlan\n", "network.driver", 7, "'overlay', 'routed', 'weave' or 'wireguard'"),
        ("  driver: routed\n  host_prefix: 31\n", "network.host_prefix", 8, "less than or equal to 30"),
        ("  driver: wireguard\n  host_prefix: true\n", "network.host_prefix", 8, "not true/false"),
        ("  driver: routed\n  subnet: 10.42.0.0/24\n  host_prefix: 16\n", "network", 6, "host_prefix /16 is larger than the subnet"),
        ("  driver: wireguard\n  subnet: 10.42.0.0/24\n  host_prefix: 16\n", "network", 6, "host_prefix /16 is larger than the subnet"),
        ("  driver: weave\n  subnet: 10.42.0.0/30\n", "network", 6, "too small"),
        ("  default_addr_pool: [10.250.0.1/16]\n", "network.default_addr_pool", 7, "invalid address pool"),
        ("  default_addr_pool_mask_length: 24\n", "network", 6, "needs default_addr_pool"),
        ("  driver: weave\n  weave_version: latest\n", "network.weave_version", 8, "use X.Y.Z"),
        ("  driver: weave\n  weave_password_env: 'A B'\n", "network.weave_password_env", 8, "environment variable"),
        ("  driver: weave\n  weave_password: hunter2\n", "network.weave_password", 8, "unknown key"),
        # A key of another driver's section is refused, naming the driver it would need.
        ("  host_prefix: 26\n", "network.host_prefix", 7, "unknown key (a key of driver routed, wireguard)"),
        ("  driver: wireguard\n  listen_port: 0\n", "network.listen_port", 8, "greater than or equal to 1"),
        ("  driver: wireguard\n  mtu: 100\n", "network.mtu", 8, "greater than or equal to 1280"),
        ("  driver: overlay\n  encrypted: maybe\n", "network.encrypted", 8, "bool"),
    ],
)
def test_bad_network_settings(body, key, line, message):
    expect(refused(TWO_HOSTS + "network:\n" + body), key, line, message)


def test_network_settings_load():
    text = TWO_HOSTS + (
        "network:\n  driver: routed\n  subnet: 10.42.0.0/16\n  host_prefix: 26\n"
    )
    net = load_text(_text(text), FILE).spec.network
    assert (net.driver, net.host_prefix) == ("routed", 26)
    net = load_text(_text(TWO_HOSTS + "network:\n  default_addr_pool: [10.250.0.0/16]\n  default_addr_pool_mask_length: 26\n"
                                            "  encrypted: true\n"), FILE).spec.network  # fmt: skip
    assert (net.driver, net.default_addr_pool, net.default_addr_pool_mask_length, net.encrypted) == (
        "overlay", ("10.250.0.0/16",), 26, True)  # fmt: skip
    text = TWO_HOSTS + "network:\n  driver: weave\n  weave_version: 2.8.1\n  expose: false\n  weave_password_env: WEAVE_PW\n"
    net = load_text(_text(text), FILE).spec.network
    assert (net.weave_version, net.expose, net.weave_password_env) == ("2.8.1", False, "WEAVE_PW")
    text = TWO_HOSTS + "network:\n  driver: wireguard\n  listen_port: 51999\n  mtu: 1380\n  host_prefix: 25\n"
    net = load_text(_text(text), FILE).spec.network
    assert (net.listen_port, net.mtu, net.host_prefix, net.handshake_timeout) == (51999, 1380, 25, 25.0)


def test_example_inventories_load():
    root = Path(__file__).resolve().parents[2] / "inventory"
    for path in sorted(root.glob("*.yaml")):
        try:
            load(path)
        except ConfigError as exc:  # example files may name keys that are not on this machine
            assert "identity file not found" in exc.message, str(exc)


def test_bastion_bare_ip_address_is_an_address_not_a_host_name():
    cluster = load_text("hosts:\n  - {name: web1, address: 10.0.0.1, bastion: 10.9.9.9}\n", FILE)
    assert cluster.hosts[0].bastion == Bastion(address="10.9.9.9")


def test_bastion_bare_dns_name_must_be_a_host():
    err = refused("hosts:\n  - {name: web1, address: 10.0.0.1, bastion: gw.example.com}\n")
    expect(err, "hosts[0].bastion", 2, "not a host in this file", "user@address")


@pytest.mark.parametrize(
    ("extra", "key_path", "fragment"),
    [
        ("docker: {start_timeout: .inf}\n", "docker.start_timeout", "less than or equal to 3600"),
        ("ssh: {command_timeout: 1e9}\n", "ssh.command_timeout", "less than or equal to 86400"),
        ("docker: {install: script, install_script_sha256: abc}\n", "docker.install_script_sha256", "should match"),
        ("services:\n  - {name: web, image: x, port: 80, check: {deadline: 999999m}}\n", "services[0].check.deadline", "at most 24h"),
    ],
)
def test_every_duration_and_timeout_is_bounded(extra, key_path, fragment):
    """`.inf` passed validation and then raised OverflowError deep in a plan."""
    err = refused(TWO_HOSTS + extra)
    assert err.key_path == key_path and fragment in err.message, str(err)


# --- YAML 1.2: no YAML 1.1 surprises ------------------------------------------------------------


def test_a_leading_zero_port_is_decimal():
    """YAML 1.1 read 0022 as octal: port 18."""
    cluster = load_text("ssh: {port: 0022}\nhosts:\n  - {name: web1, address: 10.0.0.1, port: 0022}\n", FILE)
    assert (cluster.spec.ssh.port, cluster.hosts[0].port) == (22, 22)


@pytest.mark.parametrize("word", ["no", "yes", "on", "off", "y", "n", "NO"])
def test_yes_no_on_off_are_strings(word):
    cluster = load_text(f"hosts:\n  - {{name: web1, address: 10.0.0.1, labels: {{country: {word}}}}}\n", FILE)
    assert cluster.hosts[0].labels == {"country": word}


def test_a_key_named_on_is_reported_as_on_at_its_line():
    err = refused(
        """
        hosts:
          - name: web1
            address: 10.0.0.1
            on: true
        """
    )
    expect(err, "hosts[0].on", 4, "unknown key")


@pytest.mark.parametrize("value", ["2020-01-01", "2020-13-45", "2001-12-14t21:59:43.10-05:00"])
def test_dates_are_strings(value):
    cluster = load_text(f"hosts:\n  - {{name: web1, address: 10.0.0.1, labels: {{since: '{value}'}}}}\n", FILE)
    assert cluster.hosts[0].labels["since"] == value
    cluster = load_text(f"hosts:\n  - {{name: web1, address: 10.0.0.1, labels: {{since: {value}}}}}\n", FILE)
    assert cluster.hosts[0].labels["since"] == value


@pytest.mark.parametrize("name", ["09", "1e3", "0o7", "1_000", "0x_", "1.5e3", "2020-01-01", "no", "on", "null1"])
def test_what_pyyaml_writes_reads_back(name):
    """The lab and the Vagrant importer write with PyYAML (YAML 1.1): what it leaves unquoted
    because 1.1 reads it as a string must read back as that string."""
    text = yaml.safe_dump({"hosts": [{"name": name, "address": "10.0.0.1"}]})
    assert load_text(text, FILE).hosts[0].name == name


def test_a_yaml_1_1_directive_does_not_bring_back_octal():
    cluster = load_text("%YAML 1.1\n---\nhosts:\n  - {name: web1, address: 10.0.0.1, port: 0022, labels: {a: no}}\n", FILE)
    assert cluster.hosts[0].port == 22 and cluster.hosts[0].labels == {"a": "no"}


@pytest.mark.parametrize(
    ("text", "key_path", "line"),
    [
        ("hosts:\n  - {name: web1, address: 10.0.0.1, labels: {1: a}}\n", "hosts[0].labels.1", 2),
        ("true: 1\nhosts:\n  - {name: web1, address: 10.0.0.1}\n", "true", 1),
        ("hosts:\n  - name: web1\n    address: 10.0.0.1\n    [a]: 1\n", "hosts[0]", 4),
    ],
)
def test_keys_must_be_strings_at_any_depth(text, key_path, line):
    err = refused(text)
    expect(err, key_path, line, "must be a")


# --- every error at once ------------------------------------------------------------------------


def test_every_schema_error_is_reported_at_once_in_file_order():
    errors = refused_all(
        """
        ssh:
          port: 70000
        hosts:
          - name: web1
            address: "10.0.0.1;x"
            colour: blue
          - name: web 2
            address: 10.0.0.2
        network:
          driver: vxlan
        """
    )
    assert [(e.key_path, e.line) for e in errors] == [
        ("ssh.port", 2),
        ("hosts[0].address", 5),
        ("hosts[0].colour", 6),
        ("hosts[1].name", 7),
        ("network.driver", 10),
    ]


def test_every_cross_check_is_reported_at_once():
    errors = refused_all(
        """
        hosts:
          - {name: web1, address: 10.0.0.1}
          - {name: web1, address: 10.0.0.2}
          - {name: web3, address: 10.0.0.1, bastion: web9}
        services:
          - {name: api, image: nginx, replicas: 9, port: 80}
        """
    )
    assert [(e.key_path, e.line) for e in errors] == [
        ("hosts[1].name", 3),
        ("hosts[2].address", 4),
        ("hosts[2].bastion", 4),
        ("services[0].replicas", 6),
    ]


def test_every_duplicate_key_is_reported_at_once():
    errors = refused_all("hosts:\n  - name: a\n    name: b\n    address: 10.0.0.1\n    address: 10.0.0.2\nhosts: []\n")
    assert [(e.key_path, e.line, e.message) for e in errors] == [
        ("hosts[0].name", 3, "duplicate key"),
        ("hosts[0].address", 5, "duplicate key"),
        ("hosts", 6, "duplicate key"),
    ]


def test_every_missing_file_is_reported_at_once(tmp_path):
    errors = refused_all(
        """
        ssh: {identity_file: nokey}
        hosts:
          - {name: web1, address: 10.0.0.1, identity_file: nokey2}
        services:
          - {name: api, app: ./nowhere}
        """,
        str(tmp_path / "c.yaml"),
    )
    assert [(e.key_path, e.line) for e in errors] == [("ssh.identity_file", 1), ("hosts[0].identity_file", 3), ("services[0].app", 5)]


def test_one_error_is_a_plain_config_error():
    err = refused(TWO_HOSTS + "colour: blue\n")
    assert type(err) is ConfigError and err.errors == (err,)


# --- size ---------------------------------------------------------------------------------------


def test_a_file_over_the_cap_is_one_line(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(TWO_HOSTS + "# " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: larger than {MAX_FILE_BYTES} bytes, the limit for a clusterctl YAML file"
    with pytest.raises(ConfigError, match="the limit for a clusterctl YAML file"):
        load_text(path.read_text(), str(path))


def test_an_endless_file_is_read_only_up_to_the_cap():
    with pytest.raises(ConfigError, match="the limit for a clusterctl YAML file"):
        load("/dev/zero")


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("'/etc/motd:/'", "DEST must be a path below /, not / itself"),
        ("/", "DEST must be a path below /, not / itself"),
        ("'x:/a/..'", "DEST must be a path below /, not / itself"),
        ("'x:etc/y'", "DEST must be an absolute path"),
        ("'x:/opt/files/y'", "DEST must be outside /opt/files"),
        ("'x:'", "want SRC or SRC:DEST"),
    ],
)
def test_a_filebox_file_whose_dest_cannot_be_is_refused_on_its_line(entry, fragment):
    err = refused(TWO_HOSTS + f"filebox:\n  files:\n    - /etc/motd\n    - {entry}\n")
    expect(err, "filebox.files[1]", 9, "filebox file", fragment)


def test_a_filebox_file_with_a_relative_src_is_placed_later():
    spec = load_text(TWO_HOSTS + "filebox:\n  files: [conf/app.json, 'conf/a.json:/etc/a.json']\n", FILE).spec
    assert spec.filebox.files == ("conf/app.json", "conf/a.json:/etc/a.json")


def test_the_schema_says_what_the_file_holds_for_sizes_and_spread():
    from clusterctl.config.models import ClusterFile

    defs = ClusterFile.model_json_schema()["$defs"]
    assert defs["Resources"]["properties"]["memory"]["anyOf"][0]["type"] == "string"
    assert {"type": "string"} in defs["Service"]["properties"]["spread"]["anyOf"]
