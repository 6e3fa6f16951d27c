"""The command line. Typer only: parse options, load the cluster, call the manager, print.

Heavy modules are imported inside each command, so `clusterctl up` on a converged cluster
pays only for what it uses (start-up time counts in a no-op run).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from clusterctl.errors import EXIT_BAD_INPUT, EXIT_HOSTS_FAILED, EXIT_INTERRUPTED, UserError


def _untyped_flags(params: list) -> list:
    """typer's rich help shows each option's type, a flag's too (`--dry-run <bool>`): a flag
    takes no value, so it is shown with none (an empty metavar)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class CommandGroup(TyperGroup):
    """A typer command group whose help, and its commands' help, show flags without a type."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _untyped_flags(super().get_params(ctx))

    def get_command(self, ctx, cmd_name):  # noqa: ANN001, ANN201 - click's signature
        # Each command is looked up here before it parses its options or prints its help.
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _untyped_flags(command.get_params(ctx))
        return command


app = typer.Typer(
    cls=CommandGroup,
    help="Turn SSH-reachable Linux hosts into one container cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
lab_app = typer.Typer(cls=CommandGroup, help="A local lab: N SSH-reachable hosts with their own Docker engines, on this machine.")
app.add_typer(lab_app, name="lab")

DEFAULT_FILE = Path("clusterctl.yaml")
DEFAULT_LAB = "default"
FILE_ENV = "CLUSTERCTL_FILE"


def _version() -> str:
    """The installed distribution's version, else the package's own (a source tree, not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clusterctl")
    except PackageNotFoundError:
        import clusterctl

        return getattr(clusterctl, "__version__", "unknown")


def _print_version(value: bool) -> None:
    if value:
        print(f"clusterctl {_version()}")
        raise typer.Exit()


@app.callback()
def _root_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, expose_value=False, help="Print the version and exit.")
    ] = False,
) -> None:
    # Options of clusterctl itself, before the command; no docstring: the help is the app's.
    pass


class Output(str, Enum):
    table = "table"
    json = "json"


def _file_from_env(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """-f's value; one taken from CLUSTERCTL_FILE that names no file says so: the user did not
    type that path, the environment did."""
    source = ctx.get_parameter_source("file")  # click's ParameterSource: by name, typer may vendor click
    if value is not None and source is not None and source.name == "ENVIRONMENT" and not value.exists():
        raise UserError(f"{value}: no such file (from {FILE_ENV})")
    return value


FileOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--file",
        "-f",
        envvar=FILE_ENV,
        show_envvar=False,  # the help says it, in its place in the order
        callback=_file_from_env,
        help=f"Cluster file. Without -f: ${FILE_ENV}, else ./clusterctl.yaml, else the local lab 'default'.",
    ),
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json.")]
AcceptOpt = Annotated[
    bool, typer.Option("--accept-new-host-keys", help="Trust host keys seen for the first time (changed keys are always refused).")
]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, max=256, help="Hosts worked on at once.")]
HostsOpt = Annotated[Optional[list[str]], typer.Option("--host", help="Limit to these hosts (repeatable).")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Print each remote command as it starts and its time when it ends (a line log, no board).")
]
LockWaitOpt = Annotated[
    float, typer.Option("--lock-wait", min=0, help="Seconds to wait for another up or down on this cluster.")
]


def _err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _resolve_file(file: Optional[Path], create_lab: bool) -> Path:
    """The cluster file: -f, else $CLUSTERCTL_FILE (both arrive as `file`), else ./clusterctl.yaml,
    else the local lab 'default' (created for `up`)."""
    if file is not None:
        return file
    if DEFAULT_FILE.exists():
        return DEFAULT_FILE
    from clusterctl.lab import lab

    default = lab.lab_dir(DEFAULT_LAB) / "cluster.yaml"
    if not create_lab:
        if default.exists():
            return default
        raise UserError(
            f"no cluster file: pass -f FILE, set {FILE_ENV}, create {DEFAULT_FILE}, or run `clusterctl up` to start the local lab"
        )
    # `up` with no file: the local lab 'default', created (or restarted) as needed; idempotent.
    _err_console().print(f"no {DEFAULT_FILE}: using the local lab '{DEFAULT_LAB}'")
    return lab.up(DEFAULT_LAB, 3, log=lambda m: _err_console().print(m), example=True)


def _load(file: Optional[Path], create_lab: bool = False):
    """The cluster file, validated, and refused when its name is only its file's stem and the
    state dir of that name belongs to another file (two cluster.yaml would share secrets)."""
    from clusterctl.config.loader import load
    from clusterctl.state import cluster_path, other_source

    cluster = load(_resolve_file(file, create_lab))
    other = other_source(cluster_path(cluster.name), cluster.path) if cluster.spec.name is None else None
    if other is not None:
        raise UserError(
            f"{cluster.path}: the state dir of cluster {cluster.name} belongs to {other}; give this file its own `name:`"
        )
    return cluster


def _known_hosts(cluster, accept_new: bool):
    from clusterctl.state import cluster_dir
    from clusterctl.transport.ssh import KnownHosts

    path = cluster.resolve_path(cluster.spec.ssh.known_hosts) if cluster.spec.ssh.known_hosts else cluster_dir(cluster.name, cluster.path) / "known_hosts"
    return KnownHosts(path, accept_new)


def _inputs(cluster, dry_run: bool):
    """Operator-side inputs of a run, built before any host is touched (bad binaries fail here)."""
    from clusterctl.phases.base import Inputs

    # The gossip key is settled after the probe (phases/gossip.py): never made over a running cluster.
    import os

    from clusterctl.phases.services import secret_env_inputs

    spec = cluster.spec
    # Read now, before any host is touched: a name that is not set is one line, nothing sent.
    service_env = secret_env_inputs(cluster, os.environ)
    if not spec.filebox.binaries:
        return Inputs(service_env=service_env)
    from clusterctl.filebox.build import build_filebox
    from clusterctl.images.base import base_image
    from clusterctl.images.cache import BuildCache, cache_dir
    from clusterctl.phases.filebox import filebox_container_name

    from clusterctl.errors import UserError

    # Built in memory to compare digests with what the hosts hold; what ldd said and the layers'
    # digests come from the operator's build cache while their files are unchanged (a dry run
    # reads it and writes nothing).
    cache = BuildCache(cache_dir(), write=not dry_run)
    try:
        box = build_filebox(spec.filebox.binaries, spec.filebox.files, base_dir=cluster.path.parent, cache=cache)
    except UserError as exc:
        raise UserError(f"{cluster.where('filebox', 'binaries')}: {str(exc).removeprefix('filebox: ')}") from None
    base = base_image(box.manifest, box.version, cache=cache)
    apps = _service_apps(cluster, base, cache)
    return Inputs(
        apps=apps,
        base_image=base.image,
        filebox_container=filebox_container_name(box.version),
        images=(box.image, base.image),
        filebox_image=box.image,
        filebox_version=box.version,
        service_env=service_env,
    )


def _prepare(cluster, dry_run: bool):
    """The operator-side step right after the probe: the run's secrets, settled from what the
    hosts run (a new gossip key or CA only where no host runs Consul of the cluster), or a refusal
    (SecretError, exit 2) before anything is sent. A dry run makes nothing on disk."""
    from clusterctl.phases.gossip import gossip_inputs
    from clusterctl.state import cluster_path

    directory = cluster_path(cluster.name)

    from clusterctl.phases.consul_acl import acl_inputs, settle

    def prepare(ctx, consul_api):

        from clusterctl.phases.consul_tls import tls_inputs

        # The gossip key, then Consul's TLS CA and each host's certificate (phases/consul_tls.py),
        # then the ACL tokens, checked with Consul when the cluster runs ACLs already, so that a
        # refusal comes before anything is sent (phases/consul_acl.py).
        ctx = replace(ctx, inputs=gossip_inputs(ctx, directory, dry_run))
        ctx = replace(ctx, inputs=tls_inputs(ctx, directory, dry_run))
        ctx = replace(ctx, inputs=acl_inputs(ctx, directory, dry_run))
        return settle(ctx, consul_api, directory, dry_run)

    def settle_consul(ctx, consul_api):
        return settle(ctx, consul_api, directory, dry_run)

    return prepare, {"consul": settle_consul}


def _cluster_lock_in_consul(cluster, holder: str, wait: float):
    """The lock held by the cluster itself once it runs Consul with ACLs (a session lock in KV,
    lock.py), beside the operator's flock, which alone covers the time before Consul exists."""

    def hold(ctx, consul_api):
        from contextlib import nullcontext

        from clusterctl.lock import consul_lock
        from clusterctl.phases.consul_acl import acl_agents, management_token
        from clusterctl.state import cluster_path

        acl = ctx.inputs.acl
        token = acl.management if acl is not None else None
        token = token or management_token(cluster_path(cluster.name))
        hosts = acl_agents(ctx)
        if not token or not hosts or not cluster.spec.consul.enabled:
            return nullcontext()
        return consul_lock(cluster.name, hosts, consul_api, token, holder, wait)

    return hold


def _service_apps(cluster, base, cache=None) -> dict:
    """The app image of each service that names an app folder, built on the cluster's base."""
    from clusterctl.errors import UserError
    from clusterctl.images.app import app_on_base

    apps = {}
    for i, svc in enumerate(cluster.spec.services):
        if svc.app is None:
            continue
        try:
            apps[svc.name] = app_on_base(cluster.resolve_path(svc.app), base, cache=cache)
        except UserError as exc:  # each of the app file's problems on its own line
            where = cluster.where("services", i, "app")
            raise UserError("\n".join(f"{where}: {line}" for line in str(exc).splitlines())) from None
    return apps


def _check_service(cluster, name: str) -> None:
    """A service the file names, else one line listing those it does (exit 2)."""
    known = [s.name for s in cluster.spec.services]
    if name not in known:
        raise UserError(f"{cluster.path}: no service named {name!r} (services: {', '.join(known) or 'none'})")


def _select(cluster, hosts: Optional[list[str]]) -> Optional[frozenset[str]]:
    if not hosts:
        return None
    names = {h.name for h in cluster.hosts}
    unknown = [h for h in hosts if h not in names]
    if unknown:
        raise UserError(f"{cluster.path}: no host named {', '.join(unknown)} (hosts: {', '.join(sorted(names))})")
    return frozenset(hosts)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops a run as Ctrl-C does (the manager ends remote work, then cleans up)."""
    import signal

    def interrupt(signum, frame):  # noqa: ANN001 - a signal handler's signature
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _direct(endpoints) -> frozenset[str]:  # noqa: ANN001 - {name: Endpoint}
    """The hosts reached with no bastion or ProxyCommand between the operator and them."""
    return frozenset(n for n, ep in endpoints.items() if ep.bastion is None and not ep.proxy_command)


@contextmanager
def _progress(console, hosts: list[str], verbose: bool):
    """What shows the run as it goes, on stderr: a live board with a row per host on a terminal;
    otherwise (piped, CI) or with -v, a line per step (and per remote command with -v)."""
    from clusterctl.report.live import LineLog, LiveBoard

    if verbose or not console.is_terminal or console.is_dumb_terminal:
        yield LineLog(console, verbose)
        return
    with LiveBoard(console, hosts) as board:
        yield board


def _converge(
    file,
    output,
    accept_new,
    workers,
    hosts,
    dry_run: bool,
    lock_wait: float = 10.0,
    down: bool = False,
    rebalance: bool = False,
    rollback: str | None = None,
    verbose: bool = False,
) -> None:
    from clusterctl.lock import cluster_lock
    from clusterctl.phases.manager import Options, execute
    from clusterctl.report.render import print_table, report_json
    from clusterctl.state import cluster_dir
    from clusterctl.transport.ssh import resolve_endpoints

    cluster = _load(file, create_lab=not dry_run and not down)
    only = _select(cluster, hosts)
    endpoints = resolve_endpoints(cluster)
    known = _known_hosts(cluster, accept_new)
    prepare, settle = None, None
    if rollback is not None:
        from clusterctl.phases.base import Inputs
        from clusterctl.phases.rollback import RollbackPhase

        _check_service(cluster, rollback)
        phases = (RollbackPhase(rollback),)
        inputs = Inputs()  # it runs what the hosts kept: nothing built, no secret read
    elif down:
        from clusterctl.phases.base import Inputs
        from clusterctl.phases.down import DOWN_PHASES as phases

        inputs = Inputs()  # down builds nothing: it removes what the probe finds
    else:
        from clusterctl.phases import PHASES as phases
        from clusterctl.phases.network import network_inputs

        inputs = replace(network_inputs(cluster, _inputs(cluster, dry_run), dry_run), rebalance=rebalance, direct_ssh=_direct(endpoints))
        prepare, settle = _prepare(cluster, dry_run)
    console = _err_console()
    options = Options(accept_new_host_keys=accept_new, workers=workers, dry_run=dry_run, only=only)

    verb = "rollback" if rollback is not None else ("down" if down else "up")
    verb = {"up": "plan"}.get(verb, f"{verb} --dry-run") if dry_run else verb
    console.print(f"[bold]{verb}[/bold] cluster [bold]{cluster.name}[/bold] ({len(endpoints)} hosts, {cluster.path})")
    with _sigterm_as_interrupt(), _progress(console, [n for n in endpoints if only is None or n in only], verbose) as observer:
        if dry_run:
            report = execute(cluster, phases, endpoints, known, options, observer, inputs, prepare, settle)
        else:
            holder = f"clusterctl {verb} -f {cluster.path}"
            lock = _cluster_lock_in_consul(cluster, holder, lock_wait)
            with cluster_lock(cluster_dir(cluster.name, cluster.path), cluster.name, holder, wait=lock_wait):
                report = execute(cluster, phases, endpoints, known, options, observer, inputs, prepare, settle, lock)
    if output == Output.json:
        print(report_json(report))
    else:
        from rich.console import Console

        print_table(report, Console(highlight=False), verb)
    for line in report.errors:  # a bastion that failed: one line, not one per host behind it
        from rich.markup import escape

        console.print(f"[bold red]error:[/bold red] {escape(line)}", soft_wrap=True)
    if report.interrupted:
        ended = f"; remote commands ended on {', '.join(report.ended_on)}" if report.ended_on else ""
        console.print(
            f"[bold red]interrupted[/bold red] during {report.interrupted}{ended}; the steps above are what was done. "
            "The next `up` plans from what the hosts now run.",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.refused:  # a cluster-wide refusal: one line, whatever the number of hosts
        from rich.markup import escape

        for phase, why in report.refused.items():
            console.print(f"[bold red]{phase}: refused:[/bold red] {escape(why)}", soft_wrap=True)
        raise typer.Exit(EXIT_HOSTS_FAILED)
    if not report.ok:
        failed = report.failed_hosts
        names = ", ".join(f"{h.name} ({h.failed.phase}: {h.failed.message})" for h in failed)
        console.print(f"[bold red]failed on {len(failed)} of {len(report.hosts)} hosts:[/bold red] {names}", soft_wrap=True)
        raise typer.Exit(EXIT_HOSTS_FAILED)
    if verb == "up" and only is None:
        _greet_from_the_example(cluster, accept_new, console)


def _greet_from_the_example(cluster, accept_new: bool, console) -> None:  # noqa: ANN001
    """The local lab 'default' ends its `up` with what its hello service answered by name."""
    from clusterctl.lab import example, lab

    if not example.is_example(cluster, lab.lab_dir(DEFAULT_LAB) / "cluster.yaml"):
        return
    asker = cluster.hosts[-1].name
    out = _run_on_hosts(cluster, [asker], example.ask_line(), accept_new, 1, 60.0)[asker]
    from rich.markup import escape

    if out.ok and out.value.ok:
        answer = " ".join(out.value.stdout.split())
        console.print(f"[bold]{example.URL}[/bold] answered a plain container on {asker}: {escape(answer)}", soft_wrap=True)
    else:
        why = out.error if not out.ok else out.value.tail()
        console.print(f"[bold red]{example.URL}[/bold red] did not answer a plain container on {asker}: {escape(why)}", soft_wrap=True)
        raise typer.Exit(EXIT_HOSTS_FAILED)


RebalanceOpt = Annotated[
    bool,
    typer.Option("--rebalance", help="Move running replicas to meet their spread (hosts added, spread drifted); new ones serve before old ones go."),
]


@app.command()
def up(
    file: FileOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would change (same as `plan`).")] = False,
    output: OutputOpt = Output.table,
    accept_new_host_keys: AcceptOpt = False,
    workers: WorkersOpt = 32,
    host: HostsOpt = None,
    verbose: VerboseOpt = False,
    lock_wait: LockWaitOpt = 10.0,
    rebalance: RebalanceOpt = False,
) -> None:
    """Bring every host to the desired state: Docker, engine DNS, network, filebox, Consul, services; then prune."""
    _converge(file, output, accept_new_host_keys, workers, host, dry_run, lock_wait, rebalance=rebalance, verbose=verbose)


@app.command()
def plan(
    file: FileOpt = None,
    output: OutputOpt = Output.table,
    accept_new_host_keys: AcceptOpt = False,
    workers: WorkersOpt = 32,
    host: HostsOpt = None,
    verbose: VerboseOpt = False,
    rebalance: RebalanceOpt = False,
) -> None:
    """Print the exact per-host commands `up` would run; sends only the read-only probe. Notes
    name the moves a rebalance would make."""
    _converge(file, output, accept_new_host_keys, workers, host, dry_run=True, rebalance=rebalance, verbose=verbose)


@app.command()
def rollback(
    service: Annotated[str, typer.Argument(help="A service of the cluster file.")],
    file: FileOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would change; change nothing.")] = False,
    output: OutputOpt = Output.table,
    accept_new_host_keys: AcceptOpt = False,
    workers: WorkersOpt = 32,
    host: HostsOpt = None,
    verbose: VerboseOpt = False,
    lock_wait: LockWaitOpt = 10.0,
) -> None:
    """Return a service to the version its last rollout replaced (kept on each host), one host at
    a time; what ran is kept in turn. The next `up` rolls it to the file again."""
    _converge(file, output, accept_new_host_keys, workers, host, dry_run, lock_wait, rollback=service, verbose=verbose)


@app.command()
def down(
    file: FileOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking (needed when not on a terminal).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be removed; change nothing.")] = False,
    output: OutputOpt = Output.table,
    accept_new_host_keys: AcceptOpt = False,
    workers: WorkersOpt = 32,
    host: HostsOpt = None,
    verbose: VerboseOpt = False,
    lock_wait: LockWaitOpt = 10.0,
) -> None:
    """Remove what `up` made on the hosts (services, Consul, filebox, network, engine DNS); Docker stays."""
    if not dry_run and not yes:
        if not sys.stdin.isatty():
            raise UserError("down removes the cluster from its hosts: pass --yes (or --dry-run to see what it would remove)")
        if not typer.confirm("Remove the cluster's services, Consul, filebox and network from its hosts?"):
            raise typer.Exit(EXIT_BAD_INPUT)
    _converge(file, output, accept_new_host_keys, workers, host, dry_run, lock_wait, down=True, verbose=verbose)


def _run_on_hosts(cluster, names: list[str], line: str, accept_new: bool, workers: int, timeout: float) -> dict:
    """One shell line on each named host over SSH, in parallel: host -> Outcome of its result."""
    from clusterctl.transport.executor import run_parallel
    from clusterctl.transport.ssh import Connector, SSHError, explain, resolve_endpoints

    endpoints = resolve_endpoints(cluster)
    known = _known_hosts(cluster, accept_new)
    connector = Connector(known)  # one connection per bastion, shared by the hosts behind it

    def work(name: str):
        ep = endpoints[name]
        try:
            session = connector.open(ep)
        except Exception as exc:  # noqa: BLE001 - reworded, kept as this host's result
            raise SSHError(explain(exc, ep, known.path)) from None
        try:
            return session.run(line, timeout=timeout)
        finally:
            session.close()

    try:
        results = run_parallel(names, work, workers=workers, timeout=timeout + 30, explain=lambda e: str(e))
    finally:
        connector.close()
    for failure in connector.failures:
        print(f"error: {failure}", file=sys.stderr)
    return results


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="A service of the cluster file.")],
    file: FileOpt = None,
    host: HostsOpt = None,
    tail: Annotated[int, typer.Option("--tail", min=0, help="Lines from the end of each replica's log.")] = 100,
    since: Annotated[Optional[str], typer.Option("--since", help="Only lines since, e.g. 10m or 2026-11-27T10:00:00.")] = None,
    accept_new_host_keys: AcceptOpt = False,
    workers: WorkersOpt = 32,
) -> None:
    """Each replica's recent log lines, prefixed with its host (one round trip per host)."""
    import re
    import shlex

    from clusterctl.commands.service import CONTAINER_PREFIX, RETIRED_SUFFIX, container_name

    cluster = _load(file)
    _check_service(cluster, service)
    if since is not None and not re.fullmatch(r"[0-9A-Za-z:.+-]{1,40}", since):
        raise UserError(f"--since: not a duration or a timestamp: {since!r}")
    only = _select(cluster, host)
    names = [h.name for h in cluster.hosts if only is None or h.name in only]
    docker_logs = ["docker", "logs", "--tail", str(tail), *(["--since", since] if since else [])]
    filters = ["--filter", f"label=clusterctl.cluster={cluster.name}", "--filter", f"label=clusterctl.service={service}"]
    # Every replica of the service on the host (slots 1, 2, ...); docker needs root (sudo -n
    # for other users). Hosts without a replica print nothing.
    line = (
        'S=; [ "$(id -u)" = 0 ] || S="sudo -n"; '
        f"for c in $($S docker ps -a {shlex.join(filters)} --format '{{{{.Names}}}}' | sort); do "
        f'case "$c" in *{RETIRED_SUFFIX}) continue ;; esac; '  # a previous version a rollout kept
        f'echo "clusterctl-replica-found $c"; $S {shlex.join(docker_logs)} "$c" 2>&1; done'
    )
    results = _run_on_hosts(cluster, names, line, accept_new_host_keys, workers, 60.0)
    first = container_name(service)
    out: list[tuple[str, str]] = []
    found = 0
    for n, o in results.items():
        if not o.ok:
            print(f"{n} ! {o.error}", file=sys.stderr)
            continue
        who = n
        for row in o.value.stdout.splitlines():
            if row.startswith("clusterctl-replica-found "):
                found += 1
                name = row.split(" ", 1)[1]
                who = n if name == first else f"{n}/{name.removeprefix(CONTAINER_PREFIX)}"
                continue
            out.append((who, row))
    width = max((len(w) for w, _ in out), default=0)
    for who, row in out:
        print(f"{who:<{width}} | {row}")
    if not found:
        print(f"no replica of {service} on {', '.join(names)}", file=sys.stderr)
    if any(not o.ok for o in results.values()) or not found:
        raise typer.Exit(EXIT_HOSTS_FAILED)


@app.command(name="exec", context_settings={"allow_interspersed_args": False})
def exec_(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
    file: FileOpt = None,
    host: HostsOpt = None,
    all_hosts: Annotated[bool, typer.Option("--all", help="Run on every host.")] = False,
    output: OutputOpt = Output.table,
    accept_new_host_keys: AcceptOpt = False,
    workers: WorkersOpt = 32,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per host.")] = 600.0,
) -> None:
    """Run one command on hosts over SSH. With one host: its own output and exit code."""
    import json
    import shlex


    if bool(host) == all_hosts:
        raise UserError("exec: give --host NAME (repeatable) or --all")
    cluster = _load(file)
    only = _select(cluster, host)
    names = [h.name for h in cluster.hosts if only is None or h.name in only]
    results = _run_on_hosts(cluster, names, shlex.join(command), accept_new_host_keys, workers, timeout)
    if output == Output.json:
        print(json.dumps([
            {"host": n, "ok": o.ok and o.value.exit_code == 0, "exit_code": o.value.exit_code if o.ok else None,
             "stdout": o.value.stdout if o.ok else "", "stderr": o.value.stderr if o.ok else "", "error": o.error}
            for n, o in results.items()
        ], indent=2))  # fmt: skip
    elif len(names) == 1:
        out = results[names[0]]
        if not out.ok:
            _err_console().print(f"[red]error:[/red] {names[0]}: {out.error}", soft_wrap=True)
            raise typer.Exit(255)
        sys.stdout.write(out.value.stdout)
        sys.stderr.write(out.value.stderr)
        raise typer.Exit(out.value.exit_code)
    else:
        width = max(len(n) for n in names)
        for n, o in results.items():
            if not o.ok:
                print(f"{n:<{width}} ! {o.error}", file=sys.stderr)
                continue
            for text, stream in ((o.value.stdout, sys.stdout), (o.value.stderr, sys.stderr)):
                for row in text.splitlines():
                    print(f"{n:<{width}} | {row}", file=stream)
            if o.value.exit_code:
                print(f"{n:<{width}} ! exit code {o.value.exit_code}", file=sys.stderr)
    if any(not o.ok or o.value.exit_code for o in results.values()):
        raise typer.Exit(EXIT_HOSTS_FAILED)


@app.command()
def status(
    file: FileOpt = None,
    output: OutputOpt = Output.table,
    accept_new_host_keys: AcceptOpt = False,
    workers: WorkersOpt = 32,
) -> None:
    """Per host: reachable, Docker, Consul role, alive, raft voter, leader, filebox version, service replicas' health."""
    import json

    from clusterctl.status import cluster_status
    from clusterctl.transport.ssh import resolve_endpoints

    cluster = _load(file)
    from clusterctl.phases.consul_acl import management_token
    from clusterctl.state import cluster_path

    known = _known_hosts(cluster, accept_new_host_keys)
    report = cluster_status(cluster, resolve_endpoints(cluster), known, workers, management_token(cluster_path(cluster.name)))
    if output == Output.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        from rich import box

        table = Table(title=f"cluster {cluster.name}: leader {report.leader or 'none'}", title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)  # fmt: skip
        for col in ("host", "address", "reachable", "docker", "consul", "alive", "voter", "leader", "filebox"):
            table.add_column(col, no_wrap=col != "reachable")  # an unreachable host's reason may fold
        table.add_column("services", overflow="fold", min_width=12)
        for h in report.hosts:
            reach = "[green]yes[/green]" if h.reachable else f"[red]no[/red] {h.error}"
            voter = "-" if h.voter is None else ("yes" if h.voter else "[yellow]no[/yellow]")
            colour = {"passing": "green", "warning": "yellow"}
            services = " ".join(
                f"{name}:[{colour.get(state, 'red')}]{state}[/]" for name, state in sorted(h.services.items())
            ) or "-"
            table.add_row(h.host, h.address, reach, h.docker, h.consul, h.alive, voter, "*" if h.leader else "", h.filebox[:8], services)
        from clusterctl.report.render import print_whole

        print_whole(table, Console(highlight=False))
        if report.consul_error:
            _err_console().print(f"[yellow]consul:[/yellow] {report.consul_error}")
    if not report.ok:
        raise typer.Exit(EXIT_HOSTS_FAILED)


@app.command()
def ui(
    file: FileOpt = None,
    host: Annotated[Optional[str], typer.Option("--host", help="This server host (default: the first server in the file that answers).")] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Local port on 127.0.0.1 (default 0: a free one).")] = 0,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the URL only; open no browser.")] = False,
    show_token: Annotated[bool, typer.Option("--show-token", help="Also print the ACL management token to log in with (stderr).")] = False,
    accept_new_host_keys: AcceptOpt = False,
    workers: WorkersOpt = 32,
) -> None:
    """Open Consul's web UI through an SSH tunnel to a server: prints the local URL, then keeps
    the tunnel open until Ctrl-C."""
    from clusterctl.phases.manager import Interrupted
    from clusterctl.transport.ssh import resolve_endpoints
    from clusterctl.ui import port_free, serve

    cluster = _load(file)
    if host is not None:
        _select(cluster, [host])
    if not cluster.spec.consul.enabled:
        raise UserError(f"{cluster.where('consul', 'enabled')}: Consul is off in this cluster: it has no UI")
    if port and not port_free(port):
        raise UserError(f"--port {port}: 127.0.0.1:{port} is in use (leave --port out for a free one)")
    console = _err_console()

    def say(line: str) -> None:
        console.print(line, soft_wrap=True, markup=False)

    endpoints = resolve_endpoints(cluster)
    known = _known_hosts(cluster, accept_new_host_keys)
    with _sigterm_as_interrupt():
        try:
            serve(cluster, endpoints, known, workers, host, port, show_token, no_browser, say)
        except Interrupted:  # Ctrl-C before the tunnel was open
            print("interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
def validate(file: FileOpt = None, output: OutputOpt = Output.table) -> None:
    """Check the cluster file, its filebox binaries and its apps, and print the normalized file
    (YAML, or JSON with -o json); contacts no host and creates no state dir."""
    import json

    import yaml

    cluster = _load(file)
    inputs = _inputs(cluster, dry_run=True)  # builds the filebox and the apps in memory
    model = cluster.normalized()
    if output == Output.json:
        print(json.dumps(model, indent=2))
    else:
        sys.stdout.write(yaml.safe_dump(model, sort_keys=False, allow_unicode=True))
    services = len(cluster.spec.services)
    filebox = f", filebox {inputs.filebox_version[:12]}" if inputs.filebox_version else ""
    _err_console().print(
        f"{cluster.path}: valid: cluster {cluster.name}, {len(cluster.hosts)} host{'s' * (len(cluster.hosts) != 1)}, "
        f"{services} service{'s' * (services != 1)}{filebox}",
        soft_wrap=True,
        markup=False,
    )


@app.command()
def place(
    file: FileOpt = None,
    all_up: Annotated[
        bool, typer.Option("--all-up", help="Count every host as up: always so, since place asks no host; the flag says it.")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Print where each service's replicas go, from the file alone: every host up, nothing
    running yet, each host sized by its `capacity` (else 2 cpu, 4G) less placement.reserve;
    contacts no host and creates no state dir (for previews, reviews and the bench)."""
    import json

    from clusterctl.config.loader import load
    from clusterctl.images.app import read_app_spec
    from collections import Counter

    from clusterctl.schedule.placement import PlacementError, describe, place_file, request_of

    # No SSH here: the identity files the file names need not be on this machine (a review).
    cluster = load(_resolve_file(file, create_lab=False), identity_files=False)
    spec = cluster.spec
    # An app's port is in its clusterctl-app.yaml: read, not built (placement needs only the port).
    ports = {s.name: s.port or (read_app_spec(cluster.resolve_path(s.app)).port if s.app else None) for s in spec.services}
    try:
        placed = place_file(spec, {h.name for h in spec.hosts}, ports=ports)
    except PlacementError as exc:
        raise UserError(f"{cluster.path}: {exc}") from None
    if output == Output.json:
        doc = {
            "cluster": cluster.name,
            "services": [{"name": s.name, "hosts": list(placed.hosts_of[s.name])} for s in spec.services],
            "notes": list(placed.notes),
        }
        print(json.dumps(doc, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"placement of {cluster.name} (all hosts up)")
        for col in ("service", "replicas", "each"):
            table.add_column(col, no_wrap=True)
        table.add_column("hosts", overflow="fold", min_width=12)
        for s in spec.services:
            hosts = placed.hosts_of[s.name]
            on = ", ".join(f"{h} x{n}" if n > 1 else h for h, n in Counter(hosts).items())
            table.add_row(s.name, str(len(hosts)), describe(request_of(s)), on or "-")
        from clusterctl.report.render import print_whole

        print_whole(table, Console(highlight=False))
    for note in placed.notes:
        _err_console().print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)


@app.command()
def schema() -> None:
    """Print the cluster file's JSON Schema (for editor completion and checks)."""
    import json

    from clusterctl.config.models import ClusterFile

    print(json.dumps(ClusterFile.model_json_schema(), indent=2))


secrets_app = typer.Typer(
    cls=CommandGroup,
    help="The cluster's operator-side secrets (gossip key, weave password): export them for a second operator, import them.",
    no_args_is_help=True,
)
app.add_typer(secrets_app, name="secrets")
ForceOpt = Annotated[bool, typer.Option("--force", help="Write over what is there (export: FILE; import: a different secret).")]
MAX_BUNDLE = 1 << 20


@secrets_app.command("export")
def secrets_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Write them here (a new 0600 file); - for stdout when it is not a terminal.")],
    file: FileOpt = None,
    force: ForceOpt = False,
) -> None:
    """Write the cluster's secrets (from this operator's state dir) into one 0600 file."""
    from clusterctl.secrets import export_bundle, write_bundle
    from clusterctl.state import cluster_path

    cluster = _load(file)
    data, names = export_bundle(cluster_path(cluster.name), cluster.name)
    if str(output) == "-":
        if sys.stdout.isatty():
            raise UserError("-o -: that would print the cluster's secrets on the terminal: give -o FILE, or pipe it")
        sys.stdout.write(data.decode())
        sys.stdout.flush()
        where = "stdout"
    else:
        write_bundle(output, data, force)
        where = f"{output} (0600)"
    _err_console().print(f"exported {', '.join(names)} of cluster '{cluster.name}' to {where}: keep it as safe as the cluster", soft_wrap=True, markup=False)


@secrets_app.command("import")
def secrets_import(
    source: Annotated[Path, typer.Argument(help="A file made by `clusterctl secrets export` (- for stdin).", show_default=False)],
    file: FileOpt = None,
    force: ForceOpt = False,
    output: OutputOpt = Output.table,
) -> None:
    """Install exported secrets into this operator's state dir (a different one only with --force)."""
    import json

    from clusterctl.secrets import import_secrets, parse_bundle
    from clusterctl.state import cluster_dir

    cluster = _load(file)
    if str(source) == "-":
        data, where = sys.stdin.buffer.read(MAX_BUNDLE + 1), "stdin"
    else:
        where = str(source)
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_BUNDLE + 1)
        except OSError as exc:
            raise UserError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BUNDLE:
        raise UserError(f"{where}: not a clusterctl secrets file (larger than {MAX_BUNDLE} bytes)")
    bundle = parse_bundle(data, where, cluster.name)
    directory = cluster_dir(cluster.name, cluster.path)
    done = import_secrets(directory, bundle, force)
    if output == Output.json:
        print(json.dumps({"cluster": cluster.name, "directory": str(directory), "secrets": done}, indent=2))
    else:
        width = max(len(n) for n in done)
        for name, what in done.items():
            print(f"{name:<{width}}  {what}")
    _err_console().print(f"cluster '{cluster.name}': secrets in {directory}", soft_wrap=True, markup=False)


@lab_app.command("up")
def lab_up(
    name: Annotated[str, typer.Option("--name", help="Lab name.")] = DEFAULT_LAB,
    hosts: Annotated[int, typer.Option("--hosts", help="Number of hosts.")] = 3,
    bare: Annotated[bool, typer.Option("--bare", help="Hosts without Docker installed (its packages wait in the apt cache).")] = False,
    bastion: Annotated[bool, typer.Option("--bastion", help="node1 is a bastion: the other hosts are on a private network reachable only through it.")] = False,
    os_: Annotated[str, typer.Option("--os", help="Host kinds, a comma list cycled over the hosts: debian-12 (Docker 20.10), debian-13 (26), debian-sid (28).")] = "debian-12",
    image_store: Annotated[str, typer.Option("--image-store", help="classic, or containerd (on the hosts whose Docker has it: 24 and later).")] = "classic",
    init: Annotated[str, typer.Option("--init", help="plain (an init script under tini), or systemd as PID 1, as on real hosts.")] = "plain",
    user: Annotated[Optional[str], typer.Option("--user", help="SSH as this user, with passwordless sudo, instead of root (which then has no login).")] = None,
) -> None:
    """Create the lab's hosts and print its cluster file's path (last line)."""
    from clusterctl.lab import lab

    console = _err_console()
    path = lab.up(
        name, hosts, bare=bare, bastion=bastion, oses=os_, image_store=image_store, init=init, user=user,
        log=lambda m: console.print(m), example=name == DEFAULT_LAB,
    )  # fmt: skip
    print(path)


@lab_app.command("down")
def lab_down(name: Annotated[str, typer.Option("--name", help="Lab name.")] = DEFAULT_LAB) -> None:
    """Remove everything the lab created."""
    from clusterctl.lab import lab

    removed = lab.down(name)
    _err_console().print(f"lab {name}: removed {len(removed)} items" if removed else f"lab {name}: nothing to remove")


@lab_app.command("ls")
def lab_ls(output: OutputOpt = Output.table) -> None:
    """List labs on this machine."""
    import json

    from clusterctl.lab import lab

    labs = lab.ls()
    if output == Output.json:
        print(json.dumps([vars(i) for i in labs], indent=2))
        return
    for i in labs:
        print(f"{i.name}\t{i.running}/{i.hosts} running\t{i.cluster_file or '-'}")


def _mount_subcommands() -> None:
    from clusterctl.images.cli import filebox_app, image_app
    from clusterctl.inventory.cli import app as inventory_app

    # CommandGroup here too: these apps are made in their own modules.
    app.add_typer(inventory_app, name="inventory", cls=CommandGroup)
    app.add_typer(image_app, name="image", cls=CommandGroup)
    app.add_typer(filebox_app, name="filebox", cls=CommandGroup)


_mount_subcommands()


def _quiet_libraries() -> None:
    """paramiko logs a failed handshake ("Error reading SSH protocol banner") with a traceback,
    which Python's last-resort handler prints to the terminal: the failure is already a host's
    one-line result, so library loggers say nothing to the user."""
    import logging

    for name in ("paramiko", "invoke", "fabric", "urllib3", "docker"):
        log = logging.getLogger(name)
        log.addHandler(logging.NullHandler())
        log.propagate = False


def main() -> None:
    _quiet_libraries()
    try:
        app(prog_name="clusterctl")  # also under `python -m`: help, errors and completion name the command
    except UserError as exc:
        from rich.markup import escape

        console = _err_console()
        for line in str(exc).splitlines() or [""]:  # a cluster file's problems: one line each
            console.print(f"[bold red]error:[/bold red] {escape(line)}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def run() -> None:
    """The program (the `clusterctl` command, `python -m clusterctl`): main(), then the exit
    without the interpreter's tear-down. main() itself ends in SystemExit, as tests call it."""
    try:
        main()
    except SystemExit as done:
        _exit_now(done.code)
    _exit_now(0)


def _exit_now(code: object) -> None:
    """End the process once everything is written: threads that are not daemons are waited for
    (as Python's own exit waits), the exit handlers run and the streams are flushed, then the
    interpreter's tear-down (modules, objects; ~0.1 s, a tenth of a no-op `up`) is skipped."""
    import atexit
    import logging
    import os
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, exit 1, as Python does
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            if stream is sys.stdout:
                status = status or 1
    os._exit(status)


if __name__ == "__main__":
    run()
