"""Undo the cluster network on one host, whatever the driver: for tests, benches and lab resets.

Leaves the swarm, removes the Docker networks clusterctl labelled (and swarm's gateway bridge),
the routes into each network's cluster CIDR (read from its clusterctl.cidr label, plus any CIDR
given) and the routed driver's iptables rules, and resets Weave. Each step tolerates "already
gone", so it can run on any host, any number of times. Containers attached to a network keep
it alive: stop them first.

Run it on the swarm's managers one at a time, the leader last: Docker 20.10 can keep the swarm's
gossip port (7946) bound after managers are forced out all at once, and a swarm made later then
has no working overlay. Should that port still be held after leaving, the engine is restarted.
"""

from __future__ import annotations

import ipaddress

from clusterctl.commands.base import Cmd, sh_args
from clusterctl.network.facts import LABEL_CIDR, LABEL_CLUSTER

TEARDOWN = (
    'cidrs="$*"; '
    "docker swarm leave --force >/dev/null 2>&1 || true; "
    f'for id in $(docker network ls -q --filter label={LABEL_CLUSTER}); do '
    f'cidrs="$cidrs $(docker network inspect -f \'{{{{index .Labels "{LABEL_CIDR}"}}}}\' "$id" 2>/dev/null)"; '
    'docker network rm "$id" >/dev/null 2>&1 || true; done; '
    "docker network rm docker_gwbridge >/dev/null 2>&1 || true; "
    "if ss -ltn 2>/dev/null | grep -q ':7946 '; then "
    "{ if [ -d /run/systemd/system ]; then systemctl restart docker; else service docker restart; fi; } >/dev/null 2>&1; "
    "i=0; while ! docker info >/dev/null 2>&1 && [ $i -lt 120 ]; do i=$((i+1)); sleep 0.5; done; fi; "
    "if [ -x /usr/local/bin/weave ]; then /usr/local/bin/weave reset >/dev/null 2>&1 || true; fi; "
    "for c in $(printf '%s\\n' $cidrs | sort -u); do "
    'ip -4 route show root "$c" | grep " via " | while read -r dest _; do ip route del "$dest" 2>/dev/null || true; done; '
    'while iptables -w -D DOCKER-USER -s "$c" -d "$c" -j ACCEPT 2>/dev/null; do :; done; '
    'while iptables -w -t nat -D POSTROUTING -s "$c" -d "$c" -j RETURN 2>/dev/null; do :; done; '
    "done"
)


def teardown(*cidrs: str) -> Cmd:
    """The host's cluster network removed; `cidrs` adds CIDRs whose routes and rules go too."""
    checked = [str(ipaddress.ip_network(c, strict=True)) for c in cidrs]
    return sh_args(TEARDOWN, *checked, description="remove the cluster network from this host", check=False)
