"""Builders for the Consul agent microcontainer: BusyBox + consul from the filebox, --net=host.

The agent's whole configuration is its argv plus one gossip-key file; the hash of both is put on
the container as a label, so the phase can tell "unchanged" from the facts alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from clusterctl.commands.base import Cmd, sh_args

CONTAINER = "clusterctl-consul"
DATA_VOLUME = "clusterctl-consul-data"
CONFIG_DIR = "/etc/clusterctl/consul"
GOSSIP_FILE = f"{CONFIG_DIR}/gossip.json"
# Service definitions, one file per service replica on the host (phases/services.py).
SERVICES_DIR = f"{CONFIG_DIR}/services"
IN_CONTAINER_CONFIG = "/consul/config"
# RPC TLS (clusterctl/pki.py makes the CA and each agent's certificate): these files sit in
# CONFIG_DIR beside the gossip key, all 0600, written in one go from stdin (write_secrets).
TLS_CONFIG = "tls.json"
CA_CERT, AGENT_CERT, AGENT_KEY = "ca.pem", "agent.pem", "agent-key.pem"
# A cluster moves to verified TLS in steps, each rolled over every agent, so agents of two
# neighbouring steps always talk (Consul's own recipe for a running cluster):
#   0 no TLS; 1 certificates, still plain (accepts TLS, speaks plain); 2 speaks TLS, checks the
#   server's name (verify_outgoing, verify_server_hostname); 3 refuses plain (verify_incoming).
# A new cluster starts at TLS_FINAL.
TLS_FINAL = 3
# ACLs (phases/consul_acl.py makes the tokens): acl.json holds the agent's ACL settings and its
# own token, agent.token the same token alone, for the consul CLI run in the container
# (CONSUL_HTTP_TOKEN_FILE: a path, never the token, on a command line). Both 0600, beside the key.
ACL_CONFIG, AGENT_TOKEN = "acl.json", "agent.token"
# The agent's token on the host (root only; mounted into its container as its config).
AGENT_TOKEN_FILE = f"{CONFIG_DIR}/{AGENT_TOKEN}"
# Like TLS, a running cluster gets ACLs in steps: 0 none; 1 on, default allow (the ACL system
# exists and is bootstrapped, nothing is refused yet); 2 default deny, each agent with its token
# (made between the two). A new cluster starts at ACL_FINAL.
ACL_FINAL = 2
DNS_PORT = 53
# Leader election ~4 s instead of ~7 s (the default is tuned for slow, shared production disks).
RAFT_HCL = "performance { raft_multiplier = 1 }"


@dataclass(frozen=True)
class AgentConfig:
    node: str
    server: bool
    bootstrap_expect: int
    retry_join: tuple[str, ...]
    bind: str
    # The HTTP API listens on loopback only: the operator reaches it through SSH, containers never.
    client_addresses: tuple[str, ...]
    # DNS listens here only: loopback and the address containers send DNS to (docker0).
    dns_addresses: tuple[str, ...]
    datacenter: str
    recursors: tuple[str, ...]
    image: str
    filebox_container: str
    cluster: str
    # The agent's TLS step (above); 0 for no TLS.
    tls_stage: int = TLS_FINAL
    # The agent's ACL step (above); 0 for no ACLs.
    acl_stage: int = ACL_FINAL

    def args(self) -> tuple[str, ...]:
        argv = [
            "consul", "agent",
            f"-node={self.node}",
            f"-datacenter={self.datacenter}",
            "-data-dir=/consul/data",
            f"-config-file={IN_CONTAINER_CONFIG}/gossip.json",
            *([f"-config-file={IN_CONTAINER_CONFIG}/{TLS_CONFIG}"] if self.tls_stage else []),
            *([f"-config-file={IN_CONTAINER_CONFIG}/{ACL_CONFIG}"] if self.acl_stage else []),
            f"-config-dir={IN_CONTAINER_CONFIG}/services",
            f"-bind={self.bind}",
            f"-advertise={self.bind}",
            f"-client={' '.join(self.client_addresses)}",
            f"-dns-port={DNS_PORT}",
            "-hcl", RAFT_HCL,
            "-hcl", f"addresses {{ dns = {json.dumps(' '.join(self.dns_addresses))} }}",
        ]  # fmt: skip
        if self.server:
            argv += ["-server", f"-bootstrap-expect={self.bootstrap_expect}", "-ui"]
        argv += [f"-retry-join={a}" for a in self.retry_join]
        argv += [f"-recursor={r}" for r in self.recursors]
        return tuple(argv)

    def digest(self, files_sha256: str) -> str:
        """Changes whenever the agent would run differently: argv, image, its files (key, TLS)."""
        doc = {"args": self.args(), "image": self.image, "filebox": self.filebox_container, "gossip": files_sha256}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def gossip_file(key: str) -> bytes:
    return json.dumps({"encrypt": key}).encode()


def tls_config(stage: int) -> bytes:
    """The agent's TLS settings at a step (see TLS_FINAL); HTTP stays plain, on loopback only."""
    where = IN_CONTAINER_CONFIG
    doc = {
        "ca_file": f"{where}/{CA_CERT}", "cert_file": f"{where}/{AGENT_CERT}", "key_file": f"{where}/{AGENT_KEY}",
        "verify_outgoing": stage >= 2, "verify_server_hostname": stage >= 2, "verify_incoming": stage >= 3,
    }  # fmt: skip
    return json.dumps(doc, sort_keys=True).encode()


def acl_config(stage: int, agent_token: str | None) -> bytes:
    """The agent's ACL settings at a step (see ACL_FINAL); the token only at the final one."""
    acl: dict[str, object] = {
        "enabled": True,
        "default_policy": "deny" if stage >= ACL_FINAL else "allow",
        # Servers unreachable: keep answering from cached policies rather than refusing all.
        "down_policy": "extend-cache",
        "enable_token_persistence": True,
    }
    if stage >= ACL_FINAL:
        if not agent_token:
            raise ValueError("the final ACL step needs the agent's token")
        acl["tokens"] = {"agent": agent_token}
    return json.dumps({"acl": acl}, sort_keys=True).encode()


# The address the agent binds and advertises (phases/consul.py refuses to move a server's).
LABEL_ADDRESS = "clusterctl.consul.address"


def run_agent(cfg: AgentConfig, digest: str) -> Cmd:
    role = "server" if cfg.server else "client"
    return Cmd(
        (
            "docker", "run", "-d", "--name", CONTAINER,
            "--net", "host", "--restart", "unless-stopped",
            "--volumes-from", cfg.filebox_container,
            "-v", f"{DATA_VOLUME}:/consul/data",
            "-v", f"{CONFIG_DIR}:{IN_CONTAINER_CONFIG}:ro",
            "--label", f"clusterctl.cluster={cfg.cluster}",
            "--label", "clusterctl.role=consul",
            "--label", f"clusterctl.consul.mode={role}",
            "--label", f"clusterctl.consul.tls={cfg.tls_stage}",
            "--label", f"clusterctl.consul.acl={cfg.acl_stage}",
            "--label", f"{LABEL_ADDRESS}={cfg.bind}",
            "--label", f"clusterctl.config={digest}",
            cfg.image, *cfg.args(),
        ),
        description=f"start consul {role}",
    )  # fmt: skip


def make_services_dir() -> Cmd:
    return Cmd(("mkdir", "-p", SERVICES_DIR), "make the directory for service definitions")


def remove_agent() -> Cmd:
    return Cmd(("docker", "rm", "-f", CONTAINER), "remove the old consul container", check=False)


def leave_agent() -> list[Cmd]:
    """A server about to become a client: leave the cluster gracefully (raft removes this server,
    the others' quorum shrinks with it) without the restart policy bringing it back meanwhile."""
    return [
        Cmd(("docker", "update", "--restart", "no", CONTAINER), "keep the consul server from restarting while it leaves"),
        consul_cli("leave", description="leave the cluster gracefully, so raft drops this server"),
    ]


# In the agent's container: the consul CLI with the agent's own token when it has one (a file:
# the token stays off every command line), else none (no ACLs, or ACLs still on allow).
WITH_AGENT_TOKEN = (
    f'if [ -f {IN_CONTAINER_CONFIG}/{AGENT_TOKEN} ]; then '
    f'export CONSUL_HTTP_TOKEN_FILE={IN_CONTAINER_CONFIG}/{AGENT_TOKEN}; fi; '
)


def consul_cli(*args: str, description: str, check: bool = True) -> Cmd:
    """`consul ARGS` in the agent's container, with the agent's token (WITH_AGENT_TOKEN)."""
    return Cmd(
        ("docker", "exec", CONTAINER, "sh", "-c", WITH_AGENT_TOKEN + 'exec consul "$@"', "consul", *args),
        description=description,
        check=check,
    )


def remove_data_volume() -> Cmd:
    """Not `docker volume rm -f`: on a swarm manager, -f (or a volume that is not there) also asks
    the swarm for a cluster volume, which fails ("unknown method ListVolumes") when the swarm's
    leader runs Docker older than 23, as in a swarm of mixed versions."""
    return sh_args(
        'if docker volume inspect "$1" >/dev/null 2>&1; then docker volume rm "$1" >/dev/null; fi',
        DATA_VOLUME,
        description="remove consul's data volume",
    )


def start_agent() -> Cmd:
    return Cmd(("docker", "start", CONTAINER), "start the stopped consul container")


# The agent's HTTP API on the host's loopback through bash's /dev/tcp: a few ms a request, where
# a `docker exec` of BusyBox wget in the agent's container costs ~0.1 s of a busy host's CPU
# (hosts without bash poll that way still). `get PATH`: $status (the status line), $index (its
# X-Consul-Index), $body; 1 when nothing answered. $AGENT_PORT: the API's port; $hdr: headers to
# send (empty, or e.g. "X-Consul-Token: ...$cr$nl"). `put PATH TOKEN BODY`: 0 when answered 200
# ($status, $body as for get). Tokens go by printf, a builtin: on no command line.
AGENT_GET_BASH = (
    'printf -v cr "\\r"; printf -v nl "\\n"; '
    'get() { status="" index="" body=""; exec 3<>"/dev/tcp/127.0.0.1/$AGENT_PORT" || return 1; '
    'printf "GET %s HTTP/1.0$cr\\n%s$cr\\n" "$1" "${hdr:-}" >&3; IFS= read -r -t 5 status <&3 || { exec 3<&-; return 1; }; '
    'while IFS= read -r -t 5 l <&3; do l=${l%$cr}; [ -z "$l" ] && break; '
    'case "$l" in [Xx]-[Cc]onsul-[Ii]ndex:*) index=${l#*: } ;; esac; done; body=$(cat <&3); exec 3<&-; }; '
    'put() { status="" body=""; exec 3<>"/dev/tcp/127.0.0.1/$AGENT_PORT" || return 1; '
    'printf "PUT %s HTTP/1.0$cr\\nX-Consul-Token: %s$cr\\nContent-Type: application/json$cr\\nContent-Length: %s$cr\\n$cr\\n%s" "$1" "$2" "${#3}" "$3" >&3; '
    'IFS= read -r -t 5 status <&3; while IFS= read -r -t 5 l <&3 && [ -n "${l%$cr}" ]; do :; done; body=$(cat <&3); exec 3<&-; '
    'case "$status" in *" 200 "*) return 0 ;; esac; return 1; }; '
)
AGENT_PORT = 8500

# The leader wait in bash (AGENT_GET_BASH), every 0.1 s: $1 the server to count as a voter ("" for
# a client: a leader is all it waits for), $2 seconds, $3 the agent token's file. Raft is read as
# `consul operator raft list-peers` reads it (from the leader), with the agent's token; an agent
# whose token does not exist yet (a first start, before the ACL settle) waits for a leader only.
_WAIT_LEADER_BASH = AGENT_GET_BASH + (
    'LC_ALL=C; hdr=""; if [ -n "$1" ] && [ -r "$3" ]; then tok=""; { IFS= read -r tok || [ -n "$tok" ]; } <"$3"; '
    '[ -n "$tok" ] && hdr="X-Consul-Token: $tok$cr$nl"; fi; '
    'end=$((SECONDS + ${2%.*} + 1)); while [ "$SECONDS" -lt "$end" ]; do '
    'if get /v1/status/leader 2>/dev/null && case "$status" in *" 200 "*) true ;; *) false ;; esac; then case "$body" in *:*) '
    '[ -z "$1" ] && exit 0; '
    'if get /v1/operator/raft/configuration 2>/dev/null; then case "$status" in '
    '*" 200 "*) IFS="}" read -r -a servers <<<"$body"; for e in "${servers[@]}"; do '
    'case "$e" in *"\\"Node\\":\\"$1\\""*"\\"Voter\\":true"*) exit 0 ;; esac; done ;; '
    '*" 403 "*) case "$body" in *"ACL not found"*) exit 0 ;; esac ;; '
    'esac; fi ;; esac; fi; sleep 0.1; done; exit 1'
)


def wait_for_leader(timeout: float, voter: str | None = None, why: str = "") -> Cmd:
    """Until this agent knows a leader (its HTTP API on loopback: from the host with bash,
    _WAIT_LEADER_BASH; else from inside the container) and, for a server, until raft counts
    `voter` as a voting member: a server that rejoined is a non-voter until autopilot promotes
    it, and restarting the next one before that could lose quorum. `why`: what the plan knows of
    the reason to wait, for its description."""
    return sh_args(
        'if command -v bash >/dev/null 2>&1; then AGENT_PORT=$6 bash -c "$7" bash "$4" "$3" "$8" && exit 0; '
        'echo "consul on this host has no leader (or is not a voter) after $3s" >&2; docker logs --tail 5 "$1" >&2; exit 1; fi; '
        'i=0; while :; do l=$(docker exec "$1" timeout 3 wget -qO- http://127.0.0.1:8500/v1/status/leader 2>/dev/null); '
        'case "$l" in *:*) '
        '  if [ -z "$4" ]; then exit 0; fi; '
        '  p=$(docker exec "$1" sh -c "$5"\'exec consul operator raft list-peers\' 2>&1) || '
        # The agent's token is made once the cluster first has a leader (phases/consul_acl.py):
        # until then raft cannot be read, and a leader is all a first start waits for.
        '    case "$p" in *"ACL not found"*) exit 0 ;; esac; '
        '  if printf "%s\\n" "$p" | awk -v n="$4" \'$1 == n && $5 == "true" { f = 1 } END { exit !f }\'; then exit 0; fi ;; esac; '
        'i=$((i+1)); '
        'if [ "$i" -ge "$2" ]; then echo "consul on this host has no leader (or is not a voter) after $3s" >&2; docker logs --tail 5 "$1" >&2; exit 1; fi; '
        "sleep 0.5; done",
        CONTAINER,
        str(max(1, int(timeout * 2))),
        f"{timeout:g}",
        voter or "",
        WITH_AGENT_TOKEN,
        str(AGENT_PORT),
        _WAIT_LEADER_BASH,
        AGENT_TOKEN_FILE,
        description="wait until consul sees a leader" + (" and counts this server as a voter" if voter else "") + (f" ({why})" if why else ""),
    )
