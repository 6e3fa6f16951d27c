"""`clusterctl status`: per host reachable, Docker, Consul role, alive, leader, filebox version,
and each service replica's state (its Consul check: passing, warning, critical; or stopped).

Host facts come from the same one-round-trip probe as `up`; the cluster's own view (members,
leader) comes from Consul's HTTP API through py-consul, over an SSH tunnel to one server's
loopback, since the API is never opened to the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from clusterctl.commands.service import RETIRED_SUFFIX
from clusterctl.commands.consul import CONTAINER as CONSUL_CONTAINER
from clusterctl.config.loader import Cluster
from clusterctl.network.addresses import NoMeshAddress, talk_address
from clusterctl.phases.consul import server_choice
from clusterctl.phases.manager import Manager, Options
from clusterctl.transport.ssh import Endpoint, KnownHosts
from clusterctl.transport.tunnel import consul_api

MEMBER_STATUS = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}


@dataclass
class HostStatus:
    host: str
    address: str
    reachable: bool
    error: str = ""
    docker: str = "-"
    consul: str = "-"
    # The role `up` wants here: from the file's roles, else chosen (schedule/servers.py).
    role: str = "-"
    alive: str = "-"
    # A server raft counts as a voting member (None: not a server, or unknown).
    voter: bool | None = None
    leader: bool = False
    filebox: str = "-"
    # Service replicas on this host: name -> passing | warning | critical | running | stopped.
    services: dict[str, str] = field(default_factory=dict)


@dataclass
class ClusterStatus:
    cluster: str
    leader: str | None
    hosts: list[HostStatus]
    consul_error: str = ""
    # One line when more servers run than the default count and are kept (ServerChoice.note).
    consul_note: str = ""

    @property
    def ok(self) -> bool:
        return all(h.reachable for h in self.hosts) and not self.consul_error

    def as_dict(self) -> dict:
        return {"cluster": self.cluster, "ok": self.ok, "leader": self.leader, "consul_error": self.consul_error,
                "consul_note": self.consul_note, "hosts": [asdict(h) for h in self.hosts]}  # fmt: skip


def _service_health(checks: list[dict]) -> dict[tuple[str, str], str]:
    """Consul's /v1/health/state/any -> (node, service) -> the worst status of that service's
    checks on that node (node checks such as serfHealth left out)."""
    from clusterctl.facts.parser import worst_checks

    return worst_checks(((c.get("Node", ""), c["ServiceName"]), c.get("Status")) for c in checks if c.get("ServiceName"))


@dataclass
class ConsulView:
    leader: str | None = None
    members: dict[str, str] = field(default_factory=dict)
    voters: dict[str, bool] = field(default_factory=dict)
    health: dict[tuple[str, str], str] = field(default_factory=dict)
    error: str = ""


def _consul_view(manager: Manager, candidates: list[str], token: str | None) -> ConsulView:
    last_error = "no running consul agent found"
    for name in candidates:
        try:
            with consul_api(manager.sessions[name], token) as api:
                leader = api.status.leader() or None
                members = {m["Name"]: MEMBER_STATUS.get(m.get("Status", 0), "?") for m in api.agent.members()}
                voters: dict[str, bool] = {}
                if leader:  # raft's configuration is only served while there is a leader
                    voters = {srv["Node"]: bool(srv.get("Voter")) for srv in api.operator.raft_config().get("Servers", [])}
                leader_addr = leader.rsplit(":", 1)[0] if leader else None
                health = _service_health(api.health.state("any")[1]) if leader else {}
                return ConsulView(leader_addr, members, voters, health)
        except Exception as exc:  # noqa: BLE001 - try the next agent
            last_error = f"consul API via {name}: {exc}"
    return ConsulView(error=last_error)


def cluster_status(
    cluster: Cluster, endpoints: dict[str, Endpoint], known: KnownHosts, workers: int, token: str | None = None
) -> ClusterStatus:
    """`token`: the cluster's ACL management token (phases/consul_acl.py), for raft and health."""
    with Manager(cluster, endpoints, known, Options(workers=workers)) as m:
        m.connect()
        m.probe()
        rows: list[HostStatus] = []
        with_agent = []
        for name, report in m.reports.items():
            f = report.facts
            if f is None:
                rows.append(HostStatus(name, report.address, False, report.failed.message if report.failed else ""))
                continue
            row = HostStatus(name, report.address, True)
            row.docker = f.docker.server_version or ("stopped" if f.docker.installed else "absent")
            agent = f.container(CONSUL_CONTAINER)
            if agent is not None:
                row.consul = agent.labels.get("clusterctl.consul.mode", "?") + ("" if agent.running else " (stopped)")
                if agent.running:
                    with_agent.append(name)
            boxes = [c for c in f.docker.containers if c.labels.get("clusterctl.role") == "filebox"]
            if boxes:
                row.filebox = ",".join(sorted({c.labels.get("clusterctl.filebox.version", "?")[:12] for c in boxes}))
            for c in f.docker.containers:
                svc = c.labels.get("clusterctl.service")
                if c.name.endswith(RETIRED_SUFFIX):  # a previous version a rollout kept: not a replica
                    continue
                if c.labels.get("clusterctl.role") == "service" and c.labels.get("clusterctl.cluster") == cluster.name and svc:
                    row.services[svc] = "running" if c.running else "stopped"
            rows.append(row)
        consul_error = ""
        leader = None
        choice = server_choice(cluster, {n: r.facts for n, r in m.reports.items() if r.facts is not None})
        for row in rows:
            row.role = "server" if choice.is_server(row.host) else "client"
        if cluster.spec.consul.enabled:
            # Servers first: their view of membership is authoritative.
            order = sorted(with_agent, key=lambda n: not choice.is_server(n))
            view = _consul_view(m, order, token)
            leader, members, voters, consul_error = view.leader, view.members, view.voters, view.error
            for row in rows:
                for svc, state in row.services.items():
                    if state == "running":
                        row.services[svc] = view.health.get((row.host, svc), "unregistered")
                if row.reachable or row.host in members:
                    row.alive = members.get(row.host, "-")
                if (choice.is_server(row.host) or row.consul.startswith("server")) and voters:
                    row.voter = voters.get(row.host, False)
                facts = m.reports[row.host].facts
                host = cluster.spec.host(row.host)
                try:
                    addr = talk_address(cluster, host, facts)
                except NoMeshAddress:
                    addr = None
                row.leader = bool(leader and addr == leader)
        return ClusterStatus(cluster.name, leader, rows, consul_error, choice.note() or "")
