"""Builders for installing and starting the Docker engine on a host. Pure: facts in, Cmds out."""

from __future__ import annotations

import shlex

from clusterctl.commands.base import Cmd, sh, sh_args

APT_ENV = ("env", "DEBIAN_FRONTEND=noninteractive")
# Keep any config file already on the host (e.g. /etc/docker/daemon.json, /etc/default/docker).
APT_KEEP_CONFIG = ("-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")
UPSTREAM_SCRIPT_URL = "https://get.docker.com"


def as_root(cmd: Cmd, sudo: str | None) -> Cmd:
    """Prefix with `sudo -n` when the SSH user is not root (sudo is "" for root)."""
    if not sudo:
        return cmd
    return Cmd(tuple(sudo.split()) + cmd.argv, cmd.description, cmd.check, stdin=cmd.stdin)


def install_package() -> Cmd:
    """docker.io from the host's own archive, with its client: from Debian 13 on the client is
    `docker-cli`, only Recommended by docker.io, so it is named whenever the archive has it."""
    # Try with the lists the host has; refresh them only if that fails (a fresh cloud image
    # often has empty lists, an offline host has good ones).
    install = shlex.join(
        [*APT_ENV, "apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_KEEP_CONFIG, "docker.io"]
    )
    with_cli = 'if apt-cache show docker-cli >/dev/null 2>&1; then set -- docker-cli; else set --; fi; '
    return sh(
        f"{with_cli}{install} \"$@\" >/tmp/clusterctl-apt.log 2>&1 || "
        f"{{ env DEBIAN_FRONTEND=noninteractive apt-get update -q >>/tmp/clusterctl-apt.log 2>&1 && "
        f"{with_cli}{install} \"$@\" >>/tmp/clusterctl-apt.log 2>&1; }} || {{ tail -n 5 /tmp/clusterctl-apt.log >&2; exit 1; }}",
        description="install docker.io (and docker-cli where it is a package of its own) from the distribution's packages",
    )


def install_upstream_script(url: str = UPSTREAM_SCRIPT_URL) -> Cmd:
    return sh_args(
        'curl -fsSL "$1" -o /tmp/get-docker.sh && sh /tmp/get-docker.sh >/tmp/clusterctl-get-docker.log 2>&1 '
        '|| { tail -n 5 /tmp/clusterctl-get-docker.log >&2; exit 1; }',
        url,
        description="install Docker with the upstream script",
    )


def start_engine(systemd: bool) -> Cmd:
    if systemd:
        return Cmd(("systemctl", "enable", "--now", "docker"), "enable and start docker (systemd)")
    return Cmd(("service", "docker", "start"), "start docker (init script)")


def wait_for_engine(timeout: float) -> Cmd:
    """Poll `docker info` until the engine answers; fail with its last error."""
    return sh_args(
        'i=0; while ! docker info >/dev/null 2>/tmp/clusterctl-docker-info.err; do '
        'i=$((i+1)); if [ "$i" -ge "$1" ]; then echo "docker did not answer within $2s:" >&2; '
        'tail -n 2 /tmp/clusterctl-docker-info.err >&2; exit 1; fi; sleep 0.5; done',
        str(max(1, int(timeout * 2))),
        f"{timeout:g}",
        description="wait until `docker info` answers",
    )


def restart_engine(systemd: bool) -> Cmd:
    if systemd:
        return Cmd(("systemctl", "restart", "docker"), "restart docker (systemd)")
    return Cmd(("service", "docker", "restart"), "restart docker (init script)")
