"""What a phase is: a title and a pure plan(ctx, host, facts) -> commands.

A phase with an empty plan for a host leaves it untouched ("unchanged"). `plan` and `up` print
and run the very same plans, so a dry run cannot drift from a real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from clusterctl.commands.base import Cmd
from clusterctl.config.loader import Cluster
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts


class PlanError(Exception):
    """The host cannot be brought to the desired state (e.g. no package manager); one line."""


@dataclass(frozen=True)
class Context:
    """Everything a phase may read. No globals, no hidden hand-offs between phases."""

    cluster: Cluster
    # Facts of every host that answered the probe, by host name.
    facts: dict[str, HostFacts]


class Phase(Protocol):
    name: str
    title: str

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]: ...
