"""Helpers for the e2e tests that talk to the lab's Consul as the operator would."""

from __future__ import annotations

import subprocess
from pathlib import Path

from clusterctl.lab import lab as lab_mod


def state_dir_of(lab) -> Path:
    """The cluster's state dir of the suite's operator (beside the lab's files)."""
    return lab.cluster_file.parent.parent.parent / "clusters" / f"lab-{lab.name}"


def as_operator(lab, host: str, *consul_args: str, token: str | None = None, check: bool = False) -> str:
    """`consul ARGS` in the host's agent container with the operator's management token, which
    goes on stdin (never on a command line); stdout and stderr together."""
    if token is None:
        token = (state_dir_of(lab) / "acl" / "management.token").read_text().strip()
    script = 'read -r CONSUL_HTTP_TOKEN; export CONSUL_HTTP_TOKEN; exec consul "$@"'
    proc = subprocess.run(
        [lab_mod.docker_cli(), "exec", "-i", lab.container(host), "docker", "exec", "-i", "clusterctl-consul",
         "sh", "-c", script, "consul", *consul_args],
        input=token + "\n", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr
