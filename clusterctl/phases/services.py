"""The services phase: each service's replicas placed (schedule/placement.py), started as
microcontainers, registered with their host's Consul agent, and waited for until healthy.

Per host, in order: replicas no longer placed here are removed (and deregistered), app images
the host lacks are loaded (only the app's own layers cross: the base is there already), changed
replicas are replaced, definitions are written, the agent reloads once, and `up` waits for each
started replica's health check. Hosts that replace a running replica go one at a time, so the
other replicas keep serving.
"""

from __future__ import annotations

from collections.abc import Mapping

from clusterctl.commands import service as build
from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.commands.files import sha256, write_secret_tree
from clusterctl.config.loader import Cluster
from clusterctl.config.models import Host, Service, duration_seconds, format_size
from clusterctl.errors import UserError
from clusterctl.facts.parser import Container, HostFacts
from clusterctl.phases.base import Context, ContextMemo, PhaseError, PlanError, cluster_containers
from clusterctl.secrets import Secret
from clusterctl.shipping.store import image_ref
from clusterctl.shipping.stream import load_missing_images
from clusterctl.schedule.placement import Placement, PlacementError, place_file


def service_containers(ctx: Context, facts: HostFacts) -> dict[str, Container]:
    """This cluster's service replicas on a host, by service name."""
    replicas = cluster_containers(ctx, facts, build.ROLE)
    return {c.labels["clusterctl.service"]: c for c in replicas if c.labels.get("clusterctl.service")}


def placement(ctx: Context) -> Placement:
    spec = ctx.cluster.spec
    running: dict[str, list[str]] = {}
    for name, facts in ctx.facts.items():
        for svc in service_containers(ctx, facts):
            running.setdefault(svc, []).append(name)
    try:
        # Hosts outside a `--host` run count as up: this run neither starts nor removes
        # anything there, and a replica on a selected host is not moved because of them.
        # Hosts outside the run were not probed: sized from the file, else by default.
        engines = {name: f.engine_size() for name, f in ctx.facts.items()}
        return place_file(spec, set(ctx.facts) | ctx.outside, running, service_ports(ctx), engines)
    except PlacementError as exc:
        raise PhaseError(str(exc)) from None


def service_port(ctx: Context, svc: Service) -> int | None:
    """The port a service publishes: its own, else its app's (clusterctl-app.yaml)."""
    app = ctx.inputs.apps.get(svc.name)
    return svc.port or (int(app.config.labels.get("clusterctl.port", 0)) if app is not None else 0) or None


def service_ports(ctx: Context) -> dict[str, int | None]:
    return {s.name: service_port(ctx, s) for s in ctx.cluster.spec.services}


def replica(ctx: Context, svc: Service, host: Host, facts: HostFacts) -> build.Replica:
    spec = ctx.cluster.spec
    address = host.cluster_address or facts.cluster_address()
    if not address:
        raise PlanError("no cluster address: set cluster_address for this host")
    app = ctx.inputs.apps.get(svc.name)
    if svc.app is not None and app is None:
        raise PlanError(f"services.{svc.name}: the app image was not built")
    port = service_port(ctx, svc)
    return build.Replica(
        service=svc.name,
        host=host.name,
        image=image_ref(app, facts) if app is not None else svc.image,  # type: ignore[arg-type]
        address=address,
        port=port,
        command=svc.command,
        env=tuple(sorted((k, v) for k, v in svc.env.items() if isinstance(v, str))),
        secret_env=tuple(sorted(k for k, v in svc.env.items() if not isinstance(v, str))),
        filebox_container=ctx.inputs.filebox_container,
        network=spec.network.name,
        cluster=ctx.cluster.name,
        check_http=svc.check.http,
        check_interval=svc.check.interval,
        check_timeout=svc.check.timeout,
        deadline=duration_seconds(svc.check.deadline),
        cpus=svc.resources.cpu if svc.resources else None,
        memory=format_size(svc.resources.memory) if svc.resources and svc.resources.memory else None,
    )


def secret_env_inputs(cluster: Cluster, environ: Mapping[str, str]) -> dict[str, dict[str, Secret]]:
    """The secret env values of the file's services, from the operator's environment: a name
    that is not set, or a value an env file cannot hold, is one line naming the key."""
    out: dict[str, dict[str, Secret]] = {}
    for i, svc in enumerate(cluster.spec.services):
        for key, value in svc.env.items():
            if isinstance(value, str):
                continue
            found = environ.get(value.from_env)
            if found is None:
                raise UserError(f"{cluster.where('services', i, 'env', key)}: {value.from_env} is not set in this environment")
            if "\n" in found or "\r" in found or "\0" in found:
                raise UserError(f"{cluster.where('services', i, 'env', key)}: the value of {value.from_env} holds a line break or NUL (an env file takes one line a value)")
            out.setdefault(svc.name, {})[key] = Secret(found)
    return out


def env_file(ctx: Context, r: build.Replica) -> bytes:
    """The replica's env file: its secret values, KEY=VALUE a line (docker's --env-file)."""
    values = ctx.inputs.service_env.get(r.service, {})
    missing = [k for k in r.secret_env if k not in values]
    if missing:
        raise PlanError(f"services.{r.service}: no value for {', '.join(missing)} (secret env not read)")
    return "".join(f"{k}={values[k]}\n" for k in r.secret_env).encode()


def _under_root(path: str) -> str:
    return path.removeprefix(build.ROOT + "/")


def service_token(ctx: Context, service: str) -> str | None:
    """The service's ACL token (phases/consul_acl.py), put in its definition."""
    acl = ctx.inputs.acl
    if not ctx.cluster.spec.consul.enabled or acl is None:
        return None
    token = acl.services.get(service)
    if token is None:
        raise PlanError(f"services.{service}: no ACL token (the operator's tokens were not settled)")
    return token


class ServicesPhase:
    name = "services"
    title = "Service replicas placed, started and registered in Consul"
    # A host that lacks an app image gets it in a pass of its own (one stdin a script: the
    # image stream, or the definitions, which carry the services' tokens).
    passes = 2

    def __init__(self) -> None:
        self._placement = ContextMemo(placement)

    def check(self, ctx: Context) -> None:
        if ctx.cluster.spec.services or any(service_containers(ctx, f) for f in ctx.facts.values()):
            self._placement(ctx)

    def _wanted(self, ctx: Context, host: Host, facts: HostFacts) -> list[build.Replica]:
        spec = ctx.cluster.spec
        names = set(self._placement(ctx).services_on(host.name))
        return [replica(ctx, s, host, facts) for s in spec.services if s.name in names]

    def rolling(self, ctx: Context, host: Host, facts: HostFacts) -> bool:
        """A host replacing a running replica goes alone: the other replicas keep serving."""
        if not ctx.cluster.spec.services:
            return False
        current = service_containers(ctx, facts)
        return any(
            (c := current.get(r.service)) is not None and c.running and c.labels.get("clusterctl.config") != r.digest()
            for r in self._wanted(ctx, host, facts)
        )

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        current = service_containers(ctx, facts)
        registered = {
            path.rsplit("/", 1)[1].removesuffix(".json")
            for path in facts.managed_files
            if path.startswith(build.SERVICES_DIR + "/") and path.endswith(".json")
        }
        if not ctx.cluster.spec.services and not current and not registered:
            return []
        consul = ctx.cluster.spec.consul.enabled
        wanted = self._wanted(ctx, host, facts)
        # Secret env files, compared by content (never by a label: a hash of a password is
        # not shown to whoever can read labels); a new value recreates the replica.
        env_files = {r.service: env_file(ctx, r) for r in wanted if r.secret_env}
        env_writes = {n: b for n, b in env_files.items() if facts.managed_files.get(build.env_file_path(n)) != sha256(b)}
        stale_env = sorted(
            path for path in facts.managed_files
            if path.startswith(build.ENV_DIR + "/") and path.removeprefix(build.ENV_DIR + "/").removesuffix(".env") not in env_files
        )  # fmt: skip
        # What changes: a replica to (re)start, and the definitions to take away or write.
        start: list[build.Replica] = []
        for r in wanted:
            c = current.get(r.service)
            if c is None or c.labels.get("clusterctl.config") != r.digest() or not c.running or r.service in env_writes:
                start.append(r)
        registering = {r.service: r for r in wanted if consul and r.port}
        # A replica about to stop is deregistered first, so clients stop being sent to it, and
        # registered again once it runs: its check starts critical, so the wait below sees a
        # fresh check pass, never the old replica's last result.
        drain = sorted(registered - (set(registering) - {r.service for r in start}))
        definitions = {name: r.definition(service_token(ctx, name)) for name, r in registering.items()}
        write = [
            r
            for name, r in registering.items()
            if name in drain or facts.managed_files.get(build.definition_path(name)) != sha256(definitions[name])
        ]
        apps = tuple(app for r in wanted if (app := ctx.inputs.apps.get(r.service)) is not None)
        loads = [load] if apps and (load := load_missing_images(apps, facts)) is not None else []
        if loads and (write or env_writes):  # images first, in a pass of their own; the rest once they are there
            return [as_root(c, facts.sudo) for c in loads]
        cmds: list[Cmd] = [build.remove_definition(name) for name in drain]
        if drain:
            cmds.append(build.reload_agent())
            cmds += [build.wait_deregistered(name, host.name) for name in drain]
        grace = {s.name: duration_seconds(s.stop_grace) for s in ctx.cluster.spec.services}
        for name in sorted(set(current) - {r.service for r in wanted}):
            # Gone from this host (frees its port first); a service gone from the file stops at once.
            cmds.append(build.remove(name, grace.get(name, 0) if current[name].running else 0))
        if stale_env:
            cmds.append(Cmd(("rm", "-f", *stale_env), "remove the secret env of services gone from this host"))
        cmds += loads
        if write or env_writes:
            # One stdin: definitions (with their tokens) and env files, before the replicas run
            # (docker reads the env file when it creates the container); loaded once they run.
            files = {_under_root(build.definition_path(r.service)): definitions[r.service].encode() for r in write}
            files.update({_under_root(build.env_file_path(n)): b for n, b in env_writes.items()})
            what = []
            if write:
                what.append(f"register {', '.join(r.service for r in write)} with consul (0600: with their tokens)")
            if env_writes:
                what.append(f"write the secret env of {', '.join(sorted(env_writes))} (0600)")
            cmds.append(write_secret_tree(build.ROOT, files, "; ".join(what)))
        for r in wanted:
            if r in start:
                c = current.get(r.service)
                if c is not None and c.labels.get("clusterctl.config") == r.digest() and r.service not in env_writes:
                    cmds.append(build.start(r.service))
                else:
                    if c is not None:
                        cmds.append(build.remove(r.service, grace[r.service] if c.running else 0))
                    cmds.append(r.run())
        checks = facts.docker.consul_checks
        if write:
            cmds.append(build.reload_agent())
        elif checks is not None and (unloaded := [n for n in registering if n not in checks]):
            # A definition on disk the agent does not hold (a run stopped before its reload, or
            # deregistered behind clusterctl's back): planned from the agent, not the file, or
            # the wait below would wait for a check that does not exist.
            reload = build.reload_agent()
            cmds.append(Cmd(reload.argv, f"load {', '.join(unloaded)} into consul: defined on disk, unknown to the agent"))
        for r in wanted:
            if r.service in {w.service for w in write}:
                cmds.append(build.wait_healthy(r.service, r.deadline))
            elif r in start:
                cmds.append(build.wait_running(r.service, r.deadline))
            elif r.service in registering and (checks is None or checks.get(r.service) != "passing"):
                # Up to date but not passing (e.g. it came back with its host and its check has
                # not run yet, or the app is failing): `up` is done only once it passes.
                cmds.append(build.wait_healthy(r.service, r.deadline))
        return [as_root(c, facts.sudo) for c in cmds]
