"""The consul phase: one Consul server microcontainer per server host, client agents elsewhere.

- Which hosts are servers: their roles in the file, else the choice of schedule/servers.py from
  the file and the hosts that run a server now (`server_choice`: each host's own agent, and for
  hosts that did not answer, the raft configuration other agents report).
- bootstrap-expect is the number of servers; retry-join lists every server's cluster address
  known from the facts (or the file); joining any one member is enough.
- bind/advertise: the host's cluster address, from its facts or the file; never guessed. With
  the wireguard driver across providers, its mesh address (network/addresses.py).
- The HTTP API listens on loopback only; DNS on loopback and on the docker0 address (where
  containers send DNS), nothing else.
- Unchanged agents are left alone: the container's clusterctl.config label is the digest of
  everything that would make it run differently. A changed agent is replaced one host at a time
  (rolling), each waiting for a leader, so quorum holds. A server that becomes a client (its
  roles say so) first leaves the cluster gracefully, so raft drops it before it restarts.
"""

from __future__ import annotations

from collections.abc import Mapping

from clusterctl.commands import consul as build
from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.commands.files import sha256, write_secrets
from clusterctl.config.loader import Cluster
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts
from clusterctl.network.addresses import NoMeshAddress, over_mesh, talk_address
from clusterctl.phases.base import Context, ContextMemo, PhaseError, PlanError
from clusterctl.phases.consul_acl import target_acl_stage
from clusterctl.phases.consul_tls import target_stage
from clusterctl.phases.engine import dns_address
from clusterctl.schedule.servers import ServerChoice, choose_servers
from clusterctl.shipping.store import image_ref

LEADER_TIMEOUT = 90.0


def cluster_address(ctx: Context, host: Host) -> str | None:
    """The address the host's agent binds and advertises (network/addresses.py: its cluster
    address, or its mesh address when a wireguard cluster spans providers); None if unknown."""
    try:
        return talk_address(ctx.cluster, host, ctx.facts.get(host.name))
    except NoMeshAddress:
        return None


def _own_agent(cluster: Cluster, facts: HostFacts):
    agent = facts.container(build.CONTAINER)
    return agent if agent is not None and agent.labels.get("clusterctl.cluster") == cluster.name else None


def running_servers(cluster: Cluster, facts: Mapping[str, HostFacts]) -> frozenset[str]:
    """Hosts of the file that run a Consul server of this cluster now (running or stopped).

    A host whose engine answered says so itself (its agent's clusterctl.consul.mode label); for
    the others (down, engine stopped, left out of a --host run) the raft configuration that this
    cluster's answering agents report names the servers."""
    own: dict[str, bool] = {}
    raft: set[str] = set()
    for name, f in facts.items():
        if not f.docker.running:
            continue
        agent = _own_agent(cluster, f)
        own[name] = agent is not None and agent.labels.get("clusterctl.consul.mode") == "server"
        if agent is not None and f.docker.consul_voters:
            raft.update(f.docker.consul_voters)
    return frozenset(h.name for h in cluster.hosts if (own[h.name] if h.name in own else h.name in raft))


def server_choice(cluster: Cluster, facts: Mapping[str, HostFacts]) -> ServerChoice:
    """The server hosts: roles from the file, the rest chosen (schedule/servers.py), keeping the
    hosts that run a server now."""
    spec = cluster.spec
    return choose_servers(spec.hosts, spec.consul.servers_spread, running_servers(cluster, facts))


# Per Context: the consul and network phases (swarm managers) plan from the same choice.
chosen_servers = ContextMemo(lambda ctx: server_choice(ctx.cluster, ctx.facts))


def _raft_known(ctx: Context) -> bool:
    """Whether an answering agent of this cluster reported raft's servers."""
    return any(_own_agent(ctx.cluster, f) is not None and f.docker.consul_voters for f in ctx.facts.values())


def _not_a_voter_why(name: str, voters: Mapping[str, bool] | None, error: str | None) -> str:
    """Why a running, up-to-date server is waited for: what this host's probe read of raft."""
    if voters is None:
        return "its agent's raft view could not be read" + (f": {error}" if error else "")
    if name in voters:
        return "raft counts it as a non-voter"
    return "raft lists " + (", ".join(sorted(voters)) or "no server") + ", not this host"


def _leave_blockers(ctx: Context, host: Host, facts: HostFacts) -> list[str]:
    """Why this server may not leave now: raft's other servers whose agent does not run (the
    removal would need them for its quorum), or no raft view at all."""
    voters = facts.docker.consul_voters
    if not voters:
        return ["raft's servers (this agent reports none)"]
    down = []
    for name in sorted(voters):
        f = ctx.facts.get(name)
        agent = _own_agent(ctx.cluster, f) if f is not None else None
        if name != host.name and not (agent is not None and agent.running):
            down.append(name)
    return down


def agent_config(ctx: Context, host: Host, facts: HostFacts) -> build.AgentConfig:
    spec = ctx.cluster.spec
    try:
        bind = talk_address(ctx.cluster, host, facts)
    except NoMeshAddress as exc:
        raise PlanError(str(exc)) from None
    if not bind:
        raise PlanError("no cluster address: none in the file and none found in the host's facts")
    choice = chosen_servers(ctx)
    servers = [h for h in spec.hosts if choice.is_server(h.name)]
    if not servers:
        raise PlanError("consul needs at least one host with role server")
    joins = sorted({a for h in servers if (a := cluster_address(ctx, h)) and a != bind})
    if not ctx.inputs.base_image or not ctx.inputs.filebox_container:
        raise PlanError("no filebox: consul runs from the filebox (set filebox.binaries to include consul)")
    return build.AgentConfig(
        node=host.name,
        server=choice.is_server(host.name),
        bootstrap_expect=len(servers),
        retry_join=tuple(joins),
        bind=bind,
        client_addresses=("127.0.0.1",),
        dns_addresses=("127.0.0.1", dns_address(facts)),
        datacenter=spec.consul.datacenter,
        recursors=facts.nameservers,
        image=image_ref(ctx.inputs.base_image, facts),
        filebox_container=ctx.inputs.filebox_container,
        cluster=ctx.cluster.name,
        tls_stage=tls_stage(ctx),
        acl_stage=acl_stage(ctx),
    )


# Per Context: the step every agent moves to in this pass (phases/consul_tls.py).
tls_stage = ContextMemo(target_stage)
# And the ACL step (phases/consul_acl.py).
acl_stage = ContextMemo(target_acl_stage)


def agent_files(ctx: Context, host: Host, cfg: build.AgentConfig) -> dict[str, bytes]:
    """The agent's files in CONFIG_DIR, all secret or private: gossip key, TLS settings, the
    CA's certificate, its own certificate and key, ACL settings and its own token."""
    key = ctx.inputs.gossip_key
    if not key:
        raise PlanError("no gossip key")
    files = {"gossip.json": build.gossip_file(key)}
    if cfg.tls_stage:
        tls = ctx.inputs.tls
        if tls is None or host.name not in tls.agents:
            raise PlanError("no TLS certificate for this host (the operator's CA was not settled)")
        mine = tls.agents[host.name]
        files |= {build.TLS_CONFIG: build.tls_config(cfg.tls_stage), build.CA_CERT: tls.ca_cert,
                  build.AGENT_CERT: mine.cert_pem, build.AGENT_KEY: mine.key_pem}  # fmt: skip
    if cfg.acl_stage:
        token = None
        if cfg.acl_stage >= build.ACL_FINAL:
            acl = ctx.inputs.acl
            if acl is None or host.name not in acl.agents:
                raise PlanError("no ACL token for this host's agent (the operator's tokens were not settled)")
            token = acl.agents[host.name]
            files[build.AGENT_TOKEN] = token.encode()
        files[build.ACL_CONFIG] = build.acl_config(cfg.acl_stage, token)
    return files


def files_digest(files: dict[str, bytes]) -> str:
    return sha256("".join(f"{name}:{sha256(data)};" for name, data in sorted(files.items())))


def config_digest(cfg: build.AgentConfig, gossip_sha: str) -> str:
    # retry-join and bootstrap-expect only matter when an agent starts or the cluster first
    # bootstraps; a server that is down, or one added to the file, must not restart the others.
    from dataclasses import replace

    return replace(cfg, retry_join=(), bootstrap_expect=0).digest(gossip_sha)


class ConsulPhase:
    name = "consul"
    title = "Consul agents: servers joined into one cluster, clients on the rest"
    # A running cluster moves to verified TLS one step a pass (phases/consul_tls.py); a pass
    # with nothing to do ends the phase.
    passes = 1 + build.TLS_FINAL
    # A host that ran a pass's commands reads its own facts at the end of its script; the others
    # are not probed again. What another host's change alters in a host's facts is its view of
    # raft, and the plans read raft only for the host's own vote and as the union of the views
    # (which the changed host's fresh view covers).
    own_facts_suffice = True

    def _state(self, ctx: Context, host: Host, facts: HostFacts):
        cfg = agent_config(ctx, host, facts)
        files = agent_files(ctx, host, cfg)
        digest = config_digest(cfg, files_digest(files))
        return files, cfg, digest, facts.container(build.CONTAINER)

    def check(self, ctx: Context) -> None:
        """Refused before anything runs: a running server that would move to another address
        (e.g. a cluster now spanning providers on the wireguard driver, whose agents talk over
        the mesh). Servers moving under a running cluster can lose its quorum for good: each
        would look for the others where they are not yet (Consul 1.8 has no safe way here)."""
        if not ctx.cluster.spec.consul.enabled:
            return
        mesh = over_mesh(ctx.cluster)
        moving = []
        for host in ctx.cluster.spec.hosts:
            facts = ctx.facts.get(host.name)
            agent = _own_agent(ctx.cluster, facts) if facts is not None else None
            if agent is None or agent.labels.get("clusterctl.consul.mode") != "server":
                continue
            now = agent.labels.get(build.LABEL_ADDRESS)
            plain = host.cluster_address or facts.cluster_address()  # type: ignore[union-attr]
            if now and ((mesh and now == plain) or (not mesh and now != plain)):
                moving.append(f"{host.name} ({now})")
        if moving:
            why = (
                "the cluster talks over its WireGuard mesh now (hosts of several providers)"
                if mesh
                else "the hosts' cluster addresses changed (or the cluster left the mesh)"
            )
            raise PhaseError(
                f"consul servers would move to new addresses: {', '.join(moving)}; {why}. Moving the servers of a "
                "running Consul is not done: `clusterctl down --yes` then `up` makes Consul anew (its KV is lost; "
                "services register again), or keep the addresses"
            )

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        if not ctx.cluster.spec.consul.enabled:
            return []
        files, cfg, digest, current = self._state(ctx, host, facts)
        own = _own_agent(ctx.cluster, facts)
        was_server = own is not None and own.labels.get("clusterctl.consul.mode") == "server"
        if cfg.server and not was_server and host.roles is None and ctx.outside and not _raft_known(ctx):
            # A new server chosen without knowing where the servers run now could move one.
            raise PlanError(
                "which hosts run consul servers is unknown in this --host run (no agent of this cluster answered): "
                "run up on every host, or add a host that runs one to --host"
            )
        cmds: list[Cmd] = []
        why = ""
        if current is not None and current.labels.get("clusterctl.config") == digest:
            if current.running:
                voters = facts.docker.consul_voters
                if not cfg.server or (voters is not None and voters.get(host.name)):
                    return []
                # Up to date but not (yet) a voter, e.g. it restarted with its host: done only
                # once autopilot promotes it, so `up` never reports a cluster short of quorum.
                why = _not_a_voter_why(host.name, voters, facts.docker.consul_raft_error)
            else:
                cmds.append(build.start_agent())
        else:
            if any(facts.managed_files.get(f"{build.CONFIG_DIR}/{name}") != sha256(data) for name, data in files.items()):
                what = "the gossip encryption key" + (", TLS certificate and settings" if cfg.tls_stage else "")
                what += ", ACL settings" + (" and token" if cfg.acl_stage >= build.ACL_FINAL else "") if cfg.acl_stage else ""
                cmds.append(write_secrets(build.CONFIG_DIR, files, f"write {what} (0600)"))
            if current is not None:
                if was_server and not cfg.server and current.running:
                    # A server becoming a client leaves first, so raft drops it and the others
                    # keep their quorum (a stopped one is a dead server autopilot drops); only
                    # while every other server runs, or the removal itself could lose quorum.
                    blockers = _leave_blockers(ctx, host, facts)
                    if blockers:
                        raise PlanError(
                            "not made a client yet: a server leaves only while every other server runs; "
                            f"unknown or not running: {', '.join(blockers)}"
                        )
                    cmds += build.leave_agent()
                cmds.append(build.remove_agent())
            cmds.append(build.make_services_dir())
            cmds.append(build.run_agent(cfg, digest))
        cmds.append(build.wait_for_leader(LEADER_TIMEOUT, voter=host.name if cfg.server else None, why=why))
        return [as_root(c, facts.sudo) for c in cmds]

    def rolling(self, ctx: Context, host: Host, facts: HostFacts) -> bool:
        """Replacing a running agent goes one host at a time; first starts go together."""
        if not ctx.cluster.spec.consul.enabled:
            return False
        _, _, digest, current = self._state(ctx, host, facts)
        return current is not None and current.running and current.labels.get("clusterctl.config") != digest
