"""Consul's RPC TLS on the operator's side, settled right after the probe (beside the gossip key):
the cluster's CA and a certificate for each probed host's role, and the TLS step the agents
move to in this run.

- The CA is kept in the state dir (tls/ca.pem, certificate and key, 0600) and never sent to a
  host; only its certificate is. It is made only when no probed host already has TLS files of
  this cluster: an operator without the CA of a cluster that runs TLS is refused (one line), as
  a new CA would cut every agent off.
- Each host's certificate follows the role it gets in this run (server.<dc>.consul or
  client.<dc>.consul), kept and reused while it fits (pki.py), so a converged host is unchanged.
- A dry run makes nothing on disk: what is missing is made in memory.
- The step: a new cluster starts at TLS_FINAL; a running one moves one step a pass, each rolled
  over every agent (commands/consul.py), so agents of neighbouring steps always talk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from clusterctl.commands import consul as build
from clusterctl.phases.base import Context, Inputs, cluster_containers
from clusterctl.pki import CA, AgentCert, ClusterPKI, make_ca
from clusterctl.secrets import SecretError, install

CA_FILE_ON_HOST = f"{build.CONFIG_DIR}/{build.CA_CERT}"


@dataclass(frozen=True)
class TLSMaterial:
    ca_cert: bytes
    # Each probed host's certificate and key, by host name; never in a repr.
    agents: Mapping[str, AgentCert] = field(default_factory=dict, repr=False)


def agent_step(ctx: Context, name: str, label: str) -> int | None:
    """A step label of the host's agent of this cluster (0 for an agent from before the label),
    or None for a host without one."""
    facts = ctx.facts.get(name)
    agents = cluster_containers(ctx, facts, "consul") if facts else []
    if not agents:
        return None
    try:
        return int(agents[0].labels.get(label, "0"))
    except ValueError:
        return 0


def agent_stage(ctx: Context, name: str) -> int | None:
    """The TLS step of the host's agent of this cluster (0 for an agent from before TLS), or None."""
    return agent_step(ctx, name, "clusterctl.consul.tls")


def target_stage(ctx: Context) -> int:
    """The step every agent moves to in this pass: the final one for a new cluster; else one
    past the lowest step an agent of the cluster runs (agents of neighbouring steps talk)."""
    stages = [s for name in ctx.facts if (s := agent_stage(ctx, name)) is not None]
    if not stages:
        return build.TLS_FINAL
    low = min(stages)
    if ctx.outside and low < build.TLS_FINAL:
        return low  # hosts left out of a --host run may be a step behind: never outrun them
    return min(build.TLS_FINAL, low + 1)


def tls_inputs(ctx: Context, directory: Path, dry_run: bool) -> Inputs:
    """ctx.inputs with the CA's certificate and each probed host's certificate; SecretError to
    refuse (see the module docstring)."""
    cluster = ctx.cluster
    if not cluster.spec.consul.enabled:
        return ctx.inputs
    from clusterctl.phases.consul import chosen_servers

    pki = ClusterPKI(directory, cluster.name, (lambda path, data, replace_: True) if dry_run else install)
    ca: CA | None = pki.ca(create=False)
    if ca is not None:
        from clusterctl.phases.gossip import refuse_foreign

        refuse_foreign(ctx, CA_FILE_ON_HOST, ca.cert_pem, pki.ca_path, "TLS CA")
    if ca is None:
        running = [h.name for h in cluster.hosts if h.name in ctx.facts and CA_FILE_ON_HOST in ctx.facts[h.name].managed_files]
        if running:
            raise SecretError(
                f"cluster {cluster.name!r} runs Consul with TLS on {', '.join(running)} but its CA {pki.ca_path} is missing: "
                "get it from the operator that made the cluster (`clusterctl secrets export -o FILE` there, "
                "`clusterctl secrets import FILE` here); a new CA would cut every agent off"
            )
        ca = make_ca(cluster.name) if dry_run else pki.ca(create=True)
    assert ca is not None
    choice = chosen_servers(ctx)
    dc = cluster.spec.consul.datacenter
    agents = {name: pki.agent(ca, name, "server" if choice.is_server(name) else "client", dc) for name in ctx.facts}
    return replace(ctx.inputs, tls=TLSMaterial(ca.cert_pem, agents))
