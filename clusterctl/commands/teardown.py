"""Undo one cluster's network on one host, whatever the driver (`down`, tests, benches).

Only this cluster's: the Docker networks labelled with its name, the routes into each one's
cluster CIDR (read from its clusterctl.cidr label, plus any CIDR given) and the routed driver's
iptables rules for those CIDRs; the swarm is left (with swarm's gateway bridge) only when the
caller says it is this cluster's, Weave reset only when this cluster's Weave network is here.
Another cluster's networks, rules and swarm, and anything not clusterctl's, stay. Each step
tolerates "already gone", so it can run any number of times. Containers attached to a network
keep it alive: stop them first.

Run it on the swarm's managers one at a time, the leader last: Docker 20.10 can keep the swarm's
gossip port (7946) bound after managers are forced out all at once, and a swarm made later then
has no working overlay. Should that port still be held after leaving, the engine is restarted.
"""

from __future__ import annotations

import ipaddress

from clusterctl.commands.base import Cmd, sh_args
from clusterctl.network.facts import LABEL_CIDR, LABEL_CLUSTER

# $1 the cluster's name, $2 "swarm" to leave the swarm (it is this cluster's), $3 "weave" to
# reset Weave (this cluster's Weave network is here), then extra CIDRs.
TEARDOWN = (
    'cluster="$1"; leave="$2"; weave="$3"; shift 3; cidrs="$*"; '
    'if [ "$leave" = swarm ]; then docker swarm leave --force >/dev/null 2>&1 || true; fi; '
    f'for id in $(docker network ls -q --filter "label={LABEL_CLUSTER}=$cluster"); do '
    f'cidrs="$cidrs $(docker network inspect -f \'{{{{index .Labels "{LABEL_CIDR}"}}}}\' "$id" 2>/dev/null)"; '
    'docker network rm "$id" >/dev/null 2>&1 || true; done; '
    'if [ "$leave" = swarm ]; then docker network rm docker_gwbridge >/dev/null 2>&1 || true; '
    "if ss -ltn 2>/dev/null | grep -q ':7946 '; then "
    "{ if [ -d /run/systemd/system ]; then systemctl restart docker; else service docker restart; fi; } >/dev/null 2>&1; "
    "i=0; while ! docker info >/dev/null 2>&1 && [ $i -lt 120 ]; do i=$((i+1)); sleep 0.5; done; fi; fi; "
    'if [ "$weave" = weave ] && [ -x /usr/local/bin/weave ]; then /usr/local/bin/weave reset >/dev/null 2>&1 || true; fi; '
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
