"""Consul's ACLs on the operator's side: the tokens, the ACL step the agents move to, and the
one step of `up` that talks to Consul itself (`settle`: bootstrap, policies, tokens).

- Default deny. The anonymous token may read node and service names and nothing else, which is
  all DNS needs (`*.service.consul` answers in every container); every write needs a token.
- The management token comes from Consul's one-time bootstrap, made when the cluster first has
  a leader, and is kept only in the operator's state dir (acl/management.token, 0600): it never
  reaches a host, a command line, a plan or a report. The operator reaches the API through an
  SSH tunnel to a server's loopback (transport/tunnel.py) with it in a header.
- Each agent's token (a node identity, plus write on its own agent and read of raft, which the
  probe and the rolling wait need) and each service's token (a service identity: write on that
  service only) are made here first, as random UUIDs kept in the state dir, so a host's files can
  be written before Consul knows them; `settle` then creates them in Consul with those secrets.
  They reach a host only on stdin, into 0600 files.
- A running cluster gets ACLs in steps (commands/consul.py, ACL_FINAL): every agent turns ACLs
  on at "allow", then the cluster is bootstrapped and every token made, then every agent moves
  to "deny" with its token; DNS and a leader never stop. A new cluster starts at "deny".
- Refusals (SecretError, one line, exit 2), all before anything is sent when the cluster runs
  ACLs already: the bootstrap is refused (someone else bootstrapped it, and this state dir has
  no management token), or the management token is not this cluster's (a wrong file, or a state
  dir from another cluster).
- `settle` costs nothing on a converged cluster: a record (acl/settled.json) names what was last
  made and checked, and for which agent containers; only a change (a new host or service, an
  agent restarted, another token file) makes it talk to Consul again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clusterctl.commands import consul as build
from clusterctl.errors import LockHeld
from clusterctl.phases.base import Context, Inputs, cluster_containers
from clusterctl.secrets import PLACEHOLDER, Secret, SecretError, ensure_secret, install, read_secret

MANAGEMENT_TOKEN = "acl/management.token"
RECORD = "acl/settled.json"
ANONYMOUS = "00000000-0000-0000-0000-000000000002"
DNS_POLICY = "clusterctl-dns"
# Bump when a policy's rules change, so a converged cluster gets the new ones once.
RULES_VERSION = "1"
BOOTSTRAP_WAIT = 60.0


def agent_token_file(host: str) -> str:
    return f"acl/agent-{host}.token"


def service_token_file(service: str) -> str:
    return f"acl/service-{service}.token"


def agent_policy(host: str) -> str:
    return f"clusterctl-agent-{host}"


def dns_rules() -> dict:
    return {"node_prefix": {"": {"policy": "read"}}, "service_prefix": {"": {"policy": "read"}}}


def agent_rules(host: str) -> dict:
    # `consul reload` and `leave` on its own agent; raft's servers for the probe and the wait.
    return {"agent": {host: {"policy": "write"}}, "operator": "read"}


@dataclass(frozen=True)
class ACLMaterial:
    # Each probed host's agent token and each service's token; never in a repr.
    agents: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    services: Mapping[str, Secret] = field(default_factory=dict, repr=False)
    management: Secret | None = field(default=None, repr=False)
    # Whether Consul is known to hold every token above (settled in this run, or recorded).
    settled: bool = False


def agent_acl_stage(ctx: Context, name: str) -> int | None:
    """The ACL step of the host's agent of this cluster (0 for an agent from before ACLs), or None."""
    from clusterctl.phases.consul_tls import agent_step

    return agent_step(ctx, name, "clusterctl.consul.acl")


def target_acl_stage(ctx: Context) -> int:
    """The step every agent moves to in this pass: the final one for a new cluster; "allow" for
    a cluster without ACLs; "deny" once Consul holds every agent's token."""
    stages = [s for name in ctx.facts if (s := agent_acl_stage(ctx, name)) is not None]
    if not stages:
        return build.ACL_FINAL
    low = min(stages)
    if low >= build.ACL_FINAL:
        return build.ACL_FINAL
    if ctx.outside:
        return low  # hosts left out of a --host run may be a step behind: never outrun them
    if low == 0:
        return 1
    acl = ctx.inputs.acl
    return build.ACL_FINAL if acl is not None and acl.settled else 1


def acl_inputs(ctx: Context, directory: Path, dry_run: bool) -> Inputs:
    """ctx.inputs with every probed host's agent token and every service's token (made once,
    atomically; a dry run makes nothing on disk) and the management token when there is one."""
    cluster = ctx.cluster
    if not cluster.spec.consul.enabled:
        return ctx.inputs

    def token(name: str) -> Secret:
        value = read_secret(directory, name) if dry_run else ensure_secret(directory, name)
        return Secret((value or PLACEHOLDER.encode()).decode())

    agents = {name: token(agent_token_file(name)) for name in ctx.facts}
    services = {s.name: token(service_token_file(s.name)) for s in cluster.spec.services}
    material = ACLMaterial(agents, services, management_token(directory), settled=dry_run)
    return replace(ctx.inputs, acl=material)


# A py-consul client on a host's agent (through SSH), by host name.
OpenAPI = Callable[[str], AbstractContextManager[Any]]


def _record(ctx: Context, acl: ACLMaterial) -> str:
    """What `settle` made and checked, for which agent containers (a digest)."""
    containers = sorted(c.id for f in ctx.facts.values() for c in cluster_containers(ctx, f, "consul"))
    doc = {
        "cluster": ctx.cluster.name,
        "dc": ctx.cluster.spec.consul.datacenter,
        "rules": RULES_VERSION,
        "management": hashlib.sha256((acl.management or "").encode()).hexdigest(),
        "agents": {h: hashlib.sha256(t.encode()).hexdigest() for h, t in sorted(acl.agents.items())},
        "services": {s: hashlib.sha256(t.encode()).hexdigest() for s, t in sorted(acl.services.items())},
        "containers": containers,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def settle(ctx: Context, open_api: OpenAPI, directory: Path, dry_run: bool) -> Inputs:
    """Make Consul hold this cluster's ACL setup once its agents run ACLs (step >= 1) and have a
    leader: bootstrap (the first time), the policies, the anonymous token's policy, each agent's
    and each service's token. ctx.inputs with `settled` set; SecretError to refuse."""
    acl: ACLMaterial | None = ctx.inputs.acl
    if acl is None or dry_run or not ctx.cluster.spec.consul.enabled:
        return ctx.inputs
    with_acl = acl_agents(ctx)
    if not with_acl:
        return ctx.inputs
    if servers_to_start(ctx):
        # A server that should run does not (a run that failed halfway): the cluster may have no
        # leader until the consul phase starts it, so this waits for a later pass rather than
        # refusing the run and leaving the cluster as the failed one left it.
        return ctx.inputs
    record = _record(ctx, acl)
    path = directory / RECORD
    # An agent whose probe found its own token unknown (e.g. made over by hand) is made again.
    healthy = not any(ctx.facts[n].docker.consul_token_missing for n in with_acl)
    try:
        if healthy and path.read_text().strip() == record:
            return replace(ctx.inputs, acl=replace(acl, settled=True))
    except OSError:
        pass
    last: Exception | None = None
    for name in with_acl:
        made: list[str] = []
        made_agents: list[str] = []
        try:
            with open_api(name) as api:
                acl = _settle_via(ctx, api, acl, directory, made, made_agents)
        except (SecretError, LockHeld):  # LockHeld: the cluster's lock, taken before the first call
            raise
        except Exception as exc:  # noqa: BLE001 - try the next agent
            last = exc
            continue
        resync_agents(open_api, [n for n in with_acl if n in made_agents], acl.management)
        install(path, _record(ctx, acl).encode(), replace=True)
        notes = ctx.inputs.notes + ((f"consul ACLs (via {name}): " + "; ".join(made),) if made else ())
        # An agent whose token was just made: its probe could not read raft; now it can.
        unread = frozenset(n for n in made_agents if ctx.facts[n].docker.consul_voters is None)
        return replace(ctx.inputs, acl=replace(acl, settled=True), notes=notes, reprobe=ctx.inputs.reprobe | unread)
    raise SecretError(f"consul ACLs: could not reach any agent of cluster {ctx.cluster.name!r} to set them up: {last}")


def servers_to_start(ctx: Context) -> list[str]:
    """Probed hosts that are to run a Consul server of the cluster and run no agent now."""
    from clusterctl.phases.consul import chosen_servers

    choice = chosen_servers(ctx)
    return [n for n in ctx.facts if choice.is_server(n) and not any(c.running for c in cluster_containers(ctx, ctx.facts[n], "consul"))]


def acl_agents(ctx: Context) -> list[str]:
    """Probed hosts whose agent of this cluster runs with ACLs on (step >= 1), servers first (a
    server answers ACL and session calls without forwarding them)."""

    def agent(name: str):
        agents = cluster_containers(ctx, ctx.facts[name], "consul")
        return agents[0] if agents else None

    running = [n for n in ctx.facts if (a := agent(n)) is not None and a.running and (agent_acl_stage(ctx, n) or 0) >= 1]
    return sorted(running, key=lambda n: agent(n).labels.get("clusterctl.consul.mode") != "server")


def management_token(directory: Path) -> Secret | None:
    """The cluster's management token from the state dir (None before the bootstrap)."""
    value = read_secret(directory, MANAGEMENT_TOKEN)
    return Secret(value.decode()) if value else None


def resync_agents(open_api: OpenAPI, hosts: list[str], management: Secret | None) -> None:
    """Have each of these agents sync with the catalog now. An agent started with a token Consul
    did not know yet (a new cluster: its token is made once it has a leader) failed its first
    sync and waits 15-30 s before the next (Consul's anti-entropy), so its services would reach
    the catalog only then. Setting its default token through the API (to "", as its config has
    it: nothing persists) makes it sync at once. Not an agent whose own sync has reached the
    catalog (its node there carries the tagged addresses only the agent sends; the leader's entry
    has none): it retries nothing, and a full sync asked of it now would come only after Consul's
    random stagger (up to 3 s), holding back the sync of the services registered meanwhile. Best
    effort: the agent syncs later anyway."""
    if not hosts or management is None:
        return
    from concurrent.futures import ThreadPoolExecutor

    def one(host: str) -> None:
        try:
            with open_api(host) as api:
                _, entry = api.catalog.node(host, token=management)
                if isinstance(entry, dict) and (entry.get("Node") or {}).get("TaggedAddresses"):
                    return
                api.agent.token.set("default", "", token=management)
        except Exception:  # noqa: BLE001 - only a wait is saved
            pass

    with ThreadPoolExecutor(min(8, len(hosts))) as pool:
        list(pool.map(one, hosts))


def _settle_via(
    ctx: Context, api: Any, acl: ACLMaterial, directory: Path, made: list[str], made_agents: list[str] | None = None
) -> ACLMaterial:
    """Bootstrap (once), policies and tokens through `api`; what it made goes into `made` (the
    hosts whose agent token it made, into `made_agents`)."""
    import consul

    deadline = time.monotonic() + BOOTSTRAP_WAIT
    while not api.status.leader():  # tokens live in raft: nothing is made without a leader
        if time.monotonic() > deadline:
            raise SecretError(f"consul ACLs: cluster {ctx.cluster.name!r} has no leader after {BOOTSTRAP_WAIT:g}s")
        time.sleep(0.5)
    where = directory / MANAGEMENT_TOKEN
    fetch = "get it from the operator that made the cluster (`clusterctl secrets export -o FILE` there, `clusterctl secrets import FILE` here)"
    management = acl.management
    if management is not None and not _token_valid(api, management):
        # Not this cluster's token; or this cluster is new (never bootstrapped) and the file is
        # from a cluster that was torn down: the bootstrap tells the two apart.
        management = None
        stale = True
    else:
        stale = False
    # Bootstrapped by this call: Consul holds no token of ours yet, none is looked up before it is made.
    fresh = management is None
    if management is None:
        while True:
            try:
                secret = api.acl.bootstrap()["SecretID"]
                break
            except consul.ACLPermissionDenied:
                if stale:
                    raise SecretError(
                        f"{where}: not a management token of cluster {ctx.cluster.name!r} (Consul does not know it; "
                        f"a state dir from another cluster?): {fetch}"
                    ) from None
                raise SecretError(
                    f"cluster {ctx.cluster.name!r}: its Consul ACL system was bootstrapped already (by another operator?) "
                    f"and its management token {where} is missing here: {fetch}"
                ) from None
            except consul.ConsulException:
                # Right after the first leader the ACL system is still starting: ask again.
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        management = Secret(secret)
        install(where, management.encode(), replace=True)
        made.append(f"bootstrapped, management token kept in {where}")
    t = management
    policies = {p["Name"]: p["ID"] for p in api.acl.policy.list(token=t)}

    def ensure_policy(name: str, rules: dict, description: str, notes: list[str]) -> None:
        if name in policies:
            api.acl.policy.update(policies[name], name, token=t, description=description, rules=rules)
        else:
            policies[name] = api.acl.policy.create(name, token=t, description=description, rules=rules)["ID"]
            notes.append(f"policy {name} made")

    ensure_policy(DNS_POLICY, dns_rules(), "clusterctl: what DNS needs (read of node and service names)", made)
    api.acl.token.update(ANONYMOUS, token=t, description="Anonymous Token", policies_name=[DNS_POLICY])
    dc = ctx.cluster.spec.consul.datacenter

    def agent(host: str, secret: Secret) -> list[str]:
        notes: list[str] = []
        ensure_policy(agent_policy(host), agent_rules(host), f"clusterctl: agent {host}", notes)
        if fresh or not _token_valid(api, secret):
            api.acl.token.create(
                token=t, secret_id=secret, node_identities=[f"{host}:{dc}"], policies_name=[agent_policy(host)],
                description=f"clusterctl agent {host}",
            )  # fmt: skip
            notes.append(f"token of agent {host} made")
            if made_agents is not None:
                made_agents.append(host)
        return notes

    def service(name: str, secret: Secret) -> list[str]:
        if not fresh and _token_valid(api, secret):
            return []
        api.acl.token.create(
            token=t, secret_id=secret, service_identities=[{"ServiceName": name}],
            description=f"clusterctl service {name}",
        )  # fmt: skip
        return [f"token of service {name} made"]

    # Each agent's policy and token, and each service's token, need nothing of the others: made
    # side by side (each a raft write, ~50 ms on a busy cluster); noted in name order; the
    # first error is raised.
    from concurrent.futures import ThreadPoolExecutor

    work = [(agent, h, s) for h, s in sorted(acl.agents.items())] + [(service, n, s) for n, s in sorted(acl.services.items())]
    with ThreadPoolExecutor(min(8, len(work) or 1)) as pool:
        for future in [pool.submit(fn, name, secret) for fn, name, secret in work]:
            made += future.result()
    if made_agents is not None:
        made_agents.sort()
    return replace(acl, management=management)


def _token_valid(api: Any, secret: str) -> bool:
    import consul

    try:
        api.acl.token.read_self(token=secret)
        return True
    except consul.ACLPermissionDenied:
        return False
