"""The run's gossip key, settled on the operator's side right after the probe (the manager's
`prepare` step), before any phase plans.

Never a new key over a running cluster: a key made while the hosts run Consul of this cluster
would roll every agent onto it and cut them off from each other. So the key is only read before
the probe, and made only when the probe shows that no host runs Consul of this cluster:

- the key is in the state dir: it is used (an empty or malformed file is an error, never replaced);
- it is missing and a probed host runs Consul of this cluster (its agent container labelled with
  the cluster's name, or the gossip file among its managed files): refused, one line naming the
  hosts and the missing file, exit 2, nothing sent beyond the probe;
- it is missing and the run is limited by --host: refused too (the other hosts are unknown);
- otherwise it is made once, atomically (secrets.py); a dry run makes nothing and plans with a
  placeholder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from clusterctl.commands.consul import GOSSIP_FILE, gossip_file
from clusterctl.commands.files import sha256
from clusterctl.phases.base import Context, Inputs, cluster_containers
from clusterctl.secrets import GOSSIP_KEY, PLACEHOLDER, Secret, SecretError, gossip_key, read_secret


def consul_hosts(ctx: Context) -> list[str]:
    """Probed hosts that run (or ran) Consul of this cluster: its agent, or the gossip file."""
    return [
        name
        for name, f in ctx.facts.items()
        if cluster_containers(ctx, f, "consul") or GOSSIP_FILE in f.managed_files
    ]


def refuse_foreign(ctx: Context, host_file: str, expected: bytes, path: Path, what: str) -> None:
    """Refuse (SecretError) when the hosts that hold `host_file` for this cluster all hold another
    one than this state dir's secret would write: a state dir from another cluster would roll
    every agent onto its secret and cut them off from each other."""
    held = {name: f.managed_files[host_file] for name, f in ctx.facts.items() if host_file in f.managed_files and cluster_containers(ctx, f, "consul")}
    if held and sha256(expected) not in held.values():
        raise SecretError(
            f"{path}: not the {what} that cluster {ctx.cluster.name!r} runs on {', '.join(sorted(held))} "
            "(a state dir from another cluster?): get this cluster's from the operator that made it "
            "(`clusterctl secrets export -o FILE` there, `clusterctl secrets import FILE --force` here)"
        )


def gossip_inputs(ctx: Context, directory: Path, dry_run: bool) -> Inputs:
    """ctx.inputs with the run's gossip key (see the module docstring); SecretError to refuse."""
    cluster = ctx.cluster
    if not cluster.spec.consul.enabled:
        return ctx.inputs
    key = read_secret(directory, GOSSIP_KEY)
    if key is not None:
        refuse_foreign(ctx, GOSSIP_FILE, gossip_file(key.decode()), directory / GOSSIP_KEY, "gossip key")
        return replace(ctx.inputs, gossip_key=Secret(key.decode()))
    path = directory / GOSSIP_KEY
    fetch = "get it from the operator that made the cluster (`clusterctl secrets export -o FILE` there, `clusterctl secrets import FILE` here)"
    found = set(consul_hosts(ctx))
    running = [h.name for h in cluster.hosts if h.name in found]
    if running:
        raise SecretError(
            f"cluster {cluster.name!r} runs Consul on {', '.join(running)} but its gossip key {path} is missing: "
            f"{fetch}; a new key would cut every agent off"
        )
    if ctx.outside:
        raise SecretError(
            f"cluster {cluster.name!r} has no gossip key ({path} is missing) and this --host run cannot see whether "
            f"{', '.join(sorted(ctx.outside))} run Consul: run up on every host once, or {fetch}"
        )
    if not ctx.facts:  # no host answered: nothing to plan, and nothing known to make a key from
        return ctx.inputs
    if dry_run:
        return replace(ctx.inputs, gossip_key=Secret(PLACEHOLDER))
    return replace(ctx.inputs, gossip_key=gossip_key(directory))
