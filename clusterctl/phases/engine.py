"""The engine phase: /etc/docker/daemon.json so every container resolves through Consul DNS.

The engine's default DNS is the host's docker0 address, where the local Consul agent answers
DNS; Consul forwards names outside .consul to the host's own resolvers. Keys already in
daemon.json are kept. A change restarts the engine, which is why it runs before any clusterctl
container exists on a fresh host. While it restarts, the host receives the filebox phase's
image archive into a file (phases/filebox.py: load_ahead), which that phase then loads.
"""

from __future__ import annotations

import ipaddress
import json

from clusterctl.commands import docker as build
from clusterctl.commands.base import Cmd
from clusterctl.commands.files import write_file
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts
from clusterctl.phases.base import Context, PlanError
from clusterctl.shipping.stream import receiving_meanwhile

DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_DEFAULT_BRIDGE_IP = "172.17.0.1"


def dns_address(facts: HostFacts) -> str:
    """Where containers on this host send DNS: the docker0 address (bip, else Docker's default)."""
    found = facts.address_of("docker0")
    if found:
        return found
    bip = _daemon_config(facts).get("bip")
    if bip:
        return str(ipaddress.ip_interface(bip).ip)
    return DOCKER_DEFAULT_BRIDGE_IP


def _daemon_config(facts: HostFacts) -> dict:
    if not facts.daemon_json.strip():
        return {}
    try:
        data = json.loads(facts.daemon_json)
    except json.JSONDecodeError as exc:
        raise PlanError(f"{DAEMON_JSON} is not valid JSON ({exc.msg}, line {exc.lineno}); fix or remove it") from None
    if not isinstance(data, dict):
        raise PlanError(f"{DAEMON_JSON} must hold a JSON object")
    return data


def desired_daemon_config(facts: HostFacts) -> dict:
    current = _daemon_config(facts)
    # Containers cannot reach the host's loopback resolvers; keep only reachable fallbacks.
    fallbacks = [n for n in facts.nameservers if not ipaddress.ip_address(n).is_loopback]
    return {**current, "dns": [dns_address(facts), *fallbacks]}


def engine_daemon_json(ctx: Context, facts: HostFacts) -> Cmd | None:
    """The write of daemon.json this cluster wants, or None when it is as wanted."""
    if not ctx.cluster.spec.consul.enabled:
        return None
    desired = desired_daemon_config(facts)
    if desired == _daemon_config(facts):
        return None
    return write_file(
        DAEMON_JSON, json.dumps(desired, indent=2, sort_keys=True) + "\n", "0644",
        f"set the engine's default DNS to {desired['dns'][0]} in {DAEMON_JSON}",
    )  # fmt: skip


class EnginePhase:
    name = "engine"
    title = "Docker engine configured: Consul DNS for every container"

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        write = engine_daemon_json(ctx, facts)
        if write is not None:
            cmds = [write]
        elif ctx.cluster.spec.consul.enabled and restart_pending(facts):
            cmds = []  # the file is as wanted, the engine never read it
        else:
            return []
        restart = build.restart_engine(facts.systemd)
        if not cmds:
            restart = Cmd(restart.argv, f"{restart.description}: {DAEMON_JSON} changed after the engine started")
        from clusterctl.phases.filebox import load_ahead  # the filebox phase's own plan

        ahead = load_ahead(ctx, host, facts)
        if ahead is not None:
            # The restart is a wait of a second or two: the filebox's archive crosses meanwhile.
            restart = receiving_meanwhile(restart, ahead)
        cmds += [restart, build.wait_for_engine(ctx.cluster.spec.docker.start_timeout)]
        return [build.as_root(c, facts.sudo) for c in cmds]


def restart_pending(facts: HostFacts) -> bool:
    """daemon.json is newer than the running engine: what it says is not live yet (a run that
    wrote it and stopped before the restart). Unknown times mean no. The engine's start is
    computed from whole seconds (boot time, clock ticks), so it may read up to 2 s early."""
    mtime, started = facts.daemon_json_mtime, facts.engine_started
    return facts.docker.running and mtime is not None and started is not None and mtime > started + 2
