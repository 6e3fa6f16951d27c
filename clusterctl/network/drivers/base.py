"""What a network driver is: a small Protocol, and the cluster-wide plan every driver returns.

A driver turns the hosts' facts (what the probe's network lines printed, parsed in
clusterctl/network/facts.py and facts/parser.py) into one NetworkPlan a pass, and says what of
its own state `down` takes off a host. Argv builders live in clusterctl/commands/; the network
phase (phases/network.py) only picks the driver, finds the cluster CIDR and checks what every
driver shares. A new driver: its config model (config/models.py), its probe lines and one
module here, registered in drivers/__init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Protocol

from clusterctl.commands.base import Cmd

if TYPE_CHECKING:
    from clusterctl.facts.parser import HostFacts
    from clusterctl.phases.base import Context


@dataclass
class NetworkPlan:
    """The whole cluster's network plan for one pass."""

    cidr: IPv4Network
    cmds: dict[str, list[Cmd]] = field(default_factory=dict)
    # Hosts that cannot have the network, one line each (their PlanError).
    errors: dict[str, str] = field(default_factory=dict)
    # Hosts whose commands wait for the others' (wave 1 runs after wave 0), by host.
    waves: dict[str, int] = field(default_factory=dict)
    # Read-only commands whose answers the next plan needs (ctx.lookups), by host.
    lookups: dict[str, Cmd] = field(default_factory=dict)


class NetworkDriver(Protocol):
    # What network.driver says.
    name: str
    # Whether each host's part stands alone: a host failing in one pass leaves the others to
    # finish theirs (a swarm's joins need its leader: not so).
    independent_hosts: bool
    # The Docker network driver of the cluster network it makes (bridge, overlay, weavemesh).
    docker_driver: str

    def interfaces(self, network: str) -> tuple[str, ...]:
        """The Linux interfaces this driver makes for a network of that name (never "in use"
        by the hosts when the cluster CIDR is chosen)."""
        ...

    def plan(self, ctx: Context, addresses: dict[str, str], cidr: IPv4Network) -> NetworkPlan:
        """This pass's commands for every host, from ctx.facts; PhaseError when the cluster as a
        whole cannot have the network. `addresses`: each host's cluster address."""
        ...

    # Optional: watchers(ctx, changed) -> frozenset of host names whose facts may change with what
    # other hosts ran in a pass (phases/base.py); a driver without it has every host read again.

    def teardown(self, ctx: Context, facts: HostFacts) -> list[Cmd]:
        """What removes this driver's own state of this cluster from a host (its swarm, its router
        and the network it serves, its tunnel), decided from the facts: run by `down` before the
        cluster's other networks, routes and rules go (commands/teardown.py). [] when none."""
        ...
