"""Builders for service replicas: the microcontainer, its Consul registration, the health wait.

A replica publishes its port on its host's cluster address and is registered with the host's
Consul agent at that address: any container on any host (on the cluster network or a plain
`docker run`) reaches NAME.service.consul:PORT (a fixed port) or finds each replica's own host
port in the SRV records of NAME.service.consul (`ports: dynamic`), and the agent's health check,
which runs in the host's network namespace, reaches the replica the same way clients do.

A host may run several replicas of a service, numbered by slot: the first is the service's
name everywhere (container clusterctl-svc-NAME, Consul service ID NAME), slot N the name with
".N" (clusterctl-svc-NAME.N, NAME.N): a dot no service name holds, so no two replicas collide.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field

from clusterctl.commands.base import Cmd, sh_args
from clusterctl.commands.consul import CONTAINER as CONSUL_CONTAINER
from clusterctl.commands.consul import AGENT_GET_BASH, AGENT_PORT, AGENT_TOKEN_FILE, SERVICES_DIR, consul_cli
from clusterctl.config.models import duration_seconds

CONTAINER_PREFIX = "clusterctl-svc-"
ROLE = "service"


def replica_id(service: str, slot: int = 1) -> str:
    """The replica's name: its Consul service ID, and its container's after the prefix."""
    return service if slot == 1 else f"{service}.{slot}"


def container_name(rid: str) -> str:
    return CONTAINER_PREFIX + rid


def definition_path(rid: str) -> str:
    return f"{SERVICES_DIR}/{rid}.json"


# Secret env values of a service: one 0600 file each in a root-only dir, read by `docker run
# --env-file` (the docker CLI, as root), so values are never on a command line.
ROOT = "/etc/clusterctl"
ENV_DIR = f"{ROOT}/env"


def env_file_path(service: str) -> str:
    return f"{ENV_DIR}/{service}.env"


@dataclass(frozen=True)
class Replica:
    """One service replica on one host, as it should run."""

    service: str
    host: str
    image: str
    # Where the port is published and registered: the host's cluster address.
    address: str
    port: int | None
    command: tuple[str, ...] | None
    env: tuple[tuple[str, str], ...]
    filebox_container: str | None
    network: str | None
    cluster: str
    check_http: str | None = None
    check_interval: str = "5s"
    check_timeout: str = "2s"
    # Seconds `up` waits for the replica to pass (or, without Consul, to keep running).
    deadline: float = 90.0
    extra_labels: tuple[tuple[str, str], ...] = field(default=())
    # Names of the secret env values, which come from env_file_path (their values never here).
    secret_env: tuple[str, ...] = ()
    # Docker's limits (--cpus, --memory): what placement counted for this replica on its host.
    cpus: float | None = None
    memory: str | None = None
    # Which of the service's replicas on this host (1, 2, ...), and the host port it publishes
    # (None: the container port, a fixed one).
    slot: int = 1
    host_port: int | None = None

    @property
    def id(self) -> str:
        return replica_id(self.service, self.slot)

    @property
    def container(self) -> str:
        return container_name(self.id)

    @property
    def published(self) -> int | None:
        return self.host_port or self.port

    def digest(self) -> str:
        """Changes whenever the container would run differently (the check is Consul's, not Docker's)."""
        doc = {
            "image": self.image, "address": self.address, "port": self.port, "command": self.command,
            "env": self.env, "filebox": self.filebox_container, "network": self.network,
            **({"secret_env": list(self.secret_env)} if self.secret_env else {}),
            # Only when set: a replica without limits keeps the digest it had before they existed.
            **({"cpus": self.cpus} if self.cpus else {}), **({"memory": self.memory} if self.memory else {}),
            **({"host_port": self.host_port} if self.host_port and self.host_port != self.port else {}),
        }  # fmt: skip
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def run(self) -> Cmd:
        argv = [
            "docker", "run", "-d", "--name", self.container, "--restart", "unless-stopped",
            "--label", f"clusterctl.cluster={self.cluster}",
            "--label", f"clusterctl.role={ROLE}",
            "--label", f"clusterctl.service={self.service}",
            "--label", f"clusterctl.config={self.digest()}",
        ]  # fmt: skip
        if self.slot != 1:
            argv += ["--label", f"clusterctl.slot={self.slot}"]
        if self.published:
            argv += ["--label", f"clusterctl.port={self.published}"]
        for key, value in self.extra_labels:
            argv += ["--label", f"{key}={value}"]
        if self.filebox_container:
            argv += ["--volumes-from", f"{self.filebox_container}:ro"]
        if self.network:
            argv += ["--network", self.network]
        if self.port:
            argv += ["-p", f"{_host_part(self.address)}:{self.published}:{self.port}"]
        for key, value in self.env:
            argv += ["-e", f"{key}={value}"]
        if self.secret_env:
            argv += ["--env-file", env_file_path(self.service)]
        if self.cpus:
            argv += ["--cpus", f"{self.cpus:g}"]
        if self.memory:
            # The same as swap+memory: no swap beyond the limit (Docker's default lets a
            # replica use as much swap again, unseen by the placement).
            argv += ["--memory", self.memory, "--memory-swap", self.memory]
        argv.append(self.image)
        argv += list(self.command or ())
        where = f" on {self.address}:{self.published}" if self.port else ""
        return Cmd(tuple(argv), f"start {self.id}{where}")

    def definition(self, token: str | None = None, passing: bool = False) -> str:
        """The agent's service definition (JSON; Consul reads it from its -config-dir), with the
        service's ACL token (it may write this service only) when Consul runs ACLs: the file is
        then a secret, written 0600 from stdin. With `passing`: the check's initial status is
        passing (Consul's `status`), for a replica clusterctl has just seen answer that very
        check (register_checked); otherwise it starts critical until the agent runs it."""
        target = f"{_host_part(self.address)}:{self.published}"
        check: dict[str, object] = {
            "id": f"{self.id}-alive",
            "name": f"{self.service} answers on {target}",
            "interval": self.check_interval,
            "timeout": self.check_timeout,
        }
        if passing:
            check["status"] = "passing"
        if self.check_http:
            check["http"] = f"http://{target}{self.check_http}"
        else:
            check["tcp"] = target
        doc = {
            "service": {
                "id": self.id,
                "name": self.service,
                "address": self.address,
                "port": self.published,
                "tags": ["clusterctl"],
                "meta": {"host": self.host, "container": self.container},
                "check": check,
            }
        }
        if token:
            doc["service"]["token"] = token
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    def catalog_entry(self, node: str) -> str:
        """The replica as the agent's sync would put it in the catalog (PUT /v1/catalog/register:
        the node left as it is, the check passing), for wait_registered to register it itself
        when that sync is held back (CATALOG_DIR). Only for a replica its agent reports passing."""
        target = f"{_host_part(self.address)}:{self.published}"
        doc = {
            "Node": node,
            "SkipNodeUpdate": True,
            "Service": {"ID": self.id, "Service": self.service, "Address": self.address, "Port": self.published,
                        "Tags": ["clusterctl"], "Meta": {"host": self.host, "container": self.container}},
            "Check": {"CheckID": f"{self.id}-alive", "Name": f"{self.service} answers on {target}", "Status": "passing",
                      "ServiceID": self.id, "ServiceName": self.service},
        }  # fmt: skip
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def own_check(self) -> tuple[str, str, str, str, str, str]:
        """The replica's Consul check as register_checked runs it once itself: (replica ID,
        "http" or "tcp", the URL, the address, the port, the timeout in seconds)."""
        target = f"{_host_part(self.address)}:{self.published}"
        kind, url = ("http", f"http://{target}{self.check_http}") if self.check_http else ("tcp", "")
        return (self.id, kind, url, self.address, str(self.published), f"{duration_seconds(self.check_timeout):g}")


def _host_part(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def remove(rid: str, grace: float = 0) -> Cmd:
    """With `grace`: SIGTERM first, and up to that many seconds for in-flight requests to end
    (the replica was deregistered before, so no new ones come), then removed."""
    if grace <= 0:
        return Cmd(("docker", "rm", "-f", container_name(rid)), f"remove the {rid} container", check=False)
    return sh_args(
        'docker stop -t "$2" "$1" >/dev/null 2>&1; docker rm -f "$1" >/dev/null',
        container_name(rid), str(max(1, round(grace))),
        description=f"remove the {rid} container (stopped first: up to {grace:g}s for in-flight requests)",
        check=False,
    )  # fmt: skip


def start(rid: str) -> Cmd:
    return Cmd(("docker", "start", container_name(rid)), f"start the stopped {rid} container")


def remove_definitions(rids: list[str]) -> Cmd:
    return Cmd(("rm", "-f", *(definition_path(r) for r in rids)), f"deregister {', '.join(rids)} from this host's consul agent")


def reload_agent() -> Cmd:
    return consul_cli("reload", description="reload consul's service definitions")


# A replica clusterctl has just seen answer its own check is registered with that check passing
# from the start, so `up` is not held up by the agent's first run of it (staggered at random
# within the interval). The definitions with `"status": "passing"` are staged here, outside
# consul's config dir (never loaded from here), put in place for the one reload that registers
# them, and the plain definitions put back right after it: the file the agent reads when it
# starts again (a reboot) makes no claim about a replica nobody has checked.
PASSING_DIR = f"{ROOT}/passing"
# How long the check of just-started replicas is tried (every 0.1 s) before they are left to
# the agent: about 2 s, at most 3 s of wall clock (an attempt is bounded by the check's timeout).
OWN_CHECK_ROUNDS = 20
OWN_CHECK_SECONDS = 3


def passing_path(rid: str) -> str:
    return f"{PASSING_DIR}/{rid}.json"


# A new replica's catalog entry and its service's token, staged for wait_registered: the agent's
# sync to the catalog (anti-entropy) waits out a random stagger of up to 3 s after any full sync
# is asked for (a server joining, a token set: a new cluster has both), holding back the sync of
# services registered meanwhile; a replica its agent reports passing that the catalog does not
# list yet is registered there by clusterctl itself, with its service's token (which may write
# only that service), and the agent's own sync later finds it in place. Removed once used.
CATALOG_DIR = f"{ROOT}/catalog"


def catalog_path(rid: str) -> str:
    return f"{CATALOG_DIR}/{rid}.json"


def catalog_token_path(rid: str) -> str:
    return f"{CATALOG_DIR}/{rid}.token"


# Run by the agent's container (BusyBox, --net=host: the network namespace the agent's own checks
# run in): prints the ID of each replica whose check answered. HTTP: a GET answered 2xx (BusyBox
# wget fails on anything else, and follows redirects as the agent does); TCP: a connect.
_OWN_CHECKS = (
    'rounds=$1 secs=$2 n=$3; shift 3; end=$(($(date +%s) + secs)); seen=" "; r=0; '
    'check_all() { pending=0; i=0; while [ "$i" -lt "$n" ]; do i=$((i+1)); '
    'rid=$1 kind=$2 url=$3 addr=$4 port=$5 t=$6; shift 6; '
    'case "$seen" in *" $rid "*) continue ;; esac; '
    'if [ "$kind" = http ]; then timeout "$t" wget -q -O /dev/null "$url" >/dev/null 2>&1; '
    'else timeout "$t" nc "$addr" "$port" -e true >/dev/null 2>&1; fi && { seen="$seen$rid "; echo "$rid"; continue; }; '
    "pending=1; done; }; "
    'while :; do check_all "$@"; [ "$pending" = 0 ] && exit 0; r=$((r+1)); '
    '{ [ "$r" -ge "$rounds" ] || [ "$(date +%s)" -ge "$end" ]; } && exit 0; sleep 0.1; done'
)


# _OWN_CHECKS in bash on the host (the agent's network namespace too: it runs --net host), where
# a `docker exec` costs a busy host ~0.1 s: an HTTP check is a GET through /dev/tcp answered 2xx
# (a redirect counts as not answered: the agent's own check decides), a TCP check a connect. Each
# try bounded by the check's timeout; the URL's parts are arguments, never code.
_OWN_CHECKS_BASH = (
    'LC_ALL=C; rounds=$1 secs=$2 n=$3; shift 3; end=$((SECONDS + secs)); seen=" "; r=0; '
    'http_try=\'exec 3<>"/dev/tcp/$0/$1" || exit 1; printf "GET %s HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n" "$2" "$3" >&3; '
    'IFS= read -r -t "$4" s <&3 || exit 1; case "$s" in "HTTP/"*" 2"[0-9][0-9]|"HTTP/"*" 2"[0-9][0-9]" "*) exit 0 ;; esac; exit 1\'; '
    'check_all() { pending=0; i=0; while [ "$i" -lt "$n" ]; do i=$((i+1)); '
    'rid=$1 kind=$2 url=$3 addr=$4 port=$5 t=$6; shift 6; '
    'case "$seen" in *" $rid "*) continue ;; esac; '
    'if [ "$kind" = http ]; then rest=${url#http://}; path=/${rest#*/}; [ "$rest" = "${rest#*/}" ] && path=/; '
    'timeout "$t" bash -c "$http_try" "$addr" "$port" "$path" "${rest%%/*}" "$t" 2>/dev/null; '
    'else timeout "$t" bash -c \'exec 3<>"/dev/tcp/$0/$1"\' "$addr" "$port" 2>/dev/null; fi && { seen="$seen$rid "; echo "$rid"; continue; }; '
    "pending=1; done; }; "
    'while :; do check_all "$@"; [ "$pending" = 0 ] && exit 0; r=$((r+1)); '
    '{ [ "$r" -ge "$rounds" ] || [ "$SECONDS" -ge "$end" ]; } && exit 0; sleep 0.1; done'
)

# `consul reload` through the agent's API (PUT /v1/agent/reload) with the agent's token: $1 its file.
_RELOAD_BASH = AGENT_GET_BASH + (
    'tok=""; { IFS= read -r tok || [ -n "$tok" ]; } <"$1" 2>/dev/null; '
    'put /v1/agent/reload "$tok" "" && exit 0; echo "consul reload refused: ${status%$cr} ${body:0:200}" >&2; exit 1'
)


def register_checked(replicas: list[Replica]) -> Cmd:
    """Each replica checked once from this host as the agent would check it (tried for a moment
    if it is still starting); those that answered are registered with their check passing (their
    staged definitions, PASSING_DIR, in place for the reload), the others as before (critical
    until the agent's first check). The agent then keeps checking them all on its own. With bash
    on the host, the checks and the reload need no `docker exec`."""
    reload = reload_agent().argv
    groups = [part for r in replicas for part in r.own_check()]
    rids = ", ".join(r.id for r in replicas)
    return sh_args(
        'c=$1 live=$2 staged=$3 rounds=$4 secs=$5 n=$6 probe=$7 probe_bash=$8 port=$9 reload_bash=${10} tokf=${11}; shift 11; '
        'if command -v bash >/dev/null 2>&1; then fast=1; ok=$(bash -c "$probe_bash" bash "$rounds" "$secs" "$n" "$@") || ok=""; '
        'else fast=""; ok=$(docker exec "$c" sh -c "$probe" sh "$rounds" "$secs" "$n" "$@" 2>/dev/null) || ok=""; fi; '
        'i=0; while [ "$i" -lt "$n" ]; do shift 6; i=$((i+1)); done; swapped=""; '
        'for r in $ok; do case "$r" in *[!a-z0-9.-]*) continue ;; esac; '
        'if [ -f "$staged/$r.json" ] && mv -f "$live/$r.json" "$staged/$r.plain" && mv -f "$staged/$r.json" "$live/$r.json"; '
        'then swapped="$swapped $r"; fi; done; '
        'if [ -n "$fast" ]; then AGENT_PORT=$port bash -c "$reload_bash" bash "$tokf"; else "$@"; fi; rc=$?; '
        'for r in $swapped; do mv -f "$staged/$r.plain" "$live/$r.json"; done; rm -rf "$staged"; '
        '[ "$rc" = 0 ] && [ -n "$swapped" ] && echo "registered passing, having answered the check from this host:$swapped"; exit "$rc"',
        CONSUL_CONTAINER, SERVICES_DIR, PASSING_DIR, str(OWN_CHECK_ROUNDS), str(OWN_CHECK_SECONDS), str(len(replicas)), _OWN_CHECKS,
        _OWN_CHECKS_BASH, str(AGENT_PORT), _RELOAD_BASH, AGENT_TOKEN_FILE,
        *groups, *reload,
        description=f"reload consul's service definitions ({rids}: passing at once if it answers its check from this host)",
    )  # fmt: skip


# An agent whose sync to the servers failed (e.g. "ACL not found" from a server that has just
# restarted) tries again only after 15 s and a random stagger of as much again: the catalog
# waits allow for one such retry.
CATALOG_WAIT = 45.0


def wait_deregistered(rids: list[str], node: str, timeout: float = CATALOG_WAIT) -> Cmd:
    """Until the catalog (asked through the host's agent, so the leader answers) no longer lists
    these replicas (service IDs) on this node: the agent syncs a removal to the servers on its
    own time, and a replica stopped before that is still handed out by DNS."""
    return _wait_catalog(rids, node, False, timeout, f"wait until the catalog no longer hands out {', '.join(rids)} here")


def wait_registered(rids: list[str], node: str, timeout: float = CATALOG_WAIT, staged: bool = False) -> Cmd:
    """Until the catalog lists these replicas on this node: a check passing on the agent is not
    yet an answer of DNS, which reads the catalog (the agent syncs on its own time). `staged`:
    their catalog entries are in CATALOG_DIR, registered by the wait itself if the agent's sync
    is held back (the dir is removed at the end)."""
    return _wait_catalog(rids, node, True, timeout, f"wait until the catalog hands out {', '.join(rids)}", CATALOG_DIR if staged else "")


# The catalog wait in bash: a blocking query on the node's catalog entry (answers as soon as it
# changes, or after 2 s), so the wait ends when the agent's sync lands instead of at a poll. A
# replica still missing whose entry is staged ($4/RID.json, its token in $4/RID.token: see
# CATALOG_DIR) is registered in the catalog once, by a PUT with that token (a header sent by
# printf, a builtin: on no command line). $1 node, $2 want (1: listed), $3 seconds, $4 the
# staging dir, the rest: the replicas (service IDs).
_WAIT_CATALOG_BASH = AGENT_GET_BASH + (
    'LC_ALL=C; node=$1 want=$2 secs=${3%.*} staged=$4; shift 4; end=$((SECONDS + ${secs:-0} + 1)); at=0; put_done=""; while :; do '
    'if get "/v1/catalog/node/$node?index=$at&wait=2s" 2>/dev/null && case "$status" in *" 200 "*) true ;; *) false ;; esac; then '
    'left=""; for r in "$@"; do case "$body" in *"\\"ID\\":\\"$r\\""*) [ "$want" = 1 ] || left="$left $r" ;; *) [ "$want" = 1 ] && left="$left $r" ;; esac; done; '
    '[ -z "$left" ] && exit 0; '
    'if [ "$want" = 1 ] && [ -n "$staged" ] && [ -z "$put_done" ]; then put_done=1; for r in $left; do '
    'if [ -r "$staged/$r.json" ]; then entry=$(cat "$staged/$r.json"); tok=""; '
    '[ -r "$staged/$r.token" ] && { IFS= read -r tok || [ -n "$tok" ]; } <"$staged/$r.token"; '
    'put /v1/catalog/register "$tok" "$entry" 2>/dev/null || true; at=0; fi; done; continue; fi; '
    # A new index blocks until the next change; one that went back (a new leader) starts over.
    'case "$index" in ""|*[!0-9]*) at=0; sleep 0.1 ;; *) if [ "$index" -gt "$at" ]; then at=$index; elif [ "$index" -lt "$at" ]; then at=0; fi ;; esac; '
    'else left=" (its agent did not answer)"; sleep 0.2; fi; '
    'if [ "$SECONDS" -ge "$end" ]; then '
    'if [ "$want" = 1 ]; then echo "the catalog does not list$left on $node after ${secs}s" >&2; else echo "the catalog still lists$left on $node after ${secs}s" >&2; fi; '
    'exit 1; fi; done'
)


def _wait_catalog(rids: list[str], node: str, present: bool, timeout: float, description: str, staged: str = "") -> Cmd:
    return sh_args(
        'n=$1 node=$2 tries=$3 after=$4 want=$5 port=$6 fast=$7 staged=$8; shift 8; '
        'if command -v bash >/dev/null 2>&1; then AGENT_PORT=$port bash -c "$fast" bash "$node" "$want" "$after" "$staged" "$@"; rc=$?; '
        '[ -z "$staged" ] || rm -rf "$staged"; exit "$rc"; fi; '
        'i=0; while :; do '
        'if out=$(docker exec "$n" timeout 3 wget -qO- "http://127.0.0.1:8500/v1/catalog/node/$node" 2>/dev/null); then '
        'left=""; for r in "$@"; do case "$out" in *"\\"ID\\":\\"$r\\""*) [ "$want" = 1 ] || left="$left $r" ;; *) [ "$want" = 1 ] && left="$left $r" ;; esac; done; '
        '[ -z "$left" ] && exit 0; else left=" (its agent did not answer)"; fi; '
        'i=$((i+1)); if [ "$i" -ge "$tries" ]; then '
        'if [ "$want" = 1 ]; then echo "the catalog does not list$left on $node after ${after}s" >&2; else echo "the catalog still lists$left on $node after ${after}s" >&2; fi; '
        'exit 1; fi; sleep 0.2; done',
        CONSUL_CONTAINER, node, str(max(1, int(timeout * 5))), f"{timeout:g}", "1" if present else "0", str(AGENT_PORT), _WAIT_CATALOG_BASH, staged, *rids,
        description=description,
    )  # fmt: skip


# The health wait in bash (AGENT_GET_BASH), every 0.1 s: $1 the replica, $2 seconds; 0 once it passes.
_WAIT_HEALTHY_BASH = AGENT_GET_BASH + (
    'end=$((SECONDS + ${2%.*} + 1)); while [ "$SECONDS" -lt "$end" ]; do '
    'get "/v1/agent/health/service/id/$1" 2>/dev/null && case "$status" in *" 200 "*) exit 0 ;; esac; sleep 0.1; done; exit 1'
)


def wait_healthy(rid: str, timeout: float) -> Cmd:
    """Until the host's agent reports the replica's checks passing (the endpoint answers 200
    only then; BusyBox wget fails on its 503)."""
    return sh_args(
        'if command -v bash >/dev/null 2>&1; then AGENT_PORT=$6 bash -c "$7" bash "$2" "$4" && exit 0; '
        'echo "$2 is not healthy after $4s; its last output:" >&2; docker logs --tail 5 "$5" >&2; exit 1; fi; '
        'i=0; while :; do '
        'if docker exec "$1" timeout 3 wget -qO /dev/null "http://127.0.0.1:8500/v1/agent/health/service/id/$2" 2>/dev/null; then exit 0; fi; '
        'i=$((i+1)); '
        'if [ "$i" -ge "$3" ]; then echo "$2 is not healthy after $4s; its last output:" >&2; docker logs --tail 5 "$5" >&2; exit 1; fi; '
        "sleep 0.5; done",
        CONSUL_CONTAINER, rid, str(max(1, int(timeout * 2))), f"{timeout:g}", container_name(rid), str(AGENT_PORT), _WAIT_HEALTHY_BASH,
        description=f"wait until consul reports {rid} healthy",
    )  # fmt: skip


def wait_running(rid: str, timeout: float) -> Cmd:
    """Without Consul: until the container has run for a second without exiting."""
    return sh_args(
        'i=0; while :; do s=$(docker inspect -f "{{.State.Status}} {{.RestartCount}}" "$1" 2>/dev/null); '
        'case "$s" in "running 0") [ "$i" -ge 2 ] && exit 0 ;; esac; '
        'i=$((i+1)); '
        'if [ "$i" -ge "$2" ]; then echo "$1 is not running ($s); its last output:" >&2; docker logs --tail 5 "$1" >&2; exit 1; fi; '
        "sleep 0.5; done",
        container_name(rid), str(max(3, int(timeout * 2))),
        description=f"wait until {rid} keeps running",
    )  # fmt: skip


# Rollouts keep what they replace, stopped, as the previous version (the automatic rollback of a
# successor that fails its check, and `clusterctl rollback`): the container under this suffix
# (no service name or slot holds it), its definition in ROLLBACK_DIR (outside consul's config
# dir: not loaded). With start-first the old replica runs on until its successor passes.
RETIRED_SUFFIX = ".prev"
ROLLBACK_DIR = f"{ROOT}/rollback"


def retired_name(rid: str) -> str:
    return container_name(rid) + RETIRED_SUFFIX


def rollback_path(rid: str) -> str:
    return f"{ROLLBACK_DIR}/{rid}.json"


def stash_definitions(rids: list[str]) -> Cmd:
    """Deregister by moving the definitions aside (kept for a rollback)."""
    return sh_args(
        'mkdir -p -m 700 "$1" && d=$1 && shift && for f; do mv -f "$f" "$d/"; done',
        ROLLBACK_DIR, *(definition_path(r) for r in rids),
        description=f"deregister {', '.join(rids)} from this host's consul agent (definitions kept: the previous version)",
    )  # fmt: skip


def retire(rid: str, grace: float) -> Cmd:
    """Stop the replica (SIGTERM, up to `grace` s) and keep it under its retired name."""
    return sh_args(
        'docker rm -f "$1$3" >/dev/null 2>&1; docker stop -t "$2" "$1" >/dev/null && docker rename "$1" "$1$3"',
        container_name(rid), str(max(1, round(grace))), RETIRED_SUFFIX,
        description=f"stop {rid} (up to {grace:g}s for in-flight requests) and keep it as the previous version",
    )  # fmt: skip


def drop_retired(rids: list[str], why: str = "") -> Cmd:
    """What rollouts kept of these replicas (containers, definitions) goes."""
    return sh_args(
        'p=$1 s=$2 d=$3 && shift 3 && for r; do docker rm -f "$p$r$s" >/dev/null 2>&1 || true; rm -f "$d/$r.json"; done',
        CONTAINER_PREFIX, RETIRED_SUFFIX, ROLLBACK_DIR, *rids,
        description=f"remove the previous {', '.join(rids)}" + (f" ({why})" if why else ""),
    )  # fmt: skip


def passes_or_rolls_back(rid: str, timeout: float, registered: bool, previous: str | None, restore: bool) -> Cmd:
    """Until the new replica `rid` passes (its Consul check; unregistered: keeps running for a
    second). If it does not within `timeout`: it and its definition are removed, and with
    `restore` (stop-first) the kept replica `previous` runs again with its definition; the
    command fails with one line naming both. `previous` None: a new replica with nothing to go
    back to."""
    reload = reload_agent().argv
    back = f"{previous} runs the previous version again" if restore else f"{previous} keeps serving the previous version"
    tail = f"rolled back: {back}" if previous else "nothing to roll back to"
    return sh_args(
        'rid=$1 c=$2 tries=$3 after=$4 reg=$5 prev=$6 restore=$7 why=$8 def=$9; shift 9; i=0; '
        'while :; do '
        f'if [ "$reg" = 1 ]; then docker exec {shlex.quote(CONSUL_CONTAINER)} timeout 3 wget -qO /dev/null "http://127.0.0.1:8500/v1/agent/health/service/id/$rid" 2>/dev/null && exit 0; '
        'else s=$(docker inspect -f "{{.State.Status}} {{.RestartCount}}" "$c" 2>/dev/null); [ "$s" = "running 0" ] && [ "$i" -ge 2 ] && exit 0; fi; '
        'i=$((i+1)); [ "$i" -ge "$tries" ] && break; sleep 0.5; done; '
        'out=$(docker logs --tail 5 "$c" 2>&1); [ -z "$out" ] || printf "%s: its last output:\\n%s\\n" "$rid" "$out" >&2; '
        'docker rm -f "$c" >/dev/null 2>&1; rm -f "$def"; '
        'if [ "$restore" = 1 ] && [ -n "$prev" ]; then '
        f'p={shlex.quote(CONTAINER_PREFIX)}"$prev"; docker rename "$p{RETIRED_SUFFIX}" "$p" && docker start "$p" >/dev/null; '
        f'[ -f {shlex.quote(ROLLBACK_DIR)}/"$prev.json" ] && mv -f {shlex.quote(ROLLBACK_DIR)}/"$prev.json" {shlex.quote(SERVICES_DIR)}/"$prev.json"; fi; '
        '[ "$reg" = 1 ] && "$@" >/dev/null 2>&1; '
        'echo "$rid did not pass its check within ${after}s; $why" >&2; exit 1',
        rid, container_name(rid), str(max(3, int(timeout * 2))), f"{timeout:g}", "1" if registered else "0",
        previous or "", "1" if restore else "0", tail, definition_path(rid), *reload,
        description=f"wait until {rid} passes its check, else roll back" + (f" to {previous}" if previous else ""),
    )  # fmt: skip


# `clusterctl rollback`: what a rollout kept becomes the running version and what ran is kept in
# its place, so a second rollback goes forward again.


def restore_retired(rids: list[str]) -> Cmd:
    """Kept replicas whose IDs no replica holds (start-first kept them): started again under
    their own names, their definitions back in consul's config dir."""
    return sh_args(
        'p=$1 s=$2 d=$3 live=$4 && shift 4 && for r; do docker rename "$p$r$s" "$p$r" && docker start "$p$r" >/dev/null && '
        '{ [ ! -f "$d/$r.json" ] || mv -f "$d/$r.json" "$live/$r.json"; }; done',
        CONTAINER_PREFIX, RETIRED_SUFFIX, ROLLBACK_DIR, SERVICES_DIR, *rids,
        description=f"start the previous {', '.join(rids)} again",
    )  # fmt: skip


def set_aside_definitions(rids: list[str]) -> Cmd:
    """Deregister replicas that trade places with their previous version (same IDs): their
    definitions go beside the kept ones, as NAME.next."""
    return sh_args(
        'd=$1 live=$2 && shift 2 && mkdir -p -m 700 "$d" && for r; do [ ! -f "$live/$r.json" ] || mv -f "$live/$r.json" "$d/$r.next.json"; done',
        ROLLBACK_DIR, SERVICES_DIR, *rids,
        description=f"deregister {', '.join(rids)} from this host's consul agent (kept: the version to go forward to)",
    )  # fmt: skip


def swap_with_previous(rid: str, grace: float) -> Cmd:
    """The running replica stops (SIGTERM, up to `grace` s) and trades names with its kept
    previous version, which starts."""
    return sh_args(
        'c=$1 s=$3; docker stop -t "$2" "$c" >/dev/null && docker rename "$c" "$c.next" && docker rename "$c$s" "$c" && '
        'docker rename "$c.next" "$c$s" && docker start "$c" >/dev/null',
        container_name(rid), str(max(1, round(grace))), RETIRED_SUFFIX,
        description=f"stop {rid} (up to {grace:g}s for in-flight requests), start its previous version in its place",
    )  # fmt: skip


def promote_definitions(rids: list[str]) -> Cmd:
    """The kept definitions go live; the set-aside ones are kept in their place."""
    return sh_args(
        'd=$1 live=$2 && shift 2 && for r; do { [ ! -f "$d/$r.json" ] || mv -f "$d/$r.json" "$live/$r.json"; } && '
        '{ [ ! -f "$d/$r.next.json" ] || mv -f "$d/$r.next.json" "$d/$r.json"; }; done',
        ROLLBACK_DIR, SERVICES_DIR, *rids,
        description=f"register the previous {', '.join(rids)} with consul",
    )  # fmt: skip
