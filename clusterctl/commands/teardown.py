"""Argv builders that undo one cluster's network on one host (`down`, tests, benches); builders only.

The part every driver shares, `teardown(cluster, *cidrs)`: the Docker networks labelled with the
cluster's name, the routes into each one's cluster CIDR (read from its clusterctl.cidr label,
plus any CIDR given) and the routed driver's iptables rules for those CIDRs. What is a driver's
own (its swarm, its Weave router, its tunnels) is built beside its other commands and chosen by
the driver from the facts (network/drivers/*.py, `teardown`); `down` runs it first.

For callers without facts (tests, benches), `leave_swarm` and `reset_weave` fold the overlay's
and Weave's pieces into the same one command, in this order: leave the swarm (with swarm's
gateway bridge, and an engine restart should its gossip port stay bound), remove the networks,
reset Weave, remove the routes and rules. Only for this cluster's swarm and this cluster's Weave.

Another cluster's networks, rules and swarm, and anything not clusterctl's, stay. Each step
tolerates "already gone", so it can run any number of times. Containers attached to a network
keep it alive: stop them first. Swarm managers leave one at a time, the leader last (see
commands/swarm.py::LEAVE_FOR_GOOD).
"""

from __future__ import annotations

import ipaddress

from clusterctl.commands.base import Cmd, sh_args
from clusterctl.commands.swarm import LEAVE_FOR_GOOD
from clusterctl.commands.weave import RESET_IF_INSTALLED
from clusterctl.network.facts import LABEL_CIDR, LABEL_CLUSTER

# $1 the cluster's name, $2 "swarm" to leave the swarm (it is this cluster's), $3 "weave" to
# reset Weave (this cluster's Weave network is here), then extra CIDRs.
TEARDOWN = (
    'cluster="$1"; leave="$2"; weave="$3"; shift 3; cidrs="$*"; '
    f'if [ "$leave" = swarm ]; then {LEAVE_FOR_GOOD}; fi; '
    f'for id in $(docker network ls -q --filter "label={LABEL_CLUSTER}=$cluster"); do '
    f'cidrs="$cidrs $(docker network inspect -f \'{{{{index .Labels "{LABEL_CIDR}"}}}}\' "$id" 2>/dev/null)"; '
    'docker network rm "$id" >/dev/null 2>&1 || true; done; '
    f'if [ "$weave" = weave ]; then {RESET_IF_INSTALLED}; fi; '
    "for c in $(printf '%s\\n' $cidrs | sort -u); do "
    'ip -4 route show root "$c" | grep " via " | while read -r dest _; do ip route del "$dest" 2>/dev/null || true; done; '
    'while iptables -w -D DOCKER-USER -s "$c" -d "$c" -j ACCEPT 2>/dev/null; do :; done; '
    'while iptables -w -t nat -D POSTROUTING -s "$c" -d "$c" -j RETURN 2>/dev/null; do :; done; '
    "done"
)


def teardown(cluster: str, *cidrs: str, leave_swarm: bool = False, reset_weave: bool = False) -> Cmd:
    """The cluster's network removed from the host; `cidrs` adds CIDRs whose routes and rules go
    too. `leave_swarm` only for this cluster's swarm, `reset_weave` only for this cluster's Weave."""
    from clusterctl.config.models import check_name

    checked = [str(ipaddress.ip_network(c, strict=True)) for c in cidrs]
    what = "remove the cluster network from this host" + (" (and leave its swarm)" if leave_swarm else "")
    return sh_args(TEARDOWN, check_name(cluster), "swarm" if leave_swarm else "-", "weave" if reset_weave else "-", *checked,
                   description=what, check=False)  # fmt: skip
