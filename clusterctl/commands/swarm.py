"""Argv builders of the overlay network driver, Docker swarm mode (planned by
network/drivers/overlay.py); builders only.

The docker verbs (init, join, leave, node rm/promote/demote/update, the overlay network), the
reads a real run needs (join tokens, the node list for the probe), and leaving for good (`down`).

A join reads its token on stdin and hands it to the Engine API (POST /swarm/join) through
`docker system dial-stdio`, the request built by the shell's printf builtin: it is in no
process's argv (`docker swarm join --token` would show it to `ps` on the host), the script text,
a report or a dry run. Without a token, a join's stdin is a TokenInput placeholder that a dry
run shows as `<worker token of node1>` and that refuses to be sent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Literal

from clusterctl.commands.base import Cmd, sh, sh_args
from clusterctl.errors import UserError
from clusterctl.network.facts import LABEL_CIDR, LABEL_CLUSTER

MANAGER_PORT = 2377
# The label that ties a swarm node to its inventory host, so a node whose host did not answer
# the probe this run is never mistaken for a stale one.
LABEL_HOST = "clusterctl.host"

TOKEN_RE = re.compile(r"^SWMTKN-1-[A-Za-z0-9]+-[A-Za-z0-9]+\Z")
NODE_ID_RE = re.compile(r"^[A-Za-z0-9]{1,64}\Z")

Role = Literal["manager", "worker"]


class SwarmError(UserError):
    """The swarm cannot be planned at all (no server, two swarms, managers missing). One line."""


# ---------------------------------------------------------------------------------------------
# Builders


def host_port(address: str, port: int = MANAGER_PORT) -> str:
    """ADDR:PORT, with IPv6 addresses in brackets."""
    ip = ipaddress.ip_address(address)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _node_id(node_id: str) -> str:
    if not NODE_ID_RE.match(node_id):
        raise ValueError(f"invalid swarm node id {node_id!r}")
    return node_id


def init(
    advertise_addr: str,
    *,
    default_addr_pool: Sequence[str] = (),
    default_addr_pool_mask_length: int | None = None,
) -> Cmd:
    """`docker swarm init`, advertising and listening on the cluster address only."""
    argv = [
        "docker", "swarm", "init",
        "--advertise-addr", advertise_addr,
        "--listen-addr", host_port(advertise_addr),
    ]
    for pool in default_addr_pool:
        argv += ["--default-addr-pool", str(ipaddress.ip_network(pool, strict=True))]
    if default_addr_pool_mask_length is not None:
        if not default_addr_pool:
            raise ValueError("a default address pool mask length needs a default address pool")
        argv += ["--default-addr-pool-mask-length", str(int(default_addr_pool_mask_length))]
    return Cmd(tuple(argv), "initialise the swarm (this host becomes its first manager)")


@dataclass(frozen=True)
class TokenInput:
    """A join token for a command's stdin. Without a token it is a placeholder: a dry run shows
    it as `<worker token of node1>`, and sending it fails instead of joining with garbage."""

    label: str  # e.g. "worker token of node1"
    token: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        return f"<{self.label}>" if self.token is None else f"{self.label}, not shown"

    def write_to(self, write: Callable[[bytes], None]) -> None:
        if self.token is None:
            raise SwarmError(f"<{self.label}> was never read: read the join tokens and plan again")
        write(self.token.encode() + b"\n")


# Arguments as `docker swarm join` takes them: --advertise-addr A --listen-addr L MANAGER. All
# three are addresses the builder formatted (no quotes to escape); the token matches TOKEN_RE.
JOIN = (
    'read -r token && case "$token" in ""|*[!A-Za-z0-9-]*) echo "not a swarm join token" >&2; exit 1 ;; esac && '
    'body=$(printf \'{"AdvertiseAddr":"%s","ListenAddr":"%s","RemoteAddrs":["%s"],"JoinToken":"%s"}\' "$2" "$4" "$5" "$token") && '
    'resp=$(printf \'POST /swarm/join HTTP/1.1\\r\\nHost: docker\\r\\nContent-Type: application/json\\r\\n'
    'Content-Length: %s\\r\\nConnection: close\\r\\n\\r\\n%s\' "${#body}" "$body" | docker system dial-stdio) && '
    'case "$resp" in "HTTP/1.1 200"*) ;; '
    # Docker answers after 20 s that the join goes on in the background (a busy manager, or raft
    # catching up): wait for the node's own state instead of calling the join failed.
    '*"continue in the background"*) i=0; while s=$(docker info --format "{{.Swarm.LocalNodeState}}") && [ "$s" = pending ] '
    '&& [ "$i" -lt 90 ]; do i=$((i+1)); sleep 1; done; '
    '[ "$s" = active ] || { echo "swarm join still $s after the engine\'s timeout and 90 s more" >&2; exit 1; } ;; '
    '*) echo "swarm join refused: $(printf "%s" "$resp" | tail -n 1)" >&2; exit 1 ;; esac'
)


def join(token: str | TokenInput, manager_addr: str, advertise_addr: str, role: Role = "worker") -> Cmd:
    """Join the swarm through the Engine API, the token read from stdin; the token decides the role."""
    stdin = token if isinstance(token, TokenInput) else TokenInput(f"{role} token", token)
    cmd = sh_args(
        JOIN,
        "--advertise-addr", advertise_addr,
        "--listen-addr", host_port(advertise_addr),
        host_port(manager_addr),
        description=f"join the swarm as a {role}",
    )  # fmt: skip
    return Cmd(cmd.argv, cmd.description, cmd.check, stdin=stdin)


def leave(force: bool = True) -> Cmd:
    argv = ("docker", "swarm", "leave", "--force") if force else ("docker", "swarm", "leave")
    return Cmd(argv, "leave the swarm")


def node_rm(node_ids: Sequence[str], force: bool = True) -> Cmd:
    ids = [_node_id(n) for n in node_ids]
    argv = ["docker", "node", "rm"] + (["--force"] if force else []) + ids
    return Cmd(tuple(argv), "remove nodes that are no longer in the inventory")


def node_promote(node_ids: Sequence[str]) -> Cmd:
    return Cmd(("docker", "node", "promote", *(_node_id(n) for n in node_ids)), "promote servers to managers")


def node_demote(node_ids: Sequence[str]) -> Cmd:
    return Cmd(("docker", "node", "demote", *(_node_id(n) for n in node_ids)), "demote nodes to workers")


# A manager's own node labels right after it initialised or joined (its node ID only known then):
# a node that just joined may not reach raft's leader for a moment, so a few tries.
LABEL_SELF = (
    'id=$(docker info --format "{{.Swarm.NodeID}}") && [ -n "$id" ] || { echo "no swarm node ID" >&2; exit 1; }; i=0; '
    'until out=$(docker node update "$@" "$id" 2>&1 >/dev/null); do i=$((i+1)); '
    'if [ "$i" -ge 20 ]; then printf "%s\\n" "$out" >&2; exit 1; fi; sleep 0.2; done'
)


def label_self(labels: Mapping[str, str]) -> Cmd:
    """This manager node's labels (`docker node update` on its own node ID, as `docker info` tells it)."""
    args: list[str] = []
    for key in sorted(labels):
        args += ["--label-add", f"{key}={labels[key]}"]
    return sh_args(LABEL_SELF, *args, description="set this node's labels")


def node_update_labels(node_id: str, labels: Mapping[str, str]) -> Cmd:
    argv = ["docker", "node", "update"]
    for key in sorted(labels):
        argv += ["--label-add", f"{key}={labels[key]}"]
    argv.append(_node_id(node_id))
    return Cmd(tuple(argv), "set node labels")


# The overlay network's option for swarm's IPsec (ESP) between hosts.
OPT_ENCRYPTED = "encrypted"


def network_create_overlay(name: str, subnet: IPv4Network | str, cluster: str, encrypted: bool = False) -> Cmd:
    subnet_text = str(ipaddress.ip_network(str(subnet), strict=True))
    return Cmd(
        (
            "docker", "network", "create",
            "-d", "overlay",
            "--attachable",
            *(("--opt", OPT_ENCRYPTED) if encrypted else ()),
            "--subnet", subnet_text,
            "--label", f"{LABEL_CLUSTER}={cluster}",
            "--label", f"{LABEL_CIDR}={subnet_text}",
            name,
        ),
        "create the cluster's overlay network" + (" (encrypted: IPsec between hosts)" if encrypted else ""),
    )


# GET /swarm through `docker system dial-stdio`: one docker process (the CLI's `join-token -q`
# twice is two, ~0.2 s each on a busy manager). HTTP/1.0, so the body comes whole, never chunked.
# Only the two tokens reach stdout; a refusal prints its status line, never the body.
READ_JOIN_TOKENS = (
    'resp=$(printf \'GET /swarm HTTP/1.0\\r\\nHost: docker\\r\\n\\r\\n\' | docker system dial-stdio) || exit 1; '
    'case "$resp" in "HTTP/1."?" 200"*) ;; *) echo "the swarm\'s join tokens could not be read: $(printf "%s\\n" "$resp" | head -n 1)" >&2; exit 1 ;; esac; '
    'jt=$(printf "%s" "$resp" | tr -d "\\r\\n" | sed -n \'s/.*"JoinTokens": *{\\([^}]*\\)}.*/\\1/p\'); '
    'for role in Worker Manager; do t=$(printf "%s" "$jt" | sed -n "s/.*\\"$role\\": *\\"\\([A-Za-z0-9-]*\\)\\".*/\\1/p"); '
    '[ -n "$t" ] || { echo "no $role join token in the swarm\'s answer" >&2; exit 1; }; printf "%s\\n" "$t"; done'
)


def read_join_tokens() -> Cmd:
    """On a manager: the worker token, then the manager token, one a line. Secrets: never log."""
    return sh(READ_JOIN_TOKENS, description="read the swarm join tokens")


def inspect_nodes() -> Cmd:
    """On a manager: one JSON object a line per node (for the probe; `SwarmNode.from_inspect`)."""
    return sh(
        "docker node ls -q | xargs -r docker node inspect --format '{{json .}}'",
        description="list the swarm's nodes",
    )


# Leaving for good (`down`): leave, remove swarm's gateway bridge, and restart the engine should
# the gossip port (7946) still be bound after leaving. Docker 20.10 can keep it bound after
# managers are forced out all at once, and a swarm made later then has no working overlay: so
# managers leave one at a time, the leader last. Each step tolerates "already gone".
LEAVE_FOR_GOOD = (
    "docker swarm leave --force >/dev/null 2>&1 || true; "
    "docker network rm docker_gwbridge >/dev/null 2>&1 || true; "
    "if ss -ltn 2>/dev/null | grep -q ':7946 '; then "
    "{ if [ -d /run/systemd/system ]; then systemctl restart docker; else service docker restart; fi; } >/dev/null 2>&1; "
    "i=0; while ! docker info >/dev/null 2>&1 && [ $i -lt 120 ]; do i=$((i+1)); sleep 0.5; done; fi"
)


def leave_for_good() -> Cmd:
    """Leave the swarm, its gateway bridge removed, the engine restarted should 7946 stay bound."""
    return sh(LEAVE_FOR_GOOD, description="leave the cluster's swarm (and remove its gateway bridge)", check=False)
