"""Builders for service replicas: the microcontainer, its Consul registration, the health wait.

A replica publishes its port on its host's cluster address and is registered with the host's
Consul agent at that address: any container on any host (on the cluster network or a plain
`docker run`) reaches NAME.service.consul:PORT, and the agent's health check, which runs in the
host's network namespace, reaches the replica the same way clients do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from clusterctl.commands.base import Cmd, sh_args
from clusterctl.commands.consul import CONTAINER as CONSUL_CONTAINER
from clusterctl.commands.consul import SERVICES_DIR, consul_cli

CONTAINER_PREFIX = "clusterctl-svc-"
ROLE = "service"


def container_name(service: str) -> str:
    return CONTAINER_PREFIX + service


def definition_path(service: str) -> str:
    return f"{SERVICES_DIR}/{service}.json"


# Secret env values of a service: one 0600 file each in a root-only dir, read by `docker run
# --env-file` (the docker CLI, as root), so values are never on a command line.
ROOT = "/etc/clusterctl"
ENV_DIR = f"{ROOT}/env"


def env_file_path(service: str) -> str:
    return f"{ENV_DIR}/{service}.env"


@dataclass(frozen=True)
class Replica:
    """One service replica on one host, as it should run."""

    service: str
    host: str
    image: str
    # Where the port is published and registered: the host's cluster address.
    address: str
    port: int | None
    command: tuple[str, ...] | None
    env: tuple[tuple[str, str], ...]
    filebox_container: str | None
    network: str | None
    cluster: str
    check_http: str | None = None
    check_interval: str = "5s"
    check_timeout: str = "2s"
    # Seconds `up` waits for the replica to pass (or, without Consul, to keep running).
    deadline: float = 90.0
    extra_labels: tuple[tuple[str, str], ...] = field(default=())
    # Names of the secret env values, which come from env_file_path (their values never here).
    secret_env: tuple[str, ...] = ()
    # Docker's limits (--cpus, --memory): what placement counted for this replica on its host.
    cpus: float | None = None
    memory: str | None = None

    @property
    def container(self) -> str:
        return container_name(self.service)

    def digest(self) -> str:
        """Changes whenever the container would run differently (the check is Consul's, not Docker's)."""
        doc = {
            "image": self.image, "address": self.address, "port": self.port, "command": self.command,
            "env": self.env, "filebox": self.filebox_container, "network": self.network,
            **({"secret_env": list(self.secret_env)} if self.secret_env else {}),
            # Only when set: a replica without limits keeps the digest it had before they existed.
            **({"cpus": self.cpus} if self.cpus else {}), **({"memory": self.memory} if self.memory else {}),
        }  # fmt: skip
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def run(self) -> Cmd:
        argv = [
            "docker", "run", "-d", "--name", self.container, "--restart", "unless-stopped",
            "--label", f"clusterctl.cluster={self.cluster}",
            "--label", f"clusterctl.role={ROLE}",
            "--label", f"clusterctl.service={self.service}",
            "--label", f"clusterctl.config={self.digest()}",
        ]  # fmt: skip
        for key, value in self.extra_labels:
            argv += ["--label", f"{key}={value}"]
        if self.filebox_container:
            argv += ["--volumes-from", f"{self.filebox_container}:ro"]
        if self.network:
            argv += ["--network", self.network]
        if self.port:
            argv += ["-p", f"{_host_part(self.address)}:{self.port}:{self.port}"]
        for key, value in self.env:
            argv += ["-e", f"{key}={value}"]
        if self.secret_env:
            argv += ["--env-file", env_file_path(self.service)]
        if self.cpus:
            argv += ["--cpus", f"{self.cpus:g}"]
        if self.memory:
            argv += ["--memory", self.memory]
        argv.append(self.image)
        argv += list(self.command or ())
        where = f" on {self.address}:{self.port}" if self.port else ""
        return Cmd(tuple(argv), f"start {self.service}{where}")

    def definition(self, token: str | None = None) -> str:
        """The agent's service definition (JSON; Consul reads it from its -config-dir), with the
        service's ACL token (it may write this service only) when Consul runs ACLs: the file is
        then a secret, written 0600 from stdin."""
        target = f"{_host_part(self.address)}:{self.port}"
        check: dict[str, object] = {
            "id": f"{self.service}-alive",
            "name": f"{self.service} answers on {target}",
            "interval": self.check_interval,
            "timeout": self.check_timeout,
        }
        if self.check_http:
            check["http"] = f"http://{target}{self.check_http}"
        else:
            check["tcp"] = target
        doc = {
            "service": {
                "id": self.service,
                "name": self.service,
                "address": self.address,
                "port": self.port,
                "tags": ["clusterctl"],
                "meta": {"host": self.host, "container": self.container},
                "check": check,
            }
        }
        if token:
            doc["service"]["token"] = token
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def _host_part(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def remove(service: str, grace: float = 0) -> Cmd:
    """With `grace`: SIGTERM first, and up to that many seconds for in-flight requests to end
    (the replica was deregistered before, so no new ones come), then removed."""
    if grace <= 0:
        return Cmd(("docker", "rm", "-f", container_name(service)), f"remove the {service} container", check=False)
    return sh_args(
        'docker stop -t "$2" "$1" >/dev/null 2>&1; docker rm -f "$1" >/dev/null',
        container_name(service), str(max(1, round(grace))),
        description=f"remove the {service} container (stopped first: up to {grace:g}s for in-flight requests)",
        check=False,
    )  # fmt: skip


def start(service: str) -> Cmd:
    return Cmd(("docker", "start", container_name(service)), f"start the stopped {service} container")


def remove_definition(service: str) -> Cmd:
    return Cmd(("rm", "-f", definition_path(service)), f"deregister {service} from this host's consul agent")


def reload_agent() -> Cmd:
    return consul_cli("reload", description="reload consul's service definitions")


def wait_deregistered(service: str, node: str, timeout: float = 15.0) -> Cmd:
    """Until the catalog (asked through the host's agent, so the leader answers) no longer lists
    the service on this node: the agent syncs a removal to the servers on its own time, and a
    replica stopped before that is still handed out by DNS."""
    return sh_args(
        'i=0; while docker exec "$1" timeout 3 wget -qO- "http://127.0.0.1:8500/v1/catalog/service/$2" 2>/dev/null | grep -qF "\\"Node\\":\\"$3\\""; do '
        'i=$((i+1)); if [ "$i" -ge "$4" ]; then echo "the catalog still lists $2 on $3 after $5s" >&2; exit 1; fi; sleep 0.2; done',
        CONSUL_CONTAINER, service, node, str(max(1, int(timeout * 5))), f"{timeout:g}",
        description=f"wait until the catalog no longer hands out {service} here",
    )  # fmt: skip


def wait_healthy(service: str, timeout: float) -> Cmd:
    """Until the host's agent reports the replica's checks passing (the endpoint answers 200
    only then; BusyBox wget fails on its 503)."""
    return sh_args(
        'i=0; while :; do '
        'if docker exec "$1" timeout 3 wget -qO /dev/null "http://127.0.0.1:8500/v1/agent/health/service/id/$2" 2>/dev/null; then exit 0; fi; '
        'i=$((i+1)); '
        'if [ "$i" -ge "$3" ]; then echo "$2 is not healthy after $4s; its last output:" >&2; docker logs --tail 5 "$5" >&2; exit 1; fi; '
        "sleep 0.5; done",
        CONSUL_CONTAINER, service, str(max(1, int(timeout * 2))), f"{timeout:g}", container_name(service),
        description=f"wait until consul reports {service} healthy",
    )  # fmt: skip


def wait_running(service: str, timeout: float) -> Cmd:
    """Without Consul: until the container has run for a second without exiting."""
    return sh_args(
        'i=0; while :; do s=$(docker inspect -f "{{.State.Status}} {{.RestartCount}}" "$1" 2>/dev/null); '
        'case "$s" in "running 0") [ "$i" -ge 2 ] && exit 0 ;; esac; '
        'i=$((i+1)); '
        'if [ "$i" -ge "$2" ]; then echo "$1 is not running ($s); its last output:" >&2; docker logs --tail 5 "$1" >&2; exit 1; fi; '
        "sleep 0.5; done",
        container_name(service), str(max(3, int(timeout * 2))),
        description=f"wait until {service} keeps running",
    )  # fmt: skip
