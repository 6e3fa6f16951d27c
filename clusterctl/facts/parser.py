"""Turn the probe script's JSON into typed facts. Pure: text in, HostFacts out."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from clusterctl.network.facts import NetworkFacts, parse_network_probe

_SPOOL_NAME = re.compile(r"[0-9a-f]{16}\.tar(\.part)?")


class ProbeError(ValueError):
    """The probe's output could not be understood (a broken host shell, a truncated stream)."""


@dataclass(frozen=True)
class Address:
    ifname: str
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface

    @property
    def ip(self) -> str:
        return str(self.interface.ip)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return self.interface.network


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str
    state: str
    labels: dict[str, str]

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class Image:
    id: str
    repo_tags: tuple[str, ...]
    labels: dict[str, str]
    # Layer diff_ids, base first: what `docker load` already has on this host.
    layers: tuple[str, ...]
    size: int = 0


@dataclass(frozen=True)
class DockerFacts:
    cli: str | None
    running: bool
    server_version: str | None
    error: str | None
    info: dict[str, Any]
    containers: tuple[Container, ...]
    images: tuple[Image, ...]
    # Raft servers by node name -> voter, as the local clusterctl Consul agent sees them; None when
    # no agent answered (absent, starting, or no raft configuration yet).
    consul_voters: dict[str, bool] | None = None
    # The local agent's service checks: service ID -> its worst status (critical, warning,
    # passing); None when no agent answered.
    consul_checks: dict[str, str] | None = None
    # The agent's own ACL token is unknown to Consul ("ACL not found"): settle makes it again.
    consul_token_missing: bool = False
    # Why raft could not be read (a timeout, an HTTP status), for the plan to say.
    consul_raft_error: str | None = None
    # Images of the host's other containers (none of clusterctl's labels), as `docker ps` names
    # them: a tag, an ID or a short ID. Never removed by clusterctl.
    foreign_images: tuple[str, ...] = ()

    @property
    def installed(self) -> bool:
        return bool(self.cli)

    @property
    def cpus(self) -> int | None:
        """The engine's CPU count (docker info NCPU); None when Docker did not say."""
        n = self.info.get("NCPU")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    @property
    def memory(self) -> int | None:
        """The engine's memory in bytes (docker info MemTotal); None when Docker did not say."""
        n = self.info.get("MemTotal")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    @property
    def image_store(self) -> str:
        """"containerd" when the engine keeps images in containerd's store, else "classic"."""
        status = self.info.get("DriverStatus") or []
        if any(isinstance(p, list) and p[:2] == ["driver-type", "io.containerd.snapshotter.v1"] for p in status):
            return "containerd"
        return "classic"


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    uid: int
    # "" when root, "sudo -n" when passwordless sudo works, None when neither.
    sudo: str | None
    os_id: str
    os_version: str
    os_pretty: str
    arch: str
    kernel: str
    init: str
    has_apt: bool
    # The server side of the SSH connection: the address the host was reached on.
    ssh_server_address: str | None
    addresses: tuple[Address, ...]
    default_ifname: str | None
    docker: DockerFacts
    nameservers: tuple[str, ...] = ()
    # resolv.conf nameserver values that are not addresses (skipped; named in the probe's step).
    skipped_nameservers: tuple[str, ...] = ()
    # The client side of the SSH connection: the operator's address as the host sees it (a
    # bastion's, behind one).
    ssh_client_address: str | None = None
    # /etc/docker/daemon.json as found ("" when absent).
    daemon_json: str = ""
    # daemon.json's mtime and the engine's start, epoch seconds (None: unknown, e.g. no engine).
    daemon_json_mtime: int | None = None
    engine_started: int | None = None
    # Files under /etc/clusterctl: path -> sha256 of the content.
    managed_files: dict[str, str] = field(default_factory=dict)
    # Image archives this host received ahead of their load (file names in shipping's SPOOL_DIR:
    # NAME.tar whole, NAME.tar.part cut short).
    spooled: frozenset[str] = frozenset()
    # Routes, Docker networks, swarm nodes, iptables rules, Weave (the probe's network block).
    network: NetworkFacts = field(default_factory=NetworkFacts)
    # The host's CPUs (nproc) and memory in bytes (/proc/meminfo); None when unknown.
    cpus: int | None = None
    memory: int | None = None
    # TCP ports some socket listens on (the host's network namespace).
    listening: frozenset[int] = frozenset()

    def engine_size(self) -> tuple[int | None, int | None]:
        """CPUs and memory for placement: what Docker reports (NCPU, MemTotal), else the OS."""
        return self.docker.cpus or self.cpus, self.docker.memory or self.memory

    def address_of(self, ifname: str) -> str | None:
        for a in self.addresses:
            if a.ifname == ifname and a.interface.version == 4:
                return a.ip
        return None

    def container(self, name: str) -> Container | None:
        for c in self.docker.containers:
            if c.name == name:
                return c
        return None

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @property
    def systemd(self) -> bool:
        return self.init == "systemd"

    def global_addresses(self) -> list[Address]:
        """Addresses other hosts could use: not loopback, link-local or a Docker bridge."""
        skip_prefixes = ("docker", "br-", "veth", "weave", "vxlan", "datapath", "docker_gwbridge", "wg-")
        return [
            a
            for a in self.addresses
            if not a.interface.ip.is_loopback
            and not a.interface.ip.is_link_local
            and not a.ifname.startswith(skip_prefixes)
        ]

    def on_a_network_of_mine(self, address: str | None) -> bool:
        """Whether the address is on one of this host's own networks (not loopback): e.g. the
        SSH client's, when the operator sits on the hosts' own LAN."""
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in a.network for a in self.global_addresses() if a.network.version == ip.version)

    def cluster_address(self, configured: str | None = None) -> str | None:
        """The address the cluster talks on: the configured one (checked to be on this host),
        else the address SSH reached, else the default route's interface address."""
        if configured:
            return configured
        local = {a.ip for a in self.global_addresses()}
        if self.ssh_server_address in local:
            return self.ssh_server_address
        for a in self.global_addresses():
            if a.ifname == self.default_ifname and a.interface.version == 4:
                return a.ip
        v4 = [a for a in self.global_addresses() if a.interface.version == 4]
        return v4[0].ip if v4 else None


def probe_script() -> str:
    return resources.files("clusterctl.facts").joinpath("probe.sh").read_text()


def _labels(text: str) -> dict[str, str]:
    # docker --format '{{json .}}' gives labels as "k=v,k2=v2".
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if part:
            key, _, value = part.partition("=")
            out[key] = value
    return out


def _parse_addresses(items: list[dict[str, str]]) -> tuple[Address, ...]:
    out = []
    for item in items:
        try:
            out.append(Address(item["ifname"].split("@")[0], ipaddress.ip_interface(item["cidr"])))
        except (KeyError, ValueError):
            continue
    return tuple(out)


def _default_ifname(routes: list[dict[str, str]]) -> str | None:
    for r in routes:
        words = r.get("route", "").split()
        if words[:1] == ["default"] and "dev" in words:
            return words[words.index("dev") + 1]
    return None


def _epoch(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _containers(d: dict[str, Any]) -> tuple[tuple[Container, ...], list[str]]:
    """clusterctl's containers, and the images of the others (kept by prune and down). From the
    API (`containers_api`: every container whole, the others' details dropped here) or from the
    CLI (`docker ps` lists clusterctl's whole and of the others only their image)."""
    if isinstance(d.get("containers_api"), list):
        ours, foreign = [], set()
        for c in d["containers_api"]:
            if not isinstance(c, dict):
                continue
            labels = c.get("Labels") if isinstance(c.get("Labels"), dict) else {}
            if not labels.get("clusterctl.cluster"):
                if isinstance(c.get("Image"), str):
                    foreign.add(c["Image"])
                continue
            names = [n.lstrip("/") for n in c.get("Names") or [] if isinstance(n, str)]
            # A legacy link adds "/other/alias"; the container's own name has no slash.
            name = next((n for n in names if "/" not in n), names[0] if names else "")
            ours.append(Container(id=c.get("Id", ""), name=name, image=c.get("Image", ""), state=c.get("State", ""), labels=labels))
        return tuple(ours), sorted(foreign)
    listed = [c for c in d.get("containers") or [] if isinstance(c, dict)]
    containers = tuple(
        Container(
            id=c.get("ID", ""),
            name=c.get("Names", ""),
            image=c.get("Image", ""),
            state=c.get("State", ""),
            labels=_labels(c.get("Labels", "")),
        )
        for c in listed
        if "ForeignImage" not in c
    )
    return containers, sorted({c["ForeignImage"] for c in listed if isinstance(c.get("ForeignImage"), str)})


def _docker(d: dict[str, Any]) -> DockerFacts:
    info = d.get("info") or {}
    errors = info.get("ServerErrors") or []
    running = bool(info.get("ServerVersion")) and not errors
    containers, foreign = _containers(d)
    images = tuple(
        Image(
            id=i.get("Id", ""),
            repo_tags=tuple(i.get("RepoTags") or ()),
            # The CLI's template puts Config.Labels at the top; the API leaves it in Config.
            labels=dict(i.get("Labels") or (i.get("Config") or {}).get("Labels") or {}),
            # RootFS can be {} on the containerd store (layer blobs absent): no layers known.
            layers=tuple((i.get("RootFS") or {}).get("Layers") or i.get("Layers") or ()),
            size=int(i.get("Size") or 0),
        )
        # In the CLI's order (by ID) whichever way they were read.
        for i in sorted((i for i in d.get("images") or [] if isinstance(i, dict)), key=lambda i: str(i.get("Id", "")))
    )
    return DockerFacts(
        cli=d.get("cli") or None,
        running=running,
        server_version=info.get("ServerVersion") if running else None,
        error="; ".join(errors) or None,
        info=info if running else {},
        containers=containers,
        images=images,
        consul_voters=_consul_voters(d.get("consul_raft")),
        consul_checks=_consul_checks(d.get("consul_checks")),
        consul_token_missing=d.get("consul_token_missing") is True,
        consul_raft_error=str(d["consul_raft_error"])[:120] if isinstance(d.get("consul_raft_error"), str) else None,
        foreign_images=tuple(foreign),
    )


CHECK_STATUSES = ("critical", "warning", "passing")  # worst first


def worst_checks(checks: Iterable[tuple[Any, Any]]) -> dict[Any, str]:
    """(key, Consul check status) pairs -> each key's worst status; an unknown status counts
    as critical."""
    out: dict[Any, str] = {}
    for key, status in checks:
        status = status if status in CHECK_STATUSES else "critical"
        if key not in out or CHECK_STATUSES.index(status) < CHECK_STATUSES.index(out[key]):
            out[key] = status
    return out


def _nameservers(entries: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """resolv.conf's nameserver addresses, and the values that are not addresses: those are
    skipped, as the resolver itself skips them (and named in the probe's step)."""
    import ipaddress

    out, bad = [], []
    for entry in entries if isinstance(entries, list) else []:
        value = entry.get("ip") if isinstance(entry, dict) else None
        if not isinstance(value, str):
            continue
        try:
            out.append(str(ipaddress.ip_address(value)))
        except ValueError:
            bad.append(value)
    return tuple(out), tuple(bad)


def _consul_checks(checks: Any) -> dict[str, str] | None:
    """The agent's /v1/agent/checks -> service ID -> worst status (node checks left out)."""
    if not isinstance(checks, dict):
        return None
    return worst_checks(
        (c["ServiceID"], c.get("Status")) for c in checks.values() if isinstance(c, dict) and c.get("ServiceID")
    )


def _ports(values: Any) -> frozenset[int]:
    """/proc/net/tcp's hex port numbers -> ports (odd values skipped)."""
    out = set()
    for v in values if isinstance(values, list) else ():
        try:
            out.add(int(v, 16))
        except (TypeError, ValueError):
            continue
    return frozenset(p for p in out if 0 < p < 65536)


def _consul_voters(raft: Any) -> dict[str, bool] | None:
    if not isinstance(raft, dict) or not isinstance(raft.get("Servers"), list):
        return None
    return {str(s.get("Node", "")): bool(s.get("Voter")) for s in raft["Servers"] if isinstance(s, dict)}


def _network_block(docker: dict[str, Any]) -> dict[str, Any]:
    """The probe's network block, with what the API path read apart from it (its networks, swarm
    nodes and Weave's images) merged in, in the CLI's shapes."""
    block = dict(docker.get("network") or {}) if isinstance(docker.get("network"), dict) else {}
    api = docker.get("network_api")
    if isinstance(api, dict):
        # In the CLI's order: networks by name, nodes by hostname.
        nets, nodes = api.get("networks"), api.get("swarm_nodes")
        block["networks"] = sorted((n for n in nets if isinstance(n, dict)), key=lambda n: str(n.get("Name", ""))) if isinstance(nets, list) else None
        block["swarm_nodes"] = sorted(
            (n for n in nodes if isinstance(n, dict)), key=lambda n: str((n.get("Description") or {}).get("Hostname", ""))
        ) if isinstance(nodes, list) else None
        # Image summaries -> "repository:tag" of the weaveworks/* tags, as `docker images` lists them.
        summaries = api.get("weave_images_api")
        block["weave_images"] = [
            t for i in summaries if isinstance(i, dict) for t in i.get("RepoTags") or [] if isinstance(t, str) and t.startswith("weaveworks/")
        ] if isinstance(summaries, list) else []
    return block


def parse_probe_output(text: str) -> HostFacts:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        head = text.strip().splitlines()[:1]
        raise ProbeError(f"probe output is not JSON ({exc.msg}): {head[0][:120] if head else 'empty'}") from None
    if not isinstance(data, dict) or data.get("probe") != 1:
        raise ProbeError("probe output has an unknown shape")
    ssh_conn = (data.get("ssh_connection") or "").split()
    os_ = data.get("os") or {}
    sudo = data.get("sudo", "")
    return HostFacts(
        hostname=data.get("hostname", ""),
        uid=int(data.get("uid", -1)),
        sudo=None if sudo == "none" else sudo,
        os_id=os_.get("id", ""),
        os_version=os_.get("version_id", ""),
        os_pretty=os_.get("pretty", ""),
        arch=data.get("arch", ""),
        kernel=data.get("kernel", ""),
        init=data.get("init", "other"),
        has_apt=bool(data.get("apt")),
        ssh_server_address=ssh_conn[2] if len(ssh_conn) >= 3 else None,
        ssh_client_address=ssh_conn[0] if len(ssh_conn) >= 3 else None,
        addresses=_parse_addresses(data.get("addresses") or []),
        default_ifname=_default_ifname(data.get("routes") or []),
        docker=_docker(data.get("docker") or {}),
        nameservers=_nameservers(data.get("nameservers"))[0],
        skipped_nameservers=_nameservers(data.get("nameservers"))[1],
        daemon_json=data.get("daemon_json") or "",
        daemon_json_mtime=_epoch(data.get("daemon_json_mtime")),
        engine_started=_epoch(data.get("engine_started")),
        cpus=_epoch(data.get("cpus")) or None,
        memory=(_epoch(data.get("mem_kb")) or 0) * 1024 or None,
        listening=_ports(data.get("listening")),
        managed_files={f["path"]: f["sha256"] for f in data.get("managed_files") or [] if "path" in f},
        spooled=frozenset(n for n in data.get("spooled") or [] if isinstance(n, str) and _SPOOL_NAME.fullmatch(n)),
        network=parse_network_probe(_network_block(data.get("docker") or {}), [r.get("route", "") for r in data.get("routes") or []]),
    )
