"""The docker phase: install the engine where it is missing, start it where it is stopped."""

from __future__ import annotations

from clusterctl.commands import docker as build
from clusterctl.commands.base import Cmd
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts
from clusterctl.phases.base import Context, PlanError
from clusterctl.phases.engine import engine_daemon_json
from clusterctl.shipping.stream import receiving_meanwhile


class DockerPhase:
    name = "docker"
    title = "Docker engine installed and running"

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        if facts.docker.running:
            return []
        if facts.sudo is None:
            raise PlanError(f"user uid {facts.uid} is not root and has no passwordless sudo")
        section = ctx.cluster.spec.docker
        cmds: list[Cmd] = []
        install: Cmd | None = None
        if not facts.docker.installed:
            if section.install == "none":
                raise PlanError("Docker is not installed and docker.install is 'none'")
            daemon = engine_daemon_json(ctx, facts)
            if daemon is not None:
                # Before the first start, so the engine phase finds nothing to change (no restart).
                cmds.append(daemon)
            if section.install == "package":
                if not facts.has_apt:
                    raise PlanError(
                        f"no apt-get on {facts.os_pretty or 'this host'}; set docker.install: script, "
                        "or install Docker yourself"
                    )
                install = build.install_package()
            else:
                install = build.install_upstream_script(sha256=section.install_script_sha256)
        start = build.start_engine(facts.systemd)
        from clusterctl.phases.filebox import load_ahead  # the filebox phase's own plan

        ahead = load_ahead(ctx, host, facts)
        if ahead is not None:
            # The install (tens of seconds of apt), else the start (a second of waiting): the
            # filebox's archive crosses meanwhile, and the filebox phase loads it from the file.
            if install is not None:
                install = receiving_meanwhile(install, ahead)
            else:
                start = receiving_meanwhile(start, ahead)
        cmds += [c for c in (install, start) if c is not None]
        cmds.append(build.wait_for_engine(section.start_timeout))
        return [build.as_root(c, facts.sudo) for c in cmds]
