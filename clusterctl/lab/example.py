"""The local lab 'default''s example: the article's express hello app as a 2-replica service
(node in the filebox), and, once `up` has run, what `hello.service.consul` answers from a plain
container. Only the lab 'default' (`clusterctl up` with no cluster file) carries it."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "examples" / "hello"
SERVICE = "hello"
PORT = 3000
URL = f"http://{SERVICE}.service.consul:{PORT}/"


def example_sections(app: Path = APP, node: str | None = None) -> tuple[dict, str | None]:
    """The cluster file's sections for the example, or ({}, why it is left out)."""
    node = node if node is not None else shutil.which("node")
    if not (app / "clusterctl-app.yaml").is_file():
        return {}, f"{app}: no clusterctl-app.yaml"
    if not (app / "node_modules").is_dir():
        return {}, f"{app}/node_modules is missing (scripts/setup.sh installs it with npm)"
    if node is None:
        return {}, "node is not installed on this machine (scripts/setup.sh installs nodejs)"
    service = {"name": SERVICE, "app": str(app), "replicas": 2, "check": {"http": "/"}}
    return {"filebox": {"binaries": ["consul", "node"]}, "services": [service]}, None


def is_example(cluster, default_file: Path) -> bool:  # noqa: ANN001 - a loaded Cluster
    return cluster.path.resolve() == default_file.resolve() and any(s.name == SERVICE for s in cluster.spec.services)


def ask_line(tries: int = 10) -> str:
    """A shell line for one host: a plain BusyBox container (the cluster's base image, the
    service's own image not needed) fetches the service by its Consul name, asked again for a
    few seconds while a just-registered name spreads."""
    fetch = shlex.join(["wget", "-qO-", URL])
    return (
        'S=; [ "$(id -u)" = 0 ] || S="sudo -n"; '
        "image=$($S docker images clusterctl/base --format '{{.Repository}}:{{.Tag}}' | head -n 1); "
        '[ -n "$image" ] || { echo "no clusterctl/base image on this host" >&2; exit 1; }; '
        f"for i in $(seq {tries}); do "
        f'$S docker run --rm --entrypoint busybox "$image" {fetch} && exit 0; sleep 1; done; exit 1'
    )
