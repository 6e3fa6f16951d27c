"""The consul phase: one Consul server microcontainer per server host, client agents elsewhere.

- bootstrap-expect is the number of servers in the cluster file; retry-join lists every server's
  cluster address known from the facts (or the file); joining any one member is enough.
- bind/advertise: the host's cluster address, from its facts or the file; never guessed.
- HTTP and DNS listen on loopback and on the docker0 address (where containers send DNS).
- Unchanged agents are left alone: the container's clusterctl.config label is the digest of
  everything that would make it run differently. A changed agent is replaced one host at a time
  (rolling), each waiting for a leader, so quorum holds.
"""

from __future__ import annotations

from clusterctl.commands import consul as build
from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.commands.files import sha256, write_secret
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts
from clusterctl.phases.base import Context, PlanError
from clusterctl.phases.engine import dns_address

LEADER_TIMEOUT = 90.0


def cluster_address(ctx: Context, host: Host) -> str | None:
    facts = ctx.facts.get(host.name)
    if host.cluster_address:
        return host.cluster_address
    return facts.cluster_address() if facts else None


def agent_config(ctx: Context, host: Host, facts: HostFacts) -> build.AgentConfig:
    spec = ctx.cluster.spec
    bind = cluster_address(ctx, host)
    if not bind:
        raise PlanError("no cluster address: none in the file and none found in the host's facts")
    servers = [h for h in spec.hosts if h.is_server]
    if not servers:
        raise PlanError("consul needs at least one host with role server")
    joins = sorted({a for h in servers if (a := cluster_address(ctx, h)) and a != bind})
    if not ctx.inputs.base_image or not ctx.inputs.filebox_container:
        raise PlanError("no filebox: consul runs from the filebox (set filebox.binaries to include consul)")
    return build.AgentConfig(
        node=host.name,
        server=host.is_server,
        bootstrap_expect=len(servers),
        retry_join=tuple(joins),
        bind=bind,
        client_addresses=("127.0.0.1", dns_address(facts)),
        datacenter=spec.consul.datacenter,
        recursors=facts.nameservers,
        image=ctx.inputs.base_image,
        filebox_container=ctx.inputs.filebox_container,
        cluster=ctx.cluster.name,
    )


def config_digest(cfg: build.AgentConfig, gossip_sha: str) -> str:
    # retry-join and bootstrap-expect only matter when an agent starts or the cluster first
    # bootstraps; a server that is down, or one added to the file, must not restart the others.
    from dataclasses import replace

    return replace(cfg, retry_join=(), bootstrap_expect=0).digest(gossip_sha)


class ConsulPhase:
    name = "consul"
    title = "Consul agents: servers joined into one cluster, clients on the rest"

    def _state(self, ctx: Context, host: Host, facts: HostFacts):
        key = ctx.inputs.gossip_key
        if not key:
            raise PlanError("no gossip key")
        gossip = build.gossip_file(key)
        cfg = agent_config(ctx, host, facts)
        digest = config_digest(cfg, sha256(gossip))
        return gossip, cfg, digest, facts.container(build.CONTAINER)

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        if not ctx.cluster.spec.consul.enabled:
            return []
        gossip, cfg, digest, current = self._state(ctx, host, facts)
        cmds: list[Cmd] = []
        if current is not None and current.labels.get("clusterctl.config") == digest:
            if current.running:
                voters = facts.docker.consul_voters
                if not host.is_server or (voters is not None and voters.get(host.name)):
                    return []
                # Up to date but not (yet) a voter, e.g. it restarted with its host: done only
                # once autopilot promotes it, so `up` never reports a cluster short of quorum.
            else:
                cmds.append(build.start_agent())
        else:
            if facts.managed_files.get(build.GOSSIP_FILE) != sha256(gossip):
                cmds.append(write_secret(build.GOSSIP_FILE, gossip, "0600", "write the gossip encryption key"))
            if current is not None:
                cmds.append(build.remove_agent())
            cmds.append(build.make_services_dir())
            cmds.append(build.run_agent(cfg, digest))
        cmds.append(build.wait_for_leader(LEADER_TIMEOUT, voter=host.name if host.is_server else None))
        return [as_root(c, facts.sudo) for c in cmds]

    def rolling(self, ctx: Context, host: Host, facts: HostFacts) -> bool:
        """Replacing a running agent goes one host at a time; first starts go together."""
        if not ctx.cluster.spec.consul.enabled:
            return False
        _, _, digest, current = self._state(ctx, host, facts)
        return current is not None and current.running and current.labels.get("clusterctl.config") != digest
