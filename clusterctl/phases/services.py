"""The services phase: each service's replicas placed (schedule/placement.py), started as
microcontainers, registered with their host's Consul agent, and waited for until healthy.

Per host, in order: replicas no longer placed here are removed (and deregistered), app images
the host lacks are loaded (only the app's own layers cross: the base is there already), changed
replicas are replaced, definitions are written, the agent reloads once, and `up` waits for each
started replica's health check. Before that reload clusterctl checks each replica it registers
once itself, from the host, as the agent would (commands/service.py register_checked): one that
answers is registered with its check passing from the start, so the wait ends at once instead
of waiting for the agent's first check (staggered at random within the interval). Hosts that replace a running replica go one at a time, so the
other replicas keep serving; a host that only gives up replicas of a service that other hosts
start (a rebalance, a move off a host) goes after them, so the new ones serve first.

A host's replicas of a service are its slots 1..N (commands/service.py names them): the lowest
slots that run stay, new ones take the lowest free numbers. A `ports: dynamic` replica keeps the
host port it runs on; a new one takes the lowest port of placement.port_range that no socket
on the host listens on and no replica there holds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from collections.abc import Iterator, Mapping

from clusterctl.commands import service as build
from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.commands.files import sha256, write_secret_tree
from clusterctl.config.loader import Cluster
from clusterctl.config.models import Host, Service, duration_seconds, format_size
from clusterctl.errors import UserError
from clusterctl.facts.parser import Container, HostFacts
from clusterctl.network.addresses import NoMeshAddress, talk_address
from clusterctl.phases.base import Context, ContextMemo, PhaseError, PlanError, cluster_containers
from clusterctl.secrets import Secret
from clusterctl.shipping.store import image_ref
from clusterctl.shipping.stream import load_missing_images
from clusterctl.schedule.placement import Placement, PlacementError, place_file


def slot_of(c: Container) -> int:
    value = c.labels.get("clusterctl.slot", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def port_of(c: Container) -> int | None:
    value = c.labels.get("clusterctl.port", "")
    return int(value) if value.isdigit() and 0 < int(value) < 65536 else None


def service_containers(ctx: Context, facts: HostFacts) -> dict[str, Container]:
    """This cluster's service replicas on a host, by replica ID (NAME, NAME.2, ...)."""
    replicas = cluster_containers(ctx, facts, build.ROLE)
    return {
        build.replica_id(c.labels["clusterctl.service"], slot_of(c)): c
        for c in replicas
        if c.labels.get("clusterctl.service") and not c.name.endswith(build.RETIRED_SUFFIX)  # kept by a rollout: not a replica
    }


def running_replicas(ctx: Context) -> dict[str, list[str]]:
    """Service name -> the host of each replica found (a host once per replica)."""
    running: dict[str, list[str]] = {}
    for name, facts in ctx.facts.items():
        for c in service_containers(ctx, facts).values():
            running.setdefault(c.labels["clusterctl.service"], []).append(name)
    return running


def placement(ctx: Context, rebalance: bool | None = None) -> Placement:
    """Where the replicas go in this run (rebalanced when the operator asked for it)."""
    spec = ctx.cluster.spec
    running = running_replicas(ctx)
    try:
        # Hosts outside a `--host` run count as up: this run neither starts nor removes
        # anything there, and a replica on a selected host is not moved because of them.
        # Hosts outside the run were not probed: sized from the file, else by default.
        engines = {name: f.engine_size() for name, f in ctx.facts.items()}
        again = ctx.inputs.rebalance if rebalance is None else rebalance
        return place_file(spec, set(ctx.facts) | ctx.outside, running, service_ports(ctx), engines, again)
    except PlacementError as exc:
        raise PhaseError(str(exc)) from None


def service_port(ctx: Context, svc: Service) -> int | None:
    """The port a service publishes: its own, else its app's (clusterctl-app.yaml)."""
    app = ctx.inputs.apps.get(svc.name)
    return svc.port or (int(app.config.labels.get("clusterctl.port", 0)) if app is not None else 0) or None


def service_ports(ctx: Context) -> dict[str, int | None]:
    return {s.name: service_port(ctx, s) for s in ctx.cluster.spec.services}


def replica(ctx: Context, svc: Service, host: Host, facts: HostFacts, slot: int = 1, host_port: int | None = None) -> build.Replica:
    spec = ctx.cluster.spec
    try:
        address = talk_address(ctx.cluster, host, facts)
    except NoMeshAddress as exc:
        raise PlanError(str(exc)) from None
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
        slot=slot,
        host_port=host_port,
    )


def free_ports(ctx: Context, facts: HostFacts, held: set[int]) -> Iterator[int]:
    """placement.port_range's ports, lowest first, that nothing on the host listens on and no
    replica there (running or not) publishes, nor `held`."""
    low, high = ctx.cluster.spec.placement.port_range
    taken = set(facts.listening) | held
    taken |= {p for c in facts.docker.containers if (p := port_of(c)) is not None}
    return (p for p in range(low, high + 1) if p not in taken)


def wanted_replicas(ctx: Context, placed: Placement, host: Host, facts: HostFacts) -> list[build.Replica]:
    """The replicas the placement puts on this host, in the file's order, slot by slot: the
    lowest slots found here stay (with their host ports), new ones take the lowest free slots
    and ports."""
    on_host = Counter(placed.services_on(host.name))
    current = service_containers(ctx, facts)
    dynamic = {s.name for s in ctx.cluster.spec.services if s.ports == "dynamic" and service_port(ctx, s)}
    by_name = {s.name: s for s in ctx.cluster.spec.services}
    slots: dict[str, list[tuple[bool, int]]] = {}
    for c in current.values():
        name, slot = c.labels["clusterctl.service"], slot_of(c)
        if name not in by_name:
            continue
        # Up-to-date replicas stay first (a rollout stopped between start-first's successor
        # and the old one's removal keeps the successor).
        fresh = replica(ctx, by_name[name], host, facts, slot, port_of(c) if name in dynamic else None)
        slots.setdefault(name, []).append((not (c.running and c.labels.get("clusterctl.config") == fresh.digest()), slot))
    out: list[build.Replica] = []
    chosen_ports: set[int] = set()
    ports: Iterator[int] | None = None
    for svc in ctx.cluster.spec.services:
        count = on_host.get(svc.name, 0)
        if not count:
            continue
        kept = [slot for _, slot in sorted(slots.get(svc.name, ()))[:count]]
        new = [n for n in range(1, count + len(kept) + 1) if n not in kept][: count - len(kept)]
        for slot in sorted(kept + new):
            host_port = None
            if svc.name in dynamic:
                c = current.get(build.replica_id(svc.name, slot))
                low, high = ctx.cluster.spec.placement.port_range
                host_port = port_of(c) if c is not None else None
                if host_port is None or not low <= host_port <= high or host_port in chosen_ports:
                    if ports is None:
                        ports = free_ports(ctx, facts, chosen_ports)
                    host_port = next(ports, None)
                    if host_port is None:
                        raise PlanError(f"services.{svc.name}: no free port left in placement.port_range {low}-{high}")
                chosen_ports.add(host_port)
            out.append(replica(ctx, svc, host, facts, slot, host_port))
    return out


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
    # image stream, or the definitions, which carry the services' tokens); a host giving up
    # replicas that others start goes in a wave after theirs.
    passes = 3
    # A host's loads, replicas, definitions and its agent's checks change only what its own
    # probe shows (the catalog, which others see, is waited for inside the scripts).
    own_facts_suffice = True

    def __init__(self) -> None:
        self._placement = ContextMemo(placement)
        self._starting = ContextMemo(lambda ctx: starting_elsewhere(ctx, self._placement(ctx)))

    def check(self, ctx: Context) -> None:
        if ctx.cluster.spec.services or any(service_containers(ctx, f) for f in ctx.facts.values()):
            self._placement(ctx)

    def notes(self, ctx: Context) -> list[str]:
        """Spread targets the placement could not meet, and the moves of a rebalance: the ones
        this run makes (`up --rebalance`), else the ones it would make."""
        if not ctx.cluster.spec.services:
            return []
        placed = self._placement(ctx)
        out = list(placed.notes)
        if ctx.inputs.rebalance:
            for name, (losing, gaining) in placement(ctx, rebalance=False).moves(placed).items():
                out.append(f"services.{name}: rebalancing, {_moves(losing, gaining)}")
        else:
            for name, (losing, gaining) in placed.moves(placement(ctx, rebalance=True)).items():
                out.append(f"services.{name}: a rebalance (up --rebalance) would move {_moves(losing, gaining)}")
        return out

    def _wanted(self, ctx: Context, host: Host, facts: HostFacts) -> list[build.Replica]:
        return wanted_replicas(ctx, self._placement(ctx), host, facts)

    def rolling(self, ctx: Context, host: Host, facts: HostFacts) -> bool:
        """A host replacing a running replica goes alone: the other replicas keep serving."""
        if not ctx.cluster.spec.services:
            return False
        current = service_containers(ctx, facts)
        return any(
            (c := current.get(r.id)) is not None and c.running and c.labels.get("clusterctl.config") != r.digest()
            for r in self._wanted(ctx, host, facts)
        )

    def rolling_batch(self, ctx: Context) -> int:
        """How many hosts replace replicas at once: the smallest update.parallel of the services."""
        return min((s.update.parallel for s in ctx.cluster.spec.services), default=1)

    def wave(self, ctx: Context, host: Host, facts: HostFacts) -> int:
        """1 when this host gives up a running replica of a service another host is about to
        start one of: it goes once those serve."""
        if not ctx.cluster.spec.services:
            return 0
        wanted = {r.id for r in self._wanted(ctx, host, facts)}
        starting = self._starting(ctx)
        for rid, c in service_containers(ctx, facts).items():
            if c.running and rid not in wanted and starting.get(c.labels["clusterctl.service"], set()) - {host.name}:
                return 1
        return 0

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
        # Secret env files (one per service, shared by its replicas), compared by content (never
        # by a label: a hash of a password is not shown to whoever can read labels); a new value
        # recreates the replicas.
        env_files = {r.service: env_file(ctx, r) for r in wanted if r.secret_env}
        env_writes = {n: b for n, b in env_files.items() if facts.managed_files.get(build.env_file_path(n)) != sha256(b)}
        stale_env = sorted(
            path for path in facts.managed_files
            if path.startswith(build.ENV_DIR + "/") and path.removeprefix(build.ENV_DIR + "/").removesuffix(".env") not in env_files
        )  # fmt: skip
        # What changes: a replica to (re)start, and the definitions to take away or write.
        start: list[build.Replica] = []
        for r in wanted:
            c = current.get(r.id)
            if c is None or c.labels.get("clusterctl.config") != r.digest() or not c.running or r.service in env_writes:
                start.append(r)
        # A running replica that changes is kept until its successor passes: start-first, the
        # successor starts on a slot and port of its own beside it; stop-first, it is stopped
        # and kept aside while its successor takes its slot and port.
        spec_of = {s.name: s for s in ctx.cluster.spec.services}
        replaced = [r for r in start if r.id in current and current[r.id].running]
        successors = start_first_successors(ctx, facts, wanted, [r for r in replaced if spec_of[r.service].update.order == "start-first"])
        stop_first = {r.id for r in replaced if r.id not in successors}
        wanted = [successors.get(r.id, r) for r in wanted]
        start = [successors.get(r.id, r) for r in start]
        starting = {r.id for r in start}
        registering = {r.id: r for r in wanted if consul and r.port}
        # A replica about to stop is deregistered first, so clients stop being sent to it, and
        # registered again once it runs: its check starts critical, so the wait below sees a
        # fresh check pass, never the old replica's last result. (Start-first: the old one is
        # deregistered once its successor passes.)
        drain = sorted(registered - (set(registering) - starting) - set(successors))
        stash = [rid for rid in drain if rid in stop_first]
        definitions = {rid: r.definition(service_token(ctx, r.service)) for rid, r in registering.items()}
        write = [
            r
            for rid, r in registering.items()
            if rid in drain or facts.managed_files.get(build.definition_path(rid)) != sha256(definitions[rid])
        ]
        written = {r.id for r in write}
        # What an earlier run stopped halfway left staged (register_checked): gone before anything
        # is staged again.
        staged_left = sorted(path for path in facts.managed_files if path.startswith((build.PASSING_DIR + "/", build.CATALOG_DIR + "/")))
        apps = tuple({r.service: app for r in wanted if (app := ctx.inputs.apps.get(r.service)) is not None}.values())
        loads = [load] if apps and (load := load_missing_images(apps, facts)) is not None else []
        cmds: list[Cmd] = []
        # The previous version a rollout kept (`clusterctl rollback`) stays while its service runs
        # here and until the next rollout of the service keeps its own; a definition kept
        # without its container is stale.
        kept = retired_replicas(ctx, facts)
        placed_here = {r.service for r in wanted}
        rolling_out = {r.service for r in replaced if r.id not in successors}
        starting_first = {r.service for r in replaced if r.id in successors}
        old_generation = sorted(rid for rid, svc in kept.items() if svc not in placed_here or svc in rolling_out)
        # Start-first: the version kept before goes only once the successors pass (a rollout
        # that fails leaves it for `clusterctl rollback`).
        replaced_generation = sorted(rid for rid, svc in kept.items() if svc in starting_first and rid not in old_generation)
        stale_defs = sorted(
            rid for path in facts.managed_files
            if path.startswith(build.ROLLBACK_DIR + "/") and (rid := path.removeprefix(build.ROLLBACK_DIR + "/").removesuffix(".json")) not in kept
        )  # fmt: skip
        if old_generation or stale_defs:
            cmds.append(build.drop_retired(sorted(set(old_generation) | set(stale_defs)), "a newer rollout or none to go back to"))
        if drain:
            if stash:
                cmds.append(build.stash_definitions(stash))
            if rest := [rid for rid in drain if rid not in stop_first]:
                cmds.append(build.remove_definitions(rest))
            cmds += [build.reload_agent(), build.wait_deregistered(drain, host.name)]
        grace = {s.name: duration_seconds(s.stop_grace) for s in ctx.cluster.spec.services}
        for rid in sorted(set(current) - {r.id for r in wanted} - set(successors)):
            # Gone from this host (frees its port first); a service gone from the file stops at once.
            c = current[rid]
            cmds.append(build.remove(rid, grace.get(c.labels["clusterctl.service"], 0) if c.running else 0))
        if stale_env:
            cmds.append(Cmd(("rm", "-f", *stale_env), "remove the secret env of services gone from this host"))
        if staged_left:
            cmds.append(Cmd(("rm", "-rf", build.PASSING_DIR, build.CATALOG_DIR), "remove the definitions an earlier run left staged"))
        if write or env_writes:
            # One stdin: definitions (with their tokens) and env files, before the replicas run
            # (docker reads the env file when it creates the container); loaded once they run.
            files = {_under_root(build.definition_path(r.id)): definitions[r.id].encode() for r in write}
            # Beside each, the same with its check passing from the start: put in place for the
            # reload only if the replica answers its check from this host once it runs.
            token = {r.id: service_token(ctx, r.service) for r in write}
            files.update({_under_root(build.passing_path(r.id)): r.definition(token[r.id], passing=True).encode() for r in write})
            # And its catalog entry with its token, for the catalog wait (build.CATALOG_DIR).
            files.update({_under_root(build.catalog_path(r.id)): r.catalog_entry(host.name).encode() for r in write})
            files.update({_under_root(build.catalog_token_path(r.id)): t.encode() for r in write if (t := token[r.id])})
            files.update({_under_root(build.env_file_path(n)): b for n, b in env_writes.items()})
            what = []
            if write:
                what.append(f"register {', '.join(r.id for r in write)} with consul (0600: with their tokens)")
            if env_writes:
                what.append(f"write the secret env of {', '.join(sorted(env_writes))} (0600)")
            cmds.append(write_secret_tree(build.ROOT, files, "; ".join(what)))
        # After the definitions: they read a bounded part of the script's stdin, the images the rest.
        cmds += loads
        for r in start:
            c = current.get(r.id)
            if c is not None and c.labels.get("clusterctl.config") == r.digest() and r.service not in env_writes:
                cmds.append(build.start(r.id))
            else:
                if r.id in stop_first:
                    cmds.append(build.retire(r.id, grace[r.service]))
                elif c is not None:
                    cmds.append(build.remove(r.id, grace[r.service] if c.running else 0))
                cmds.append(r.run())
        checks = facts.docker.consul_checks
        if write:
            cmds.append(build.register_checked(write))
        elif checks is not None and (unloaded := [n for n in registering if n not in checks]):
            # A definition on disk the agent does not hold (a run stopped before its reload, or
            # deregistered behind clusterctl's back): planned from the agent, not the file, or
            # the wait below would wait for a check that does not exist.
            reload = build.reload_agent()
            cmds.append(Cmd(reload.argv, f"load {', '.join(unloaded)} into consul: defined on disk, unknown to the agent"))
        previous = {new.id: old for old, new in successors.items()}
        for r in wanted:
            if r.id in stop_first or r.id in previous:
                # A replacement: it passes, or the host goes back to what ran (and fails, naming it).
                cmds.append(build.passes_or_rolls_back(r.id, r.deadline, r.id in registering, previous.get(r.id, r.id), r.id in stop_first))
            elif r.id in written:
                cmds.append(build.wait_healthy(r.id, r.deadline))
            elif r.id in starting:
                cmds.append(build.wait_running(r.id, r.deadline))
            elif r.id in registering and (checks is None or checks.get(r.id) != "passing"):
                # Up to date but not passing (e.g. it came back with its host and its check has
                # not run yet, or the app is failing): `up` is done only once it passes.
                cmds.append(build.wait_healthy(r.id, r.deadline))
        if written:
            # Passing on the agent, now in the catalog DNS reads (before an old replica goes).
            cmds.append(build.wait_registered(sorted(written), host.name, staged=True))
        if successors:
            # The successors serve: the old replicas are drained and kept (stopped) as the
            # previous version, in place of the one kept before.
            if replaced_generation:
                cmds.append(build.drop_retired(replaced_generation, "a newer rollout passed"))
            old = sorted(successors)
            if registered_old := [rid for rid in old if rid in registered]:
                cmds += [build.stash_definitions(registered_old), build.reload_agent(), build.wait_deregistered(registered_old, host.name)]
            cmds += [build.retire(rid, grace[current[rid].labels["clusterctl.service"]]) for rid in old]
        return [as_root(c, facts.sudo) for c in cmds]


def retired_replicas(ctx: Context, facts: HostFacts) -> dict[str, str]:
    """Replica ID -> service of the replicas a rollout kept on this host (stopped, renamed)."""
    return {
        c.name.removeprefix(build.CONTAINER_PREFIX).removesuffix(build.RETIRED_SUFFIX): c.labels.get("clusterctl.service", "")
        for c in cluster_containers(ctx, facts, build.ROLE)
        if c.name.endswith(build.RETIRED_SUFFIX)
    }


def start_first_successors(
    ctx: Context, facts: HostFacts, wanted: list[build.Replica], replaced: list[build.Replica]
) -> dict[str, build.Replica]:
    """Old replica ID -> its start-first successor: the same replica on the service's lowest
    free slot and (dynamic) the lowest free port, so both run at once."""
    if not replaced:
        return {}
    slots: dict[str, set[int]] = {}
    for c in cluster_containers(ctx, facts, build.ROLE):
        slots.setdefault(c.labels.get("clusterctl.service", ""), set()).add(slot_of(c))
    for r in wanted:
        slots.setdefault(r.service, set()).add(r.slot)
    ports = free_ports(ctx, facts, {p for r in wanted if (p := r.published) is not None})
    out = {}
    for r in replaced:
        taken = slots[r.service]
        slot = next(n for n in range(1, len(taken) + 2) if n not in taken)
        taken.add(slot)
        port = r.host_port
        if r.host_port is not None:
            port = next(ports, None)
            if port is None:
                low, high = ctx.cluster.spec.placement.port_range
                raise PlanError(f"services.{r.service}: no free port left in placement.port_range {low}-{high} for a start-first successor")
        out[r.id] = replace(r, slot=slot, host_port=port)
    return out


def _moves(losing: tuple[str, ...], gaining: tuple[str, ...]) -> str:
    """'1 replica from n2 to n3': hosts once per replica."""
    def hosts(names: tuple[str, ...]) -> str:
        return ", ".join(f"{n} (x{k})" if k > 1 else n for n, k in Counter(names).items()) or "nowhere"

    count = max(len(losing), len(gaining))
    return f"{count} replica{'s' if count != 1 else ''} from {hosts(losing)} to {hosts(gaining)}"


def starting_elsewhere(ctx: Context, placed: Placement) -> dict[str, set[str]]:
    """Service name -> the hosts where the placement has more of its replicas than run there
    now (new replicas start)."""
    running = {name: Counter(c.labels["clusterctl.service"] for c in service_containers(ctx, f).values() if c.running)
               for name, f in ctx.facts.items()}  # fmt: skip
    out: dict[str, set[str]] = {}
    for name in ctx.facts:
        for svc, count in Counter(placed.services_on(name)).items():
            if count > running[name].get(svc, 0):
                out.setdefault(svc, set()).add(name)
    return out
