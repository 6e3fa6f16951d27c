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

    def args(self) -> tuple[str, ...]:
        argv = [
            "consul", "agent",
            f"-node={self.node}",
            f"-datacenter={self.datacenter}",
            "-data-dir=/consul/data",
            f"-config-file={IN_CONTAINER_CONFIG}/gossip.json",
            *([f"-config-file={IN_CONTAINER_CONFIG}/{TLS_CONFIG}"] if self.tls_stage else []),
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
        Cmd(("docker", "exec", CONTAINER, "consul", "leave"), "leave the cluster gracefully, so raft drops this server"),
    ]


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


def wait_for_leader(timeout: float, voter: str | None = None) -> Cmd:
    """Until this agent knows a leader (HTTP on loopback, from inside the container) and, for a
    server, until raft counts `voter` as a voting member: a server that rejoined is a non-voter
    until autopilot promotes it, and restarting the next one before that could lose quorum."""
    return sh_args(
        'i=0; while :; do l=$(docker exec "$1" timeout 3 wget -qO- http://127.0.0.1:8500/v1/status/leader 2>/dev/null); '
        'case "$l" in *:*) '
        '  if [ -z "$4" ] || docker exec "$1" consul operator raft list-peers 2>/dev/null | '
        '     awk -v n="$4" \'$1 == n && $5 == "true" { f = 1 } END { exit !f }\'; then exit 0; fi ;; esac; '
        'i=$((i+1)); '
        'if [ "$i" -ge "$2" ]; then echo "consul on this host has no leader (or is not a voter) after $3s" >&2; docker logs --tail 5 "$1" >&2; exit 1; fi; '
        "sleep 0.5; done",
        CONTAINER,
        str(max(1, int(timeout * 2))),
        f"{timeout:g}",
        voter or "",
        description="wait until consul sees a leader" + (" and counts this server as a voter" if voter else ""),
    )
