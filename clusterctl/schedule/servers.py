"""Which hosts run Consul servers (and, with the overlay network, swarm managers). Pure: the
cluster file's hosts + the names of hosts that run a server now in, names out.

- The default count depends on the number of hosts in the file: 1 server for 1-2 hosts, 3 for
  3-6, 5 for 7 or more (`default_server_count`), an odd quorum that survives losing one server
  (three) or two (five).
- Explicit roles always win: a host whose file entry has `roles` is a server or a client as
  written. Every host counts towards the number of hosts; explicit servers count towards the
  default count, and only hosts without roles are chosen to make up the rest. When too few hosts
  without roles are left to reach it, an even total is rounded down to the odd number below
  (two servers tolerate no more failures than one and need both for a quorum).
- Stable: a host without roles that runs a server now stays a server, even past the default
  count (an older cluster, made when every host defaulted to server, keeps all its servers: nothing
  is demoted by the default, see `ServerChoice.kept`). Only the missing ones are chosen: for each,
  the host without roles in the spread group (the value of the `spread` label, e.g. provider)
  holding the fewest servers so far, explicit ones included, then the first in the file. So
  adding a host, anywhere in the file, never moves a server, nor does removing one that is not a
  server, and a cluster whose servers run as chosen is chosen again (a fixed point).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from clusterctl.config.models import Host


def default_server_count(hosts: int) -> int:
    """1 server for 1-2 hosts, 3 for 3-6, 5 for 7 or more."""
    if hosts <= 2:
        return 1
    if hosts <= 6:
        return 3
    return 5


@dataclass(frozen=True)
class ServerChoice:
    # The server hosts, in the cluster file's order; every other host runs a client agent.
    servers: tuple[str, ...]
    # The default count for this many hosts (`default_server_count`).
    target: int
    # Hosts without roles kept as servers past the default because they run one now.
    kept: tuple[str, ...] = ()

    def is_server(self, name: str) -> bool:
        return name in self.servers

    def note(self) -> str | None:
        """One line when the choice keeps more servers than the default, else None."""
        if not self.kept:
            return None
        return (
            f"consul: {len(self.servers)} servers kept where they run (the default for this many hosts is "
            f"{self.target}); set roles: [client] on a host to make it a client"
        )


def spread_value(host: Host, spread: str | None) -> str:
    # Without `spread` every host is its own group; hosts without the label share the group "".
    return host.labels.get(spread, "") if spread else host.name


def choose_servers(hosts: Sequence[Host], spread: str | None = "provider", running: Collection[str] = ()) -> ServerChoice:
    """`running`: names of hosts that run a server of this cluster now (from the probe's facts)."""
    target = default_server_count(len(hosts))
    explicit = [h for h in hosts if h.roles is not None and h.is_server]
    auto = [h for h in hosts if h.roles is None]
    wanted = min(len(auto), max(0, target - len(explicit)))
    if wanted and (len(explicit) + wanted) % 2 == 0:
        wanted -= 1  # short of the default: an odd number of servers, never an even one
    chosen = [h for h in auto if h.name in running]
    kept = tuple(h.name for h in chosen) if len(chosen) > wanted else ()
    groups = Counter(spread_value(h, spread) for h in (*explicit, *chosen))
    index = {h.name: i for i, h in enumerate(hosts)}
    while len(chosen) < wanted:
        best = min((h for h in auto if h not in chosen), key=lambda h: (groups[spread_value(h, spread)], index[h.name]))
        chosen.append(best)
        groups[spread_value(best, spread)] += 1
    names = {h.name for h in (*explicit, *chosen)}
    return ServerChoice(tuple(h.name for h in hosts if h.name in names), target, kept)
