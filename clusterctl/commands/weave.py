"""The weave driver: Weave Net 2.8 routers on every host and a `weavemesh` Docker network.

Weave's facts, as its documentation gives them:
- `weave launch [--password PW] [--nickname N] [--ipalloc-range CIDR [--ipalloc-default-subnet
  CIDR]] [--no-restart] [--plugin=false] [--proxy=false] ... PEER...` starts everything in one
  container, `weave` (2.0 and later), with Docker restart policy `always` unless `--no-restart`.
  The script runs its work in the `weaveworks/weaveexec` image and keeps state in a `weavedb`
  volume container, so three images must be on the host: weave:V, weaveexec:V, weavedb.
- `weave connect [--replace] PEER...` adds peers to a running router, `weave forget PEER...`
  drops them; `weave status targets` lists what launch/connect were given.
- The router registers Docker's legacy network plugin with two drivers: `weave` (needs a
  cluster store; not usable here) and `weavemesh` (local scope, Weave's own partition-tolerant
  IPAM). It creates a network named `weave` on the default subnet by itself. Further networks
  are made "on all hosts" with `docker network create --driver=weavemesh --ipam-driver=weavemesh
  --subnet=SUBNET NAME`, SUBNET inside the allocation range and apart from the default subnet.
  That is how clusterctl gets its own network name: the cluster CIDR is the allocation range,
  its lower half the default subnet (Weave's `weave` network), its upper half the `clusterctl`
  network, created on every host. Addresses come from Weave's cluster-wide IPAM, so they are
  unique across hosts though each host has its own local-scope network object.
- `weave expose net:SUBNET` gives the host an address on that subnet, so containers can reach
  services on the host (such as Consul DNS) and the host can reach them.
- Encryption: a password given as `--password` is visible in the process table; Weave reads
  `WEAVE_PASSWORD` from the environment instead, and recommends keeping it in a file and
  loading it into the variable just before `weave launch`. clusterctl does exactly that: the
  password lives in a root-only file on the host, written from the command's stdin
  (files.write_secret), and launch reads it into WEAVE_PASSWORD inside `sh -c`, so no argv
  ever holds it. (The weave script hands the variable to its router container as `-e
  WEAVE_PASSWORD`, so it is still visible to root through `docker inspect weave`.)

Pure: builders return Cmds; `plan_weave` reads typed facts. Images cannot be pulled from here:
a host without them is refused with a message saying which are missing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network

from clusterctl.commands.base import Cmd, sh_args
from clusterctl.commands.files import sha256, write_secret
from clusterctl.network.facts import LABEL_CIDR, LABEL_CLUSTER, DockerNetwork, find_network
from clusterctl.network.subnets import halves

WEAVE_VERSION = "2.8.1"
SCRIPT_PATH = "/usr/local/bin/weave"
PASSWORD_FILE = "/etc/clusterctl/weave/password"
PEER_PORT = 6783
MESH_DRIVER = "weavemesh"
BRIDGE = "weave"  # the host interface `weave expose` puts addresses on
STATUS_TOPICS = ("targets", "connections", "peers", "dns", "ipam")


def script_url(version: str = WEAVE_VERSION) -> str:
    return f"https://github.com/weaveworks/weave/releases/download/v{version}/weave"


def images(version: str = WEAVE_VERSION) -> tuple[str, ...]:
    """The images `weave launch` needs on the host (it would try to pull missing ones)."""
    return (f"weaveworks/weave:{version}", f"weaveworks/weaveexec:{version}", "weaveworks/weavedb:latest")


def subnets(cidr: IPv4Network) -> tuple[IPv4Network, IPv4Network]:
    """(default subnet for Weave's own `weave` network, subnet of the clusterctl network)."""
    return halves(cidr)


# ---------------------------------------------------------------------------------------------
# Builders


def install_script(url: str = script_url(), path: str = SCRIPT_PATH) -> Cmd:
    return sh_args(
        'curl -fsSL "$1" -o "$2.tmp" && chmod a+x "$2.tmp" && mv "$2.tmp" "$2"',
        url,
        path,
        description="install the weave script",
    )


def store_password(password: bytes, path: str = PASSWORD_FILE) -> Cmd:
    """The weave password into a root-only file; it travels on stdin, never on a command line."""
    return write_secret(path, password, "0600", "store the weave password")


def launch(
    peers: Sequence[str] = (),
    *,
    ipalloc_range: IPv4Network | str,
    default_subnet: IPv4Network | str | None = None,
    nickname: str | None = None,
    password_file: str | None = None,
    proxy: bool = False,
    plugin: bool = True,
) -> Cmd:
    """`weave launch` with the given peers; the password, if any, comes from a file via the env."""
    args = ["--ipalloc-range", str(ipaddress.ip_network(str(ipalloc_range), strict=True))]
    if default_subnet is not None:
        args += ["--ipalloc-default-subnet", str(ipaddress.ip_network(str(default_subnet), strict=True))]
    if nickname:
        args += ["--nickname", nickname]
    if not proxy:
        args.append("--proxy=false")
    if not plugin:
        args.append("--plugin=false")
    args += list(peers)
    if password_file is None:
        return Cmd(("weave", "launch", *args), "launch the weave router")
    return sh_args(
        'WEAVE_PASSWORD=$(cat "$1") || exit 1; export WEAVE_PASSWORD; shift; exec weave launch "$@"',
        password_file,
        *args,
        description="launch the weave router (encrypted; password from file)",
    )


def connect(peers: Sequence[str], replace: bool = False) -> Cmd:
    argv = ["weave", "connect"] + (["--replace"] if replace else []) + list(peers)
    return Cmd(tuple(argv), "connect to new weave peers")


def forget(peers: Sequence[str]) -> Cmd:
    if not peers:
        raise ValueError("weave forget needs at least one peer")
    return Cmd(("weave", "forget", *peers), "forget weave peers that left the cluster")


def status(topic: str | None = None) -> Cmd:
    if topic is not None and topic not in STATUS_TOPICS:
        raise ValueError(f"unknown weave status topic {topic!r}")
    return Cmd(("weave", "status") if topic is None else ("weave", "status", topic), "weave status")


def expose(addrs: Sequence[str] = ()) -> Cmd:
    """`weave expose [ADDR...]`, ADDR like `net:10.240.128.0/17`, `net:default`, `ip:10.2.1.1/24`."""
    return Cmd(("weave", "expose", *addrs), "give this host an address on the weave network")


def env() -> Cmd:
    """`weave env`: DOCKER_HOST for Weave's Docker API proxy (not launched by clusterctl)."""
    return Cmd(("weave", "env"), "print the weave proxy environment")


def stop() -> Cmd:
    return Cmd(("weave", "stop"), "stop the weave router")


def reset() -> Cmd:
    return Cmd(("weave", "reset"), "remove weave from this host (forgets its IPAM ranges)")


def network_create(name: str, subnet: IPv4Network, *, cluster: str, cidr: IPv4Network) -> Cmd:
    return Cmd(
        (
            "docker", "network", "create",
            "--driver", MESH_DRIVER,
            "--ipam-driver", MESH_DRIVER,
            "--subnet", str(subnet),
            "--label", f"{LABEL_CLUSTER}={cluster}",
            "--label", f"{LABEL_CIDR}={cidr}",
            name,
        ),
        "create the cluster network on the weave plugin",
    )


# ---------------------------------------------------------------------------------------------
# Typed inputs and plan


@dataclass(frozen=True)
class WeaveHostFacts:
    script_version: str | None  # SCRIPT_VERSION of /usr/local/bin/weave; None when absent
    router: str  # "running" | "stopped" | "absent": the `weave` container
    images: tuple[str, ...]  # "repository:tag" present on the host
    targets: tuple[str, ...] = ()  # `weave status targets` (router running)
    ipalloc_range: str | None = None  # the running router's allocation range, if read
    networks: tuple[DockerNetwork, ...] = ()
    bridge_addresses: tuple[IPv4Interface, ...] = ()  # IPv4 addresses on the `weave` bridge
    password_sha256: str | None = None  # of the password file (managed_files); None when absent


@dataclass(frozen=True)
class WeaveHost:
    name: str
    address: str  # the cluster address; what other peers connect to


@dataclass(frozen=True)
class WeaveSettings:
    cluster: str
    network: str
    cidr: IPv4Network
    version: str = WEAVE_VERSION
    # The encryption password, or None for no encryption. It only ever leaves the planner as
    # the stdin of store_password(); repr hides it.
    password: bytes | None = field(default=None, repr=False)
    password_file: str = PASSWORD_FILE
    expose: bool = True
    script_url: str | None = None  # default: the release of `version` on GitHub


@dataclass(frozen=True)
class WeavePlan:
    default_subnet: IPv4Network
    network_subnet: IPv4Network
    cmds: Mapping[str, tuple[Cmd, ...]]
    errors: Mapping[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.cmds.values())


def _peer(target: str) -> str:
    """A target without the default port, so `10.0.0.2:6783` and `10.0.0.2` compare equal."""
    host, sep, port = target.rpartition(":")
    return host.strip("[]") if sep and port == str(PEER_PORT) else target


def plan_weave(hosts: Sequence[WeaveHost], facts: Mapping[str, WeaveHostFacts], settings: WeaveSettings) -> WeavePlan:
    """Per-host commands: install, launch with all peers, connect/forget, network, expose."""
    default_subnet, net_subnet = subnets(settings.cidr)
    wanted_images = images(settings.version)
    errors: dict[str, str] = {}
    cmds: dict[str, tuple[Cmd, ...]] = {}
    for h in hosts:
        if h.name not in facts:
            continue
        f = facts[h.name]
        missing = [i for i in wanted_images if i not in f.images]
        if missing:
            errors[h.name] = (
                f"weave images missing: {', '.join(missing)}; load them on the host (docker load) "
                "before using the weave driver"
            )
            continue
        peers = [o.address for o in hosts if o.name != h.name]
        out: list[Cmd] = []
        relaunch = False
        if settings.password is not None and f.password_sha256 != sha256(settings.password):
            out.append(store_password(settings.password, settings.password_file))
            relaunch = f.router == "running"  # a running router keeps its old password
        if f.script_version != settings.version:
            out.append(install_script(settings.script_url or script_url(settings.version)))
        if f.router == "running" and f.ipalloc_range and f.ipalloc_range != str(settings.cidr):
            errors[h.name] = (
                f"the weave router allocates from {f.ipalloc_range}, the cluster wants {settings.cidr}; "
                "`weave reset` this host (containers lose their weave addresses) or set network.subnet"
            )
            continue
        if f.router != "running" or relaunch:
            if relaunch:
                out.append(stop())
            out.append(
                launch(
                    peers,
                    ipalloc_range=settings.cidr,
                    default_subnet=default_subnet,
                    nickname=h.name,
                    password_file=settings.password_file if settings.password is not None else None,
                )
            )
        else:
            have = [_peer(t) for t in f.targets]
            new = [p for p in peers if p not in have]
            gone = [t for t in dict.fromkeys(have) if t not in peers]
            if new:
                out.append(connect(new))
            if gone:
                out.append(forget(gone))

        net = find_network(f.networks, settings.network)
        if net is None:
            out.append(network_create(settings.network, net_subnet, cluster=settings.cluster, cidr=settings.cidr))
        elif net.driver != MESH_DRIVER or net.subnets != (net_subnet,):
            errors[h.name] = (
                f"network {settings.network!r} here is {net.driver} "
                f"{', '.join(map(str, net.subnets)) or 'without a subnet'}, not {MESH_DRIVER} {net_subnet}; "
                "remove it (docker network rm) once no container uses it"
            )
            continue
        if settings.expose and not any(a.ip in net_subnet for a in f.bridge_addresses):
            out.append(expose([f"net:{net_subnet}"]))
        cmds[h.name] = tuple(out)
    return WeavePlan(
        default_subnet=default_subnet,
        network_subnet=net_subnet,
        cmds=cmds,
        errors=errors,
    )
