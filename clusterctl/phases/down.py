"""`clusterctl down`: the phases of `up` undone, in reverse, from the facts alone.

Each phase removes only what the probe found this cluster made, so a second `down` changes
nothing and a host that never had clusterctl's things is left alone. Docker stays installed and
running; the operator's side (gossip key, known_hosts) stays, so a later `up` rebuilds the same
cluster. The network: each driver's own state first (network/drivers/*.py, `teardown`), then
what all share (commands/teardown.py); the swarm is left one manager at a time, its leader last.
"""

from __future__ import annotations

import ipaddress
import json

from clusterctl.commands import consul as consul_build
from clusterctl.commands import service as service_build
from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root, restart_engine, wait_for_engine
from clusterctl.commands.files import write_file
from clusterctl.commands.teardown import teardown
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts
from clusterctl.network import drivers  # the module: see phases/network.py
from clusterctl.network.drivers import overlay
from clusterctl.network.facts import LABEL_CIDR, LABEL_CLUSTER
from clusterctl.phases.base import Context, cluster_containers
from clusterctl.phases.prune import in_use
from clusterctl.phases.engine import DAEMON_JSON, _daemon_config, dns_address
from clusterctl.shipping.relay import RELAY_CONTAINER, RELAY_DIR

STATE_DIRS = ("/etc/clusterctl", "/var/lib/clusterctl")


def _root(cmds: list[Cmd], facts: HostFacts) -> list[Cmd]:
    return [as_root(c, facts.sudo) for c in cmds]


class ServicesDown:
    name = "services"
    title = "Service replicas removed"

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        # Every replica (NAME, NAME.2, ...) and what rollouts kept (NAME.prev), by container name.
        prefix = service_build.CONTAINER_PREFIX
        names = sorted(c.name.removeprefix(prefix) for c in cluster_containers(ctx, facts, service_build.ROLE) if c.name.startswith(prefix))
        return _root([service_build.remove(n) for n in names], facts)


class ConsulDown:
    name = "consul"
    title = "Consul agent, its data and its configuration removed"

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        agent = facts.container(consul_build.CONTAINER)
        mine = agent is not None and agent.labels.get("clusterctl.cluster") == ctx.cluster.name
        files = [p for p in facts.managed_files if p.startswith(consul_build.CONFIG_DIR + "/")]
        if not mine and not (agent is None and files):
            return []  # nothing of ours, or another cluster's agent: leave it
        cmds = []
        if mine:
            cmds.append(consul_build.remove_agent())
            cmds.append(consul_build.remove_data_volume())
        cmds.append(Cmd(("rm", "-rf", consul_build.CONFIG_DIR), "remove consul's configuration (gossip key, services)"))
        return _root(cmds, facts)


class FileboxDown:
    name = "filebox"
    title = "Filebox containers and clusterctl's images removed"

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        containers = [c.name for role in ("filebox", "relay") for c in cluster_containers(ctx, facts, role)]
        # Images a container that stays still runs stay: Docker's containerd store does not
        # always refuse to remove them, and the container could not start again.
        used = {c.image for c in facts.docker.containers if c.name not in containers} | set(facts.docker.foreign_images)
        images = sorted(i.id for i in facts.docker.images if i.labels.get("clusterctl.role") and not in_use(i.id, i.repo_tags, used))
        cmds = []
        if containers:
            cmds.append(Cmd(("docker", "rm", "-f", *containers), f"remove {', '.join(containers)}"))
        if any(c == RELAY_CONTAINER for c in containers):
            cmds.append(Cmd(("rm", "-rf", RELAY_DIR), "remove the relayed archive"))
        if images:
            # An image another cluster's container still uses stays (docker refuses; not an error).
            cmds.append(
                Cmd(("sh", "-c", 'for i in "$@"; do docker image rm "$i" >/dev/null 2>&1 || true; done', "sh", *images),
                    f"remove {len(images)} clusterctl image(s) no container uses", check=False)
            )  # fmt: skip
        return _root(cmds, facts)


def _label_cidrs(ctx: Context, facts: HostFacts) -> list[str]:
    """The CIDR labels of this cluster's networks the probe saw (the valid ones)."""
    out = []
    for n in facts.network.networks:
        label = n.labels.get(LABEL_CIDR, "") if n.labels.get(LABEL_CLUSTER) == ctx.cluster.name else ""
        try:
            out.append(str(ipaddress.ip_network(label, strict=True)))
        except ValueError:
            continue
    return sorted(set(out))


class NetworkDown:
    name = "network"
    title = "Cluster network removed (swarm left one manager at a time, the leader last)"
    passes = 2

    def wave(self, ctx: Context, host: Host, facts: HostFacts) -> int:
        return 1 if overlay.is_swarm_leader(facts) else 0

    def rolling(self, ctx: Context, host: Host, facts: HostFacts) -> bool:
        return overlay.swarm_state(facts).is_manager

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        # Each driver's own state first (its swarm, its Weave router, a tunnel whatever the file
        # says now), then what all share: the networks, the routes into their CIDRs, the rules.
        own = [c for driver in drivers.DRIVERS.values() for c in driver.teardown(ctx, facts)]
        if not facts.docker.running or not any(n.labels.get(LABEL_CLUSTER) == ctx.cluster.name for n in facts.network.networks):
            return _root(own, facts)
        # The CIDRs the probe saw too: a driver's teardown may have removed its network first.
        return _root([*own, teardown(ctx.cluster.name, *_label_cidrs(ctx, facts))], facts)


class EngineDown:
    name = "engine"
    title = "The engine's default DNS (Consul) taken out; clusterctl's files on the host removed"

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        cmds = []
        try:
            current = _daemon_config(facts)
        except Exception:  # noqa: BLE001 - a file we cannot read is one we did not write
            current = {}
        dns = current.get("dns")
        if isinstance(dns, list) and dns and dns[0] == dns_address(facts):
            rest = {k: v for k, v in current.items() if k != "dns"}
            if rest:
                cmds.append(write_file(DAEMON_JSON, json.dumps(rest, indent=2, sort_keys=True) + "\n", "0644",
                                       f"take clusterctl's dns out of {DAEMON_JSON}"))  # fmt: skip
            else:
                cmds.append(Cmd(("rm", "-f", DAEMON_JSON), f"remove {DAEMON_JSON} (it held only clusterctl's dns)"))
            cmds += [restart_engine(facts.systemd), wait_for_engine(ctx.cluster.spec.docker.start_timeout)]
        if facts.managed_files or cmds:
            cmds.append(Cmd(("rm", "-rf", *STATE_DIRS), "remove clusterctl's files on the host"))
        return _root(cmds, facts)


DOWN_PHASES = (ServicesDown(), ConsulDown(), FileboxDown(), NetworkDown(), EngineDown())
