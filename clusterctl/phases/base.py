"""What a phase is: a title and a pure plan(ctx, host, facts) -> commands.

A phase with an empty plan for a host leaves it untouched ("unchanged"). `plan` and `up` print
and run the very same plans, so a dry run cannot drift from a real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from clusterctl.commands.base import Cmd
from clusterctl.config.loader import Cluster
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts


class PlanError(Exception):
    """The host cannot be brought to the desired state (e.g. no package manager); one line."""


@dataclass(frozen=True)
class Inputs:
    """What a run brings from the operator's side: secrets and built artifacts."""

    gossip_key: str | None = None
    # The microcontainer base image (BusyBox + the filebox's symlinks) consul runs from.
    base_image: str | None = None
    # The filebox container (created, never running) that microcontainers mount.
    filebox_container: str | None = None
    # Built images every host needs (filebox, microcontainer base), shipped by the filebox phase.
    images: tuple = ()
    filebox_tag: str | None = None
    filebox_version: str | None = None


@dataclass(frozen=True)
class Context:
    """Everything a phase may read. No globals, no hidden hand-offs between phases."""

    cluster: Cluster
    # Facts of every host that answered the probe, by host name.
    facts: dict[str, HostFacts]
    inputs: Inputs = field(default_factory=Inputs)


class Phase(Protocol):
    name: str
    title: str

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]: ...


def rolling(phase: object, ctx: Context, host: Host, facts: HostFacts) -> bool:
    """Whether this host's change must run alone (e.g. restarting a quorum member)."""
    fn = getattr(phase, "rolling", None)
    return bool(fn and fn(ctx, host, facts))
