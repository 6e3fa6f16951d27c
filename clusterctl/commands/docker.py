"""Builders for installing and starting the Docker engine on a host. Pure: facts in, Cmds out."""

from __future__ import annotations

import shlex
from dataclasses import replace

from clusterctl.commands.base import Cmd, sh, sh_args

APT_ENV = ("env", "DEBIAN_FRONTEND=noninteractive")
# Keep any config file already on the host (e.g. /etc/docker/daemon.json, /etc/default/docker).
APT_KEEP_CONFIG = ("-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")
UPSTREAM_SCRIPT_URL = "https://get.docker.com"


def as_root(cmd: Cmd, sudo: str | None) -> Cmd:
    """Prefix with `sudo -n` when the SSH user is not root (sudo is "" for root)."""
    if not sudo:
        return cmd
    return replace(cmd, argv=tuple(sudo.split()) + cmd.argv)


def install_package() -> Cmd:
    """docker.io from the host's own archive, with its client: from Debian 13 on the client is
    `docker-cli`, only Recommended by docker.io, so it is named whenever the archive has it."""
    # Try with the lists the host has; refresh them only if that fails (a fresh cloud image
    # often has empty lists, an offline host has good ones).
    install = shlex.join(
        [*APT_ENV, "apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_KEEP_CONFIG, "docker.io"]
    )
    with_cli = 'if apt-cache show docker-cli >/dev/null 2>&1; then set -- docker-cli; else set --; fi; '
    # The log goes to a private temp dir (mktemp -d, 0700), never to a fixed name under /tmp
    # that another local user could have made first.
    return sh(
        f't=$(mktemp -d) && trap \'rm -rf "$t"\' EXIT && {{ {with_cli}{install} "$@" >"$t/apt.log" 2>&1 || '
        f"{{ env DEBIAN_FRONTEND=noninteractive apt-get update -q >>\"$t/apt.log\" 2>&1 && "
        f'{with_cli}{install} "$@" >>"$t/apt.log" 2>&1; }} || {{ tail -n 5 "$t/apt.log" >&2; exit 1; }}; }}',
        description="install docker.io (and docker-cli where it is a package of its own) from the distribution's packages",
    )


def install_upstream_script(url: str = UPSTREAM_SCRIPT_URL, sha256: str | None = None) -> Cmd:
    """The upstream script, fetched into a private temp dir; with `sha256`, checked before it
    runs and refused when it differs."""
    return sh_args(
        't=$(mktemp -d) && trap \'rm -rf "$t"\' EXIT && curl -fsSL "$1" -o "$t/get-docker.sh" && '
        'if [ -n "$2" ] && ! printf "%s  %s\\n" "$2" "$t/get-docker.sh" | sha256sum -c --status; then '
        'echo "the install script from $1 is not the pinned one (docker.install_script_sha256): not run" >&2; exit 1; fi && '
        '{ sh "$t/get-docker.sh" >"$t/get-docker.log" 2>&1 || { tail -n 5 "$t/get-docker.log" >&2; exit 1; }; }',
        url, sha256 or "",
        description="install Docker with the upstream script" + (" (checked against its pinned sha256)" if sha256 else ""),
    )  # fmt: skip


def start_engine(systemd: bool) -> Cmd:
    if systemd:
        return Cmd(("systemctl", "enable", "--now", "docker"), "enable and start docker (systemd)")
    return Cmd(("service", "docker", "start"), "start docker (init script)")


def wait_for_engine(timeout: float) -> Cmd:
    """Poll `docker info` until the engine answers; fail with its last error. Every 0.1 s: a
    restart's engine answers within a second or so, and each poll is one short CLI call."""
    return sh_args(
        'i=0; while ! err=$(docker info 2>&1 >/dev/null); do '
        'i=$((i+1)); if [ "$i" -ge "$1" ]; then echo "docker did not answer within $2s:" >&2; '
        'printf "%s\\n" "$err" | tail -n 2 >&2; exit 1; fi; sleep 0.1; done',
        str(max(1, int(timeout * 10))),
        f"{timeout:g}",
        description="wait until `docker info` answers",
    )


def restart_engine(systemd: bool) -> Cmd:
    if systemd:
        return Cmd(("systemctl", "restart", "docker"), "restart docker (systemd)")
    return Cmd(("service", "docker", "restart"), "restart docker (init script)")
