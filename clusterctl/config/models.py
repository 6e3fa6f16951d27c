"""The cluster file as typed models. Unknown keys are errors everywhere (extra="forbid").

Names and addresses are checked against strict patterns: a value that could carry shell syntax
is refused here, long before any command is built (builders quote with shlex as well).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from typing import Annotated, Literal

from fractions import Fraction

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_serializer,
    field_validator,
    model_validator,
)

# Patterns end in \Z, not $: "$" also matches before a trailing newline ("web\n" would pass).
NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})\Z")
# A DNS name: labels of letters, digits and inner hyphens, dot separated.
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\Z")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,62})\Z")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9._:/@+-]{0,128}\Z")
# An IPv6 zone (fe80::1%eth0): ipaddress accepts any text after "%", so check it here.
SCOPE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")


def check_ip(value: str) -> str:
    """An IPv4/IPv6 address in normal form; an IPv6 zone must be a plain interface name."""
    ip = ipaddress.ip_address(value)  # ValueError if not an address
    scope = getattr(ip, "scope_id", None)
    if scope is not None and not SCOPE_RE.match(scope):
        raise ValueError(f"invalid IPv6 zone in {value!r}")
    return str(ip)


def check_address(value: str) -> str:
    """An IPv4/IPv6 address or a DNS name; anything else (spaces, ;, $, `) is refused."""
    try:
        return check_ip(value)
    except ValueError:
        pass
    if not HOSTNAME_RE.match(value):
        raise ValueError(f"not an IP address or DNS name: {value!r}")
    return value


def check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"invalid name {value!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def check_user(value: str) -> str:
    if not USER_RE.match(value):
        raise ValueError(f"invalid user name {value!r}")
    return value


Name = Annotated[str, AfterValidator(check_name)]
Address = Annotated[str, AfterValidator(check_address)]
User = Annotated[str, AfterValidator(check_user)]
def reject_bool(value: object) -> object:
    # pydantic's lax int takes true/false as 1/0; "port: yes" must not become port 1.
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


Port = Annotated[int, BeforeValidator(reject_bool), Field(ge=1, le=65535)]

# Sizes are binary multiples, as Docker reads them (64M = 64 MiB); B for a plain byte count.
SIZE_RE = re.compile(r"^([0-9]{1,12}(?:\.[0-9]{1,6})?)([BKMGT])\Z", re.IGNORECASE)
SIZE_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: object) -> object:
    """'64M' -> 67108864; a bare number is refused (64 bytes or 64 MiB? the unit says)."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        raise ValueError(f"a size needs a unit: {value}M or {value}G, say (B, K, M, G, T)")
    if not isinstance(value, str):
        return value
    match = SIZE_RE.match(value.strip())
    if not match:
        raise ValueError(f"invalid size {value!r}: a number and a unit, e.g. 64M or 1.5G (B, K, M, G, T)")
    return int(Fraction(match[1]) * SIZE_UNITS[match[2].upper()])


def format_size(size: int) -> str:
    """67108864 -> '64M': the largest unit that says it exactly (loads back to the same size)."""
    for unit in ("T", "G", "M", "K"):
        if size and size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return f"{size}B"


def check_cores(value: float) -> float:
    # Placement counts millicores in integers, so that "never overcommits" is exact.
    if not 0 <= value <= 4096:
        raise ValueError(f"cpu must be between 0 and 4096 cores, got {value:g}")
    if abs(value * 1000 - round(value * 1000)) > 1e-6:
        raise ValueError(f"cpu takes at most 3 decimals (millicores), got {value!r}")
    return value


# Memory in bytes, written back as a size; CPU in cores (0.25 is a quarter of one).
# (json_schema_input_type: the schema, for editors, says what the file holds: a string.)
Size = Annotated[
    int,
    BeforeValidator(parse_size, json_schema_input_type=Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?[BKMGTbkmgt]$", examples=["64M", "1.5G"])]),
    PlainSerializer(format_size, return_type=str),
]
Cores = Annotated[float, BeforeValidator(reject_bool), AfterValidator(check_cores)]
# Docker refuses a memory limit under 6 MiB.
MIN_MEMORY = 6 << 20


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SSHDefaults(Strict):
    """Defaults for every host; each host may override user, port and identity_file."""

    user: User | None = None
    port: Port | None = None
    identity_file: str | None = None
    # ~/.ssh/config is read by default; set to "" to ignore it.
    config_file: str = "~/.ssh/config"
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    # Per-host time limit for one phase's commands.
    command_timeout: float = Field(default=600.0, gt=0, le=86400)
    # known_hosts kept for this cluster; default: in the cluster's state directory.
    known_hosts: str | None = None


class Bastion(Strict):
    """A jump host: [user@]address[:port], or the name of another host in this file."""

    address: Address
    user: User | None = None
    port: Port | None = None
    identity_file: str | None = None


def parse_bastion(value: object) -> object:
    """Accept 'user@host:port' shorthand as well as the mapping form."""
    if not isinstance(value, str):
        return value
    user, _, rest = value.rpartition("@")
    address, port = rest, None
    if rest.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
        address, _, port_text = rest.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"invalid bastion port in {value!r}")
        port = int(port_text)
    return {"address": address, "user": user or None, "port": port}


Role = Literal["server", "client"]


class Resources(Strict):
    """An amount of CPU (cores) and memory: what a replica gets (`docker run --cpus --memory`),
    or what a host has (its `capacity`). Either may be left out."""

    cpu: Cores | None = None
    memory: Size | None = None

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("cpu must be more than 0 (or left out)")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int | None) -> int | None:
        if v is not None and v < MIN_MEMORY:
            raise ValueError(f"memory must be at least 6M (Docker's smallest limit), got {format_size(v)}")
        return v


class Reserve(Strict):
    """What each host keeps back from replicas: the system, Docker and the Consul agent."""

    cpu: Cores = 0.5
    memory: Size = 512 << 20


def parse_port_range(value: object) -> object:
    """'20000-32000' -> (20000, 32000)."""
    if isinstance(value, str):
        low, sep, high = value.partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise ValueError(f"invalid port range {value!r}: LOW-HIGH, e.g. 20000-32000")
        return (int(low), int(high))
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"invalid port range {value!r}: LOW-HIGH, e.g. 20000-32000")
    return value


class PlacementSection(Strict):
    reserve: Reserve = Field(default_factory=Reserve)
    # Host ports for the replicas of `ports: dynamic` services (below Linux's ephemeral range,
    # 32768-60999, as Nomad's 20000-32000 is).
    port_range: Annotated[tuple[Port, Port], BeforeValidator(parse_port_range, json_schema_input_type=str)] = (20000, 32000)

    @field_validator("port_range")
    @classmethod
    def _port_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] > v[1]:
            raise ValueError(f"port range {v[0]}-{v[1]} is empty: LOW-HIGH with LOW <= HIGH")
        return v

    @field_serializer("port_range")
    def _port_range_text(self, v: tuple[int, int]) -> str:
        return f"{v[0]}-{v[1]}"


class Host(Strict):
    name: Name
    # Where SSH connects (may be a public address or a forwarded port).
    address: Address
    # Where the cluster talks (private network). Default: found from the host's facts.
    cluster_address: str | None = None
    # network.driver wireguard: where the other hosts send this host's tunnel traffic, ADDRESS or
    # ADDRESS:PORT (e.g. a NAT's forwarded port). Default: cluster_address from hosts of the same
    # provider label, address from the others; port network.listen_port.
    wireguard_endpoint: str | None = None
    user: User | None = None
    port: Port | None = None
    identity_file: str | None = None
    bastion: Annotated[Bastion | str | None, Field(union_mode="left_to_right")] = None
    # None: clusterctl chooses (1 server for 1-2 hosts, 3 for 3-6, 5 for 7 or more, spread over
    # consul.servers_spread; clusterctl/schedule/servers.py). Given roles always win.
    roles: tuple[Role, ...] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    # What the host has for replicas before placement.reserve (default: what Docker reports,
    # NCPU and MemTotal; `clusterctl place`, which asks no host, assumes 2 cpu and 4G).
    capacity: Resources | None = None

    @field_validator("cluster_address")
    @classmethod
    def _cluster_address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return check_ip(v)
        except ValueError:
            raise ValueError(f"cluster_address must be an IP address, got {v!r}") from None

    @field_validator("wireguard_endpoint")
    @classmethod
    def _wireguard_endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            split_endpoint(v)
        return v

    @field_validator("bastion", mode="before")
    @classmethod
    def _bastion(cls, v: object) -> object:
        if isinstance(v, str) and NAME_RE.match(v) and "@" not in v and ":" not in v:
            try:
                ipaddress.ip_address(v)  # a bare IP address is an address, not a host's name
            except ValueError:
                return v  # may name another host; resolved by the cluster validator
        return parse_bastion(v)

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, v: object) -> object:
        if isinstance(v, str):
            return (v,)
        return v

    @field_validator("roles")
    @classmethod
    def _roles_unique(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("a host needs at least one role (server or client)")
        if len(set(v)) != len(v):
            raise ValueError("roles repeat")
        if "server" in v and "client" in v:
            raise ValueError("a host is either a server or a client, not both")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not LABEL_KEY_RE.match(key):
                raise ValueError(f"invalid label key {key!r}")
            if not LABEL_VALUE_RE.match(value):
                raise ValueError(f"invalid value for label {key!r}: {value!r}")
        return v

    @property
    def is_server(self) -> bool:
        """Whether the file makes this host a server. Only for hosts with roles in the file: the
        others' role is chosen with the probe's facts (clusterctl.phases.consul.server_choice)."""
        if self.roles is None:
            raise ValueError(f"{self.name} has no roles in the file: ask clusterctl.phases.consul.server_choice")
        return "server" in self.roles


class DockerSection(Strict):
    # package: the distribution's docker.io; script: the upstream get.docker.com script (needs
    # internet on the host); none: require Docker to be there already.
    install: Literal["package", "script", "none"] = "package"
    # Seconds to wait for `docker info` after starting the engine.
    start_timeout: float = Field(default=60.0, gt=0, le=3600)
    # With install: script, the sha256 the downloaded script must have (it is refused, and not
    # run, when it differs); without it the script runs unchecked, as get.docker.com suggests.
    install_script_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+\Z")


def _ipv4_network(v: str, what: str) -> str:
    try:
        net = ipaddress.ip_network(v, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid {what} {v!r}: {exc}") from None
    if net.version != 4:
        raise ValueError(f"{what} must be an IPv4 network, got {v!r}")
    return str(net)


class _NetworkBase(Strict):
    """What every driver's section has (see README "Networks")."""

    name: Name = "clusterctl"
    # The cluster CIDR. Default: the one the running cluster's network carries, else a free /16.
    subnet: str | None = None

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str | None) -> str | None:
        return v if v is None else _ipv4_network(v, "subnet")


HostPrefix = Annotated[int, BeforeValidator(reject_bool), Field(ge=1, le=30)]


def _host_prefix_fits(subnet: str | None, host_prefix: int) -> None:
    cidr = ipaddress.ip_network(subnet) if subnet else None
    if cidr is not None and host_prefix < cidr.prefixlen:
        raise ValueError(f"host_prefix /{host_prefix} is larger than the subnet {cidr}")


class OverlayNetwork(_NetworkBase):
    """Docker swarm mode and one attachable overlay network (clusterctl/network/drivers/overlay.py)."""

    driver: Literal["overlay"] = "overlay"
    # Pools swarm carves its own networks from (e.g. ingress); default Docker's.
    default_addr_pool: tuple[str, ...] = ()
    default_addr_pool_mask_length: Annotated[int, BeforeValidator(reject_bool), Field(ge=1, le=29)] | None = None
    # Swarm's IPsec between hosts (`--opt encrypted`); refused where a host's kernel lacks ESP.
    encrypted: bool = False

    @field_validator("default_addr_pool")
    @classmethod
    def _pools(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_ipv4_network(p, "address pool") for p in v)

    @model_validator(mode="after")
    def _fits(self) -> OverlayNetwork:
        if self.default_addr_pool_mask_length is not None and not self.default_addr_pool:
            raise ValueError("default_addr_pool_mask_length needs default_addr_pool")
        return self


class RoutedNetwork(_NetworkBase):
    """A bridge subnet per host, plain routes between hosts (clusterctl/network/drivers/routed.py)."""

    driver: Literal["routed"]
    # The length of each host's subnet inside the cluster CIDR.
    host_prefix: HostPrefix = 24

    @model_validator(mode="after")
    def _fits(self) -> RoutedNetwork:
        _host_prefix_fits(self.subnet, self.host_prefix)
        return self


class WeaveNetwork(_NetworkBase):
    """Weave Net routers and a weavemesh network (clusterctl/network/drivers/weave.py)."""

    driver: Literal["weave"]
    # The Weave Net release whose script and images the hosts use.
    weave_version: str = "2.8.1"
    # Give each host an address on the cluster network (`weave expose`).
    expose: bool = True
    # Traffic is encrypted with a password that never sits in this file: the name of an
    # environment variable holding it, else one generated once in the cluster's state directory.
    weave_password_env: str | None = None

    @field_validator("weave_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not VERSION_RE.match(v):
            raise ValueError(f"invalid weave version {v!r}: use X.Y.Z, e.g. 2.8.1")
        return v

    @field_validator("weave_password_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and not ENV_NAME_RE.match(v):
            raise ValueError(f"invalid environment variable name {v!r}")
        return v

    @model_validator(mode="after")
    def _fits(self) -> WeaveNetwork:
        cidr = ipaddress.ip_network(self.subnet) if self.subnet else None
        if cidr is not None and cidr.prefixlen > 29:
            raise ValueError(f"the weave driver splits the subnet in two; {cidr} is too small (use /29 or larger)")
        return self


class WireguardNetwork(_NetworkBase):
    """A full mesh of WireGuard tunnels, a bridge subnet per host (clusterctl/network/drivers/wireguard.py)."""

    driver: Literal["wireguard"]
    # The length of each host's subnet inside the cluster CIDR.
    host_prefix: HostPrefix = 24
    # The UDP port every host listens on (a host's wireguard_endpoint label may name another).
    listen_port: Port = 51820
    # Of the tunnel and the containers' interfaces: 1500 less WireGuard's 80 bytes over IPv6
    # (60 over IPv4); lower it when the hosts' own links are smaller (e.g. 1450 on some clouds).
    mtu: Annotated[int, BeforeValidator(reject_bool), Field(ge=1280, le=9000)] = 1420
    # How long `up` waits for every pair of hosts to complete a handshake.
    handshake_timeout: float = Field(default=25.0, gt=0, le=600)

    @model_validator(mode="after")
    def _fits(self) -> WireguardNetwork:
        _host_prefix_fits(self.subnet, self.host_prefix)
        return self


def split_endpoint(text: str) -> tuple[str, int | None]:
    """`ADDRESS`, `ADDRESS:PORT` or `[IPv6]:PORT` -> (address, port or None); ValueError if not."""
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?\Z", text) or re.match(r"^([A-Za-z0-9.-]+)(?::(\d{1,5}))?\Z", text)
    if m is None:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(f"want ADDRESS or ADDRESS:PORT, got {text!r}") from None
        return text, None
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1-65535")
    return m.group(1), port


NETWORK_DRIVERS = ("overlay", "routed", "weave", "wireguard")


def _network_driver(v: object) -> object:
    """The section without `driver` is the overlay's; an unknown driver is named on its own key."""
    if isinstance(v, dict):
        driver = v.get("driver", "overlay")
        if driver not in NETWORK_DRIVERS:
            shown = ", ".join(repr(d) for d in NETWORK_DRIVERS[:-1]) + f" or {NETWORK_DRIVERS[-1]!r}"
            raise SectionError(("network", "driver"), f"unknown network driver {driver!r}: use {shown}")
        return {**v, "driver": driver}
    return v


# One model a driver, told apart by `driver` (a new driver: one model here and one module in
# clusterctl/network/drivers/).
NetworkSection = Annotated[
    OverlayNetwork | RoutedNetwork | WeaveNetwork | WireguardNetwork,
    BeforeValidator(_network_driver),
    Field(discriminator="driver"),
]


class ConsulSection(Strict):
    enabled: bool = True
    datacenter: Name = "dc1"
    # Hosts without roles: servers go evenly over this host label's values (null: file order).
    servers_spread: str | None = "provider"

    @field_validator("servers_spread")
    @classmethod
    def _spread(cls, v: str | None) -> str | None:
        if v is not None and not LABEL_KEY_RE.match(v):
            raise ValueError(f"invalid label key {v!r}")
        return v


# Where the filebox keeps its content in every microcontainer (clusterctl/filebox/build.py).
FILEBOX_ROOT = "/opt/files"


def split_file_spec(text: str) -> tuple[str, str]:
    """A filebox file 'SRC' or 'SRC:DEST' -> (SRC, DEST or ''); ValueError when malformed."""
    src, sep, dest = text.partition(":")
    if not src or (sep and not dest):
        raise ValueError("want SRC or SRC:DEST")
    return src, dest


def check_file_dest(dest: str) -> str:
    """A filebox file's DEST in normal form: an absolute path below / and outside the filebox's
    own root (a link at / would stand for the microcontainer's whole root)."""
    if not dest.startswith("/"):
        raise ValueError("DEST must be an absolute path")
    if "\0" in dest:
        raise ValueError("DEST must not hold a NUL byte")
    normal = posixpath.normpath("/" + dest.lstrip("/"))
    if normal == "/":
        raise ValueError("DEST must be a path below /, not / itself")
    if normal == FILEBOX_ROOT or normal.startswith(FILEBOX_ROOT + "/"):
        raise ValueError(f"DEST must be outside {FILEBOX_ROOT}")
    return normal


def check_file_spec(text: str) -> str:
    """What can be checked of a filebox file without the disk: its form, and its DEST when the
    entry gives one or SRC is absolute (a relative SRC is placed once the file's folder is known)."""
    try:
        src, dest = split_file_spec(text)
        if dest or src.startswith("/"):
            check_file_dest(dest or src)
    except ValueError as exc:
        raise ValueError(f"filebox file {text!r}: {exc}") from None
    return text


class FileboxSection(Strict):
    # Runtime binaries shared by every microcontainer: a bare name is looked up on this
    # machine's PATH, a path is relative to the cluster file. Consul runs from here too.
    binaries: tuple[str, ...] = ("consul",)
    # Extra files: SRC or SRC:DEST.
    files: tuple[Annotated[str, AfterValidator(check_file_spec)], ...] = ()
    # Big images reach the first host that lacks them over SSH, and the other hosts fetch them
    # from it over the cluster network, so the operator's uplink carries them once. The port
    # (on the first host's cluster address, for the length of one `up`) must be open between
    # hosts. auto: the relay unless the operator reaches every host that lacks them directly
    # (no bastion, no ProxyCommand) from one of the host's own networks, where sending each
    # host its copy over SSH costs no uplink and is faster; false: always over SSH; true: always
    # the relay.
    relay: bool | Literal["auto"] = "auto"
    relay_port: Port = 7380

    def has(self, name: str) -> bool:
        return any(b.rstrip("/").rsplit("/", 1)[-1] == name for b in self.binaries)


# A service name is a DNS label: it becomes NAME.service.consul.
SERVICE_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
IMAGE_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}\Z")
DURATION_RE = re.compile(r"^[0-9]{1,6}(?:ms|s|m)\Z")


def check_service_name(value: str) -> str:
    if not SERVICE_NAME_RE.match(value):
        raise ValueError(f"invalid service name {value!r}: a DNS label (a-z, 0-9, inner '-'), as in NAME.service.consul")
    return value


MAX_DURATION_SECONDS = 86400.0


def check_duration(value: str) -> str:
    if not DURATION_RE.match(value):
        raise ValueError(f"invalid duration {value!r}: a number with ms, s or m, e.g. 5s")
    if duration_seconds(value) > MAX_DURATION_SECONDS:
        raise ValueError(f"invalid duration {value!r}: at most 24h (1440m)")
    return value


Duration = Annotated[str, AfterValidator(check_duration)]


def duration_seconds(value: str) -> float:
    """'500ms' -> 0.5, '5s' -> 5.0, '2m' -> 120.0 (the value passed check_duration)."""
    for unit, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    raise ValueError(value)


def replicas_need(n: int, one_per_host: bool = True) -> str:
    if not one_per_host:
        return f"{n} replica{'s' if n != 1 else ''} need{'s' if n == 1 else ''} a host"
    return f"{n} replica{'s' if n != 1 else ''} need{'s' if n == 1 else ''} {n} host{'s' if n != 1 else ''} (one per host: a fixed port)"


class ServiceCheck(Strict):
    """How Consul (the agent on the replica's host) tells a replica is healthy."""

    # An HTTP path answered with 2xx; without it, a TCP connect to the port.
    http: str | None = None
    interval: Duration = "5s"
    timeout: Duration = "2s"
    # How long `up` waits for a started replica to pass before calling its host failed.
    deadline: Duration = "90s"

    @field_validator("http")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or any(c.isspace() for c in v)):
            raise ValueError(f"http must be a path starting with '/', got {v!r}")
        return v


class ServiceUpdate(Strict):
    """How a changed service replaces its running replicas."""

    # stop-first: the old replica is drained and stopped, then the new one starts (a fixed port
    # passes from one to the other); start-first: the new one starts beside it on a port of
    # its own and passes its check before the old one is drained (`ports: dynamic`).
    order: Literal["stop-first", "start-first"] = "stop-first"
    # How many hosts replace their replicas at once (each host's changed replicas together).
    parallel: int = Field(default=1, ge=1, le=100)


class FromEnv(Strict):
    """A service env value kept secret: the name of a variable in the operator's environment."""

    from_env: str

    @field_validator("from_env")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ENV_NAME_RE.match(v):
            raise ValueError(f"invalid environment variable name {v!r}")
        return v


PERCENT_RE = re.compile(r"^([0-9]{1,3}(?:\.[0-9]{1,3})?)%\Z")


def spread_mapping(value: object) -> object:
    """`spread: provider` is `spread: {label: provider}` (even over its values)."""
    return {"label": value} if isinstance(value, str) else value


def check_label_key(value: str) -> str:
    if not LABEL_KEY_RE.match(value):
        raise ValueError(f"invalid label key {value!r}")
    return value


class SpreadTargets(Strict):
    label: Annotated[str, AfterValidator(check_label_key)]
    # Label value -> its share of the replicas, "50%". Values not listed (and hosts without
    # the label) share what the targets leave evenly; when they add up to 100%, nothing.
    targets: dict[str, str] = Field(default_factory=dict)

    @field_validator("targets", mode="before")
    @classmethod
    def _targets(cls, v: object) -> object:
        if not isinstance(v, dict):
            return v
        total = Fraction(0)
        for key, share in v.items():
            if not isinstance(key, str) or not LABEL_VALUE_RE.match(key):
                raise ValueError(f"invalid label value {key!r}")
            match = PERCENT_RE.match(share) if isinstance(share, str) else None
            if match is None or Fraction(match[1]) > 100:
                raise ValueError(f"{key}: a target is a percentage from 0% to 100%, e.g. 50%, got {share!r}")
            total += Fraction(match[1])
        if total > 100:
            raise ValueError(f"the targets add up to {float(total):g}%, more than 100%")
        return v

    def shares(self) -> dict[str, Fraction]:
        """Label value -> its target share in percent, exactly."""
        return {k: Fraction(PERCENT_RE.match(v)[1]) for k, v in self.targets.items()}  # type: ignore[index]


class Service(Strict):
    """An app run as microcontainers on some hosts, each replica registered in Consul as
    NAME.service.consul on its host's cluster address (SRV records give each one's port)."""

    name: Annotated[str, AfterValidator(check_service_name)]
    # app: an app folder (clusterctl-app.yaml or package.json), relative to this file, built as a
    # microcontainer on this cluster's filebox and shipped; image: one the hosts hold or can pull.
    app: str | None = None
    image: str | None = None
    replicas: int = Field(default=1, ge=0, le=1000)
    # The container port, published on the host's cluster address; default: the app's port.
    port: Port | None = None
    # fixed: the port above is also the host port, so one replica per host (A-record clients
    # keep NAME.service.consul:PORT); dynamic: each replica gets a host port of its own from
    # placement.port_range (found through SRV records), so a host may run several.
    ports: Literal["fixed", "dynamic"] = "fixed"
    command: tuple[str, ...] | None = Field(default=None, min_length=1)
    # Plain values go on the replica's command line (`-e`, shown in plans); a secret one,
    # {from_env: NAME}, is read from the operator's environment when `up` runs, reaches the host
    # only on stdin into a 0600 env file (`--env-file`) and shows as <secret> everywhere.
    env: dict[str, str | FromEnv] = Field(default_factory=dict)
    # Replicas go evenly over this host label's values (e.g. provider), then over hosts; or
    # {label: provider, targets: {aws: 50%, hetzner: 30%}}: values not listed share the rest.
    spread: Annotated[SpreadTargets | None, BeforeValidator(spread_mapping, json_schema_input_type=str | SpreadTargets | None)] = None
    # Per replica, enforced by Docker and never overcommitted on a host.
    resources: Resources | None = None
    # Which host of a spread group takes the next replica: spread, the one with the most room
    # left; binpack, the one with the least room that still fits.
    strategy: Literal["spread", "binpack"] = "spread"
    # Only hosts whose labels match: a value, or a list of allowed values.
    constraints: dict[str, str | tuple[str, ...]] = Field(default_factory=dict)
    check: ServiceCheck = Field(default_factory=ServiceCheck)
    # A replica being replaced or removed gets SIGTERM and this long to finish in-flight requests.
    stop_grace: Duration = "10s"
    # A replaced replica is kept (stopped, with start-first running) until its successor passes
    # its check within check.deadline; one that does not is removed and the old one serves again.
    update: ServiceUpdate = Field(default_factory=ServiceUpdate)

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and not IMAGE_REF_RE.match(v):
            raise ValueError(f"invalid image reference {v!r}")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: object) -> object:
        # Checked here, not by the union, so that the message says what a value may be.
        if not isinstance(v, dict):
            return v
        for key, value in v.items():
            if not isinstance(key, str) or not ENV_NAME_RE.match(key):
                raise ValueError(f"invalid environment variable name {key!r}")
            if isinstance(value, dict):
                if set(value) != {"from_env"} or not isinstance(value["from_env"], str) or not ENV_NAME_RE.match(value["from_env"]):
                    raise ValueError(f"{key}: a secret is {{from_env: NAME}}, NAME a variable of the operator's environment")
            elif not isinstance(value, str):
                raise ValueError(f"{key}: a value is a string (quote numbers), or {{from_env: NAME}} for a secret")
        return v

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: dict[str, str | tuple[str, ...]]) -> dict[str, str | tuple[str, ...]]:
        for key, allowed in v.items():
            if not LABEL_KEY_RE.match(key):
                raise ValueError(f"invalid label key {key!r}")
            values = (allowed,) if isinstance(allowed, str) else allowed
            if not values:
                raise ValueError(f"constraint {key!r} allows no value")
            for value in values:
                if not LABEL_VALUE_RE.match(value):
                    raise ValueError(f"invalid value for label {key!r}: {value!r}")
        return v

    @model_validator(mode="after")
    def _source(self) -> Service:
        if (self.app is None) == (self.image is None):
            raise ValueError("give exactly one of app (an app folder to build) or image (an image reference)")
        return self

    @model_validator(mode="after")
    def _start_first(self) -> Service:
        if self.update.order == "start-first" and self.one_per_host:
            raise ValueError(
                "update.order start-first starts each new replica beside the old one, on a port of its own: "
                "it needs ports: dynamic (a fixed port is the old replica's until it stops)"
            )
        return self

    @property
    def one_per_host(self) -> bool:
        """Whether its replicas publish one fixed host port (its own or its app's): then a
        host runs one of them at most."""
        return self.ports == "fixed" and (self.port is not None or self.app is not None)

    def allows(self, host: Host) -> bool:
        """Whether the host's labels meet every constraint."""
        for key, allowed in self.constraints.items():
            values = (allowed,) if isinstance(allowed, str) else allowed
            if host.labels.get(key) not in values:
                return False
        return True


class ClusterFile(Strict):
    name: Name | None = None
    ssh: SSHDefaults = Field(default_factory=SSHDefaults)
    docker: DockerSection = Field(default_factory=DockerSection)
    hosts: tuple[Host, ...] = Field(min_length=1)
    network: NetworkSection = Field(default_factory=OverlayNetwork)
    consul: ConsulSection = Field(default_factory=ConsulSection)
    filebox: FileboxSection = Field(default_factory=FileboxSection)
    placement: PlacementSection = Field(default_factory=PlacementSection)
    services: tuple[Service, ...] = ()

    @model_validator(mode="after")
    def _cross_checks(self) -> ClusterFile:
        problems: list[IndexedError] = []
        if self.consul.enabled and not self.filebox.has("consul"):
            problems.append(SectionError(
                ("filebox", "binaries"),
                "consul is enabled but the filebox has no consul binary: add it (a name on PATH or a path), "
                "or set consul.enabled: false",
            ))  # fmt: skip
        seen_names: dict[str, int] = {}
        seen_addrs: dict[tuple[str, int | None], int] = {}
        for i, host in enumerate(self.hosts):
            if host.name in seen_names:
                problems.append(IndexedError(i, "name", f"duplicate host name {host.name!r} (also hosts[{seen_names[host.name]}])"))
            seen_names.setdefault(host.name, i)
            # DNS names are case-insensitive and may end in "."; IPs are already in normal form.
            key = (host.address.lower().rstrip("."), host.port)
            if key in seen_addrs:
                problems.append(IndexedError(
                    i, "address", f"duplicate host address {host.address!r} (also hosts[{seen_addrs[key]}])"
                ))  # fmt: skip
            seen_addrs.setdefault(key, i)
        for i, host in enumerate(self.hosts):
            if isinstance(host.bastion, str):
                if host.bastion not in seen_names:
                    problems.append(IndexedError(
                        i,
                        "bastion",
                        f"bastion {host.bastion!r} is not a host in this file"
                        " (for a jump host outside it, write user@address, address:port or a mapping)",
                    ))  # fmt: skip
                elif host.bastion == host.name:
                    problems.append(IndexedError(i, "bastion", "a host cannot be its own bastion"))
        names = set()
        for i, svc in enumerate(self.services):
            if svc.name in names:
                problems.append(ServiceIndexedError(i, "name", f"duplicate service name {svc.name!r}"))
            names.add(svc.name)
            if svc.app is not None and not self.filebox.binaries:
                problems.append(ServiceIndexedError(i, "app", "an app runs from the filebox, but filebox.binaries is empty"))
            matching = [h for h in self.hosts if svc.allows(h)]
            if svc.spread and not any(svc.spread.label in h.labels for h in self.hosts):
                problems.append(ServiceIndexedError(i, "spread", f"no host has the label {svc.spread.label!r}"))
            elif svc.spread:
                values = {h.labels.get(svc.spread.label) for h in matching}
                where = " matching its constraints" if svc.constraints else ""
                problems.extend(
                    SectionError(("services", i, "spread", "targets", value), f"no host{where} has {svc.spread.label}: {value}")
                    for value, share in svc.spread.shares().items()
                    if share and value not in values
                )
            if svc.replicas > len(matching) and (svc.one_per_host or not matching):
                where = " matching its constraints" if svc.constraints else ""
                problems.append(ServiceIndexedError(
                    i,
                    "constraints" if svc.constraints else "replicas",
                    f"{replicas_need(svc.replicas, svc.one_per_host)}, but this file has {len(matching)}{where}",
                ))  # fmt: skip
        if problems:
            raise CrossCheckErrors(problems)
        return self

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


class IndexedError(ValueError):
    """A cross-field error that knows which host it is about, so the loader can name its line."""

    def __init__(self, index: int, key: str, message: str, section: str = "hosts"):
        self.loc = (section, index, key)
        super().__init__(message)


class SectionError(IndexedError):
    """A cross-field error about a key outside hosts/services."""

    def __init__(self, loc: tuple, message: str):
        ValueError.__init__(self, message)
        self.loc = loc


class CrossCheckErrors(ValueError):
    """Every cross-field error of the file at once (pydantic keeps one error per validator)."""

    def __init__(self, errors: list[IndexedError]):
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in errors))


class ServiceIndexedError(IndexedError):
    def __init__(self, index: int, key: str, message: str):
        super().__init__(index, key, message, section="services")
