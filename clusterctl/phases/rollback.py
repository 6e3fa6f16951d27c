"""`clusterctl rollback SERVICE`: the service's replicas back on the version its last rollout
kept on each host (commands/service.py: stopped, renamed NAME.prev, the definition aside).

Per host, one host at a time: the kept replicas whose IDs no replica holds (a start-first
rollout kept them) start again, register and pass first; replicas that trade places with their
kept version (stop-first) are drained, stopped, and their kept version starts in their place;
replicas with nothing kept for them are drained and kept in turn. What ran is kept as the
previous version: a second rollback goes forward again. The next `up` rolls the service to
the cluster file again (the file did not change).
"""

from __future__ import annotations

from clusterctl.commands import service as build
from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.config.models import Host, duration_seconds
from clusterctl.facts.parser import HostFacts
from clusterctl.phases.base import Context, PhaseError
from clusterctl.phases.services import retired_replicas, service_containers


class RollbackPhase:
    name = "rollback"
    title = "A service back on the previous version its hosts kept"

    def __init__(self, service: str) -> None:
        self.service = service

    def _kept(self, ctx: Context, facts: HostFacts) -> set[str]:
        return {rid for rid, svc in retired_replicas(ctx, facts).items() if svc == self.service}

    def check(self, ctx: Context) -> None:
        if not any(self._kept(ctx, f) for f in ctx.facts.values()):
            raise PhaseError(
                f"services.{self.service}: no host keeps a previous version of it "
                "(a rollout keeps the version it replaced; none has replaced it since it started)"
            )

    def rolling(self, ctx: Context, host: Host, facts: HostFacts) -> bool:
        return bool(self._kept(ctx, facts))

    def notes(self, ctx: Context) -> list[str]:
        hosts = [name for name, f in ctx.facts.items() if self._kept(ctx, f)]
        return [f"services.{self.service}: back on the previous version on {', '.join(hosts)}; "
                "`up` rolls it to the cluster file again: change the file first"] if hosts else []  # fmt: skip

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        kept = self._kept(ctx, facts)
        if not kept:
            return []
        spec = next((s for s in ctx.cluster.spec.services if s.name == self.service), None)
        grace = duration_seconds(spec.stop_grace) if spec else 10.0
        deadline = duration_seconds(spec.check.deadline) if spec else 90.0
        current = {rid: c for rid, c in service_containers(ctx, facts).items() if c.labels.get("clusterctl.service") == self.service}
        live = {p.rsplit("/", 1)[1].removesuffix(".json") for p in facts.managed_files if p.startswith(build.SERVICES_DIR + "/")}
        stashed = {p.rsplit("/", 1)[1].removesuffix(".json") for p in facts.managed_files if p.startswith(build.ROLLBACK_DIR + "/")}
        back = sorted(kept - set(current))  # start-first kept them: they start beside what runs
        swap = sorted(kept & set(current))  # stop-first kept them: they trade places
        go = sorted(set(current) - kept)  # nothing kept for them: drained and kept in turn
        registered = {rid for rid in kept if rid in stashed}
        cmds: list[Cmd] = []
        if back:
            cmds.append(build.restore_retired(back))
        if swap:
            cmds += [build.set_aside_definitions(swap)]
            if drained := [rid for rid in swap if rid in live]:
                cmds += [build.reload_agent(), build.wait_deregistered(drained, host.name)]
            cmds += [build.swap_with_previous(rid, grace) for rid in swap]
            cmds.append(build.promote_definitions(swap))
        if registered:
            cmds.append(build.reload_agent())
        for rid in back + swap:
            cmds.append(build.wait_healthy(rid, deadline) if rid in registered else build.wait_running(rid, deadline))
        if registered:
            cmds.append(build.wait_registered(sorted(registered), host.name))
        if go:
            if drained := [rid for rid in go if rid in live]:
                cmds += [build.stash_definitions(drained), build.reload_agent(), build.wait_deregistered(drained, host.name)]
            cmds += [build.retire(rid, grace) for rid in go]
        return [as_root(c, facts.sudo) for c in cmds]
