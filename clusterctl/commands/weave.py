"""Argv builders of the weave network driver (planned by network/drivers/weave.py); builders only:
Weave Net 2.8 routers on every host and a `weavemesh` Docker network.

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

Pure: builders return Cmds. Images cannot be pulled from here: the driver refuses a host
without them, saying which are missing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from ipaddress import IPv4Network

from clusterctl.commands.base import Cmd, sh_args
from clusterctl.commands.files import write_secret
from clusterctl.network.facts import LABEL_CIDR, LABEL_CLUSTER
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


# `down`: `weave reset` where the script is installed, tolerating "already gone". It comes after
# the weavemesh networks are removed: the router's plugin serves them.
RESET_IF_INSTALLED = f"if [ -x {SCRIPT_PATH} ]; then {SCRIPT_PATH} reset >/dev/null 2>&1 || true; fi"


def remove(cluster: str) -> Cmd:
    """This cluster's weavemesh networks removed, then Weave reset (`down`). `cluster` is a
    checked name (config.models.check_name); it travels as an argument."""
    return sh_args(
        f'for id in $(docker network ls -q --filter "label={LABEL_CLUSTER}=$1" --filter "driver={MESH_DRIVER}"); do '
        'docker network rm "$id" >/dev/null 2>&1 || true; done; ' + RESET_IF_INSTALLED,
        cluster,
        description="remove the cluster's weave network and reset weave on this host",
        check=False,
    )


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
