"""The operator's secrets: atomic files (concurrent first runs agree), never a new gossip key over a
running cluster (refused after the probe, through the manager), never in a repr or a report, and
`clusterctl secrets export` / `import`."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import shlex
import stat
import sys
import threading
from pathlib import Path

import pytest

from clusterctl import secrets
from clusterctl.commands import consul as consul_build
from clusterctl.config.loader import load_text
from clusterctl.phases import PHASES
from clusterctl.phases.base import Context, Inputs
from clusterctl.phases.gossip import consul_hosts, gossip_inputs
from clusterctl.phases.manager import Manager, Options, execute
from clusterctl.report.render import report_json
from clusterctl.secrets import GOSSIP_KEY, WEAVE_PASSWORD, Secret, SecretError
from clusterctl.transport.ssh import RunResult
from clusterctl.commands.files import sha256
from clusterctl.facts.parser import parse_probe_output
from tests.conftest import CLI
from tests.unit.test_consul_plan import FIXTURE, INPUTS, KEY, facts_for

FILE = """
name: prod
hosts:
  - {name: node1, address: 10.0.0.1}
  - {name: node2, address: 10.0.0.2}
  - {name: node3, address: 10.0.0.3}
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------------------------
# Atomic files


def test_first_use_makes_a_0600_key_in_a_0700_dir_even_with_umask_0(tmp_path):
    d = tmp_path / "state" / "clusters" / "prod"
    old = os.umask(0)
    try:
        key = secrets.gossip_key(d)
    finally:
        os.umask(old)
    assert len(base64.b64decode(key, validate=True)) == 32
    assert _mode(d / GOSSIP_KEY) == 0o600 and _mode(d) == 0o700
    assert (d / GOSSIP_KEY).read_text() == key + "\n"
    assert secrets.gossip_key(d) == key  # made once
    assert sorted(p.name for p in d.iterdir()) == [GOSSIP_KEY]  # no temp file left behind


def test_an_existing_wide_dir_is_narrowed_to_0700(tmp_path):
    d = tmp_path / "prod"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    secrets.weave_password(d)
    assert _mode(d) == 0o700 and _mode(d / WEAVE_PASSWORD) == 0o600


def _first_run(d: str, start, out) -> None:
    start.wait()
    try:
        out.put(("ok", str(secrets.gossip_key(Path(d)))))
    except BaseException as exc:  # noqa: BLE001 - the test wants to see every failure
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def test_200_concurrent_first_runs_in_processes_agree_on_one_key(tmp_path):
    d = tmp_path / "clusters" / "prod"
    mp = multiprocessing.get_context("fork")
    start, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_first_run, args=(str(d), start, out)) for _ in range(200)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r for kind, r in results if kind == "error"]
    assert not errors, errors[:3]
    keys = {r for _, r in results}
    assert len(keys) == 1 and keys == {(d / GOSSIP_KEY).read_text().strip()}
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(p.name for p in d.iterdir()) == [GOSSIP_KEY]


def test_200_concurrent_first_runs_in_threads_agree_and_no_reader_sees_a_partial_file(tmp_path):
    d = tmp_path / "clusters" / "prod"
    barrier = threading.Barrier(201)
    got: list[str] = []
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def run():
        barrier.wait()
        try:
            got.append(secrets.gossip_key(d))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def watch():  # the final name shows a whole key or nothing, never an empty or partial file
        barrier.wait()
        while not stop.is_set():
            try:
                seen.add((d / GOSSIP_KEY).read_text())
            except FileNotFoundError:
                pass

    watcher = threading.Thread(target=watch)
    threads = [threading.Thread(target=run) for _ in range(200)]
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stop.set()
    watcher.join(timeout=10)
    assert not errors, errors[:3]
    assert len(got) == 200 and len(set(got)) == 1
    assert seen <= {got[0] + "\n"}


@pytest.mark.parametrize("content, why", [(b"", "empty"), (b"\n  \n", "empty"), (b"not base64!", "not a Consul gossip key"),
                                          (base64.b64encode(b"x" * 7) + b"\n", "this is 7 bytes")])  # fmt: skip
def test_an_empty_or_malformed_key_is_one_line_naming_the_file_never_replaced(tmp_path, content, why):
    d = tmp_path / "prod"
    d.mkdir()
    (d / GOSSIP_KEY).write_bytes(content)
    with pytest.raises(SecretError) as exc:
        secrets.gossip_key(d)
    msg = str(exc.value)
    assert msg.startswith(f"{d / GOSSIP_KEY}: ") and why in msg and "\n" not in msg
    assert exc.value.exit_code == 2
    assert (d / GOSSIP_KEY).read_bytes() == content


def test_a_malformed_weave_password_is_refused_too(tmp_path):
    (tmp_path / WEAVE_PASSWORD).write_bytes(b"two words\n")
    with pytest.raises(SecretError, match=r"weave.password: not a password"):
        secrets.weave_password(tmp_path)


def test_install_without_replace_keeps_the_first_and_with_replace_swaps(tmp_path):
    path = tmp_path / "d" / GOSSIP_KEY
    assert secrets.install(path, b"first") is True
    assert secrets.install(path, b"second") is False and path.read_bytes() == b"first\n"
    assert secrets.install(path, b"third", replace=True) is True and path.read_bytes() == b"third\n"
    assert _mode(path) == 0o600


def test_without_hard_links_the_first_writer_still_wins(tmp_path, monkeypatch):
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "d" / GOSSIP_KEY
    assert secrets.install(path, b"first") is True
    assert secrets.install(path, b"second") is False and path.read_bytes() == b"first\n"
    assert _mode(path) == 0o600 and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_state_dir_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "state").write_text("a file, not a directory")
    with pytest.raises(SecretError, match=r"^\S*/state/clusters/prod/gossip.key: cannot (read|write): Not a directory$"):
        secrets.gossip_key(tmp_path / "state" / "clusters" / "prod")


def test_a_secret_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(secrets.tempfile, "mkstemp", denied)
    with pytest.raises(SecretError, match=r"/prod/gossip.key: cannot write: Permission denied$"):
        secrets.gossip_key(tmp_path / "prod")


def test_every_registered_secret_made_here_is_valid_and_made_once(tmp_path):
    made = [k for k in secrets.SECRETS.values() if k.make is not None]
    assert {k.name for k in made} == {GOSSIP_KEY, WEAVE_PASSWORD, "acl/agent-*.token", "acl/service-*.token"}
    for kind in made:
        name = kind.name.replace("*", "n1")
        assert secrets.check_value(name, kind.make()) is None
        assert secrets.ensure_secret(tmp_path, name) == secrets.ensure_secret(tmp_path, name)
    assert secrets.ensure_secret(tmp_path, "acl/agent-n1.token") != secrets.ensure_secret(tmp_path, "acl/agent-n2.token")


PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n"


def test_the_registry_names_per_host_files_and_nothing_else(tmp_path):
    for name in ("tls/ca.pem", "tls/agent-node1.pem", "tls/agent-n.2_x.pem"):
        assert secrets.kind_of(name) is not None, name
    for name in ("tls/agent-.pem", "tls/agent-../x.pem", "tls/agent-a/b.pem", "known_hosts", "lock", "../gossip.key", "tls/other.pem"):
        assert secrets.kind_of(name) is None, name
    assert secrets.check_value("tls/ca.pem", PEM) is None and "not a PEM" in secrets.check_value("tls/ca.pem", b"junk")
    for name in ("tls/ca.pem", "tls/agent-node2.pem", "tls/agent-node1.pem"):
        secrets.install(tmp_path / name, PEM)
    secrets.gossip_key(tmp_path)
    (tmp_path / "known_hosts").write_text("x")
    assert secrets.present(tmp_path) == [GOSSIP_KEY, "tls/ca.pem", "tls/agent-node1.pem", "tls/agent-node2.pem"]
    assert _mode(tmp_path / "tls") == 0o700 and _mode(tmp_path / "tls" / "ca.pem") == 0o600


# ---------------------------------------------------------------------------------------------
# Never in a repr


def test_the_gossip_key_is_never_in_a_repr():
    inputs = Inputs(gossip_key=KEY, weave_password=b"pw-123")
    assert isinstance(inputs.gossip_key, Secret) and inputs.gossip_key == KEY
    cluster = load_text(FILE, "c.yaml")
    for text in (repr(inputs), repr(Context(cluster, {}, inputs)), repr(Secret(KEY)), repr({"k": inputs.gossip_key})):
        assert KEY not in text and "pw-123" not in text
    assert repr(Secret(KEY)) == "<secret>"
    assert json.dumps({"encrypt": inputs.gossip_key}) == json.dumps({"encrypt": KEY})  # still the key where it is used


# ---------------------------------------------------------------------------------------------
# Never a new key over a running cluster: through the manager, with facts


def probe_json(ip: str, containers=(), managed=None) -> str:
    """The probe's output for a host (the recorded fixture, as test_consul_plan.facts_for)."""
    data = json.loads(FIXTURE.read_text())
    data["ssh_connection"] = f"10.0.0.100 5555 {ip} 22"
    data["addresses"] = [
        {"ifname": "lo", "family": "inet", "cidr": "127.0.0.1/8"},
        {"ifname": "eth0", "family": "inet", "cidr": f"{ip}/24"},
        {"ifname": "docker0", "family": "inet", "cidr": "172.17.0.1/16"},
    ]
    data["managed_files"] = [{"path": p, "sha256": h} for p, h in (managed or {}).items()]
    data["docker"]["containers"] = list(containers)
    data["docker"]["consul_raft"] = None
    return json.dumps(data)


def consul_container(cluster="prod"):
    """A running consul agent as `docker ps --format json` shows it."""
    labels = f"clusterctl.cluster={cluster},clusterctl.role=consul,clusterctl.consul.mode=server,clusterctl.config=d1g3st"
    return {"ID": "c0ffee", "Names": consul_build.CONTAINER, "Image": "clusterctl/base:abc", "State": "running", "Labels": labels}


class Hosts:
    """Fake SSH sessions: each host answers the probe with its JSON; every other command is kept."""

    def __init__(self, probes: dict[str, str], on_probe=None):
        self.probes, self.on_probe = probes, on_probe
        self.sent: list[tuple[str, str]] = []

    def session(self, name: str):
        hosts = self

        class Session:
            round_trips = bytes_sent = 0

            def run(self, command: str, timeout=None, stdin=None, watch=None) -> RunResult:
                self.round_trips += 1
                argv = shlex.split(command)
                if argv[:2] == ["sh", "-c"] and argv[2].startswith("# clusterctl probe"):
                    if hosts.on_probe:
                        hosts.on_probe()
                    return RunResult(0, hosts.probes[name], "", 0.01)
                hosts.sent.append((name, command))
                return RunResult(0, "", "", 0.01)

            def close(self) -> None:
                pass

        return Session()


@pytest.fixture
def fake_ssh(monkeypatch):
    """Hosts answering the probe without SSH (Manager.connect replaced)."""
    box: dict[str, Hosts] = {}

    def install(hosts: Hosts) -> Hosts:
        box["hosts"] = hosts
        return hosts

    def connect(self: Manager) -> None:
        for name in self.reports:
            if name in box["hosts"].probes:
                self.sessions[name] = box["hosts"].session(name)  # type: ignore[assignment]

    monkeypatch.setattr(Manager, "connect", connect)
    return install


@pytest.fixture
def d(tmp_path, monkeypatch) -> Path:
    """This operator's state dir of cluster 'prod' (not created)."""
    monkeypatch.setenv("CLUSTERCTL_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state" / "clusters" / "prod"


def _run(file, dry_run=False, only=None, phases=PHASES):
    """A run through the manager with the CLI's post-probe step (cli._prepare)."""
    from clusterctl.cli import _prepare

    cluster = load_text(file, "c.yaml")
    options = Options(dry_run=dry_run, only=frozenset(only) if only else None)
    return execute(cluster, phases, {}, None, options, None, INPUTS, *_prepare(cluster, dry_run))  # type: ignore[arg-type]


@pytest.mark.parametrize("dry_run", [False, True])
def test_up_over_a_running_cluster_without_the_key_is_refused_after_the_probe_only(d, fake_ssh, dry_run):
    hosts = fake_ssh(Hosts({
        "node1": probe_json("10.0.0.1", [consul_container()]),
        "node2": probe_json("10.0.0.2", managed={consul_build.GOSSIP_FILE: "ab" * 32}),  # a stopped agent's file
        "node3": probe_json("10.0.0.3"),
    }))  # fmt: skip
    with pytest.raises(SecretError) as exc:
        _run(FILE, dry_run=dry_run)
    msg = str(exc.value)
    assert msg.startswith("cluster 'prod' runs Consul on node1, node2 but its gossip key ") and "\n" not in msg
    assert f"{d / GOSSIP_KEY} is missing" in msg and "clusterctl secrets import FILE" in msg
    assert exc.value.exit_code == 2
    assert hosts.sent == []  # nothing beyond the read-only probe
    assert not d.exists()  # and no key made


def test_a_consul_of_another_cluster_does_not_count_and_the_key_is_made_after_the_probe(d, fake_ssh):
    probed: list[bool] = []
    fake_ssh(Hosts({n: probe_json(f"10.0.0.{i}", [consul_container("other")]) for i, n in enumerate(["node1", "node2", "node3"], 1)},
                   on_probe=lambda: probed.append((d / GOSSIP_KEY).exists())))  # fmt: skip
    report = _run(FILE, phases=())
    assert probed == [False, False, False]  # not made before the probe
    assert report.ok and secrets.read_secret(d, GOSSIP_KEY) is not None


def test_a_dry_run_on_a_new_cluster_plans_with_a_placeholder_and_makes_nothing(d, fake_ssh):
    hosts = fake_ssh(Hosts({n: probe_json(f"10.0.0.{i}") for i, n in enumerate(["node1", "node2", "node3"], 1)}))
    report = _run(FILE, dry_run=True)
    assert not d.parent.parent.exists() and hosts.sent == []
    consul = {h.name: next(s for s in h.steps if s.phase == "consul") for h in report.hosts}
    assert all(s.status == "planned" and "write the gossip encryption key" in s.message for s in consul.values()), consul


def test_the_key_is_never_in_a_plan_or_its_json(d, fake_ssh):
    fake_ssh(Hosts({n: probe_json(f"10.0.0.{i}") for i, n in enumerate(["node1", "node2", "node3"], 1)}))
    key = secrets.gossip_key(d)
    report = _run(FILE, dry_run=True)
    commands = [c for h in report.hosts for s in h.steps for c in s.commands]
    assert any("gossip" in c or consul_build.CONFIG_DIR in c for c in commands)
    text = report_json(report) + repr(report)
    assert key not in text and base64.b64decode(key).hex() not in text


def test_a_host_run_without_the_key_is_refused_when_the_other_hosts_are_unknown(d, fake_ssh):
    hosts = fake_ssh(Hosts({"node3": probe_json("10.0.0.3")}))
    with pytest.raises(SecretError, match=r"this --host run cannot see whether node1, node2 run Consul"):
        _run(FILE, only=["node3"])
    assert hosts.sent == [] and not d.exists()


def test_with_the_key_a_running_cluster_is_planned_as_usual(d, fake_ssh):
    fake_ssh(Hosts({n: probe_json(f"10.0.0.{i}", [consul_container()]) for i, n in enumerate(["node1", "node2", "node3"], 1)}))
    secrets.install(d / GOSSIP_KEY, KEY.encode())
    report = _run(FILE, dry_run=True)
    assert not report.refused and all(any(s.phase == "consul" for s in h.steps) for h in report.hosts)


def test_consul_hosts_reads_containers_and_managed_files():
    cluster = load_text(FILE, "c.yaml")
    facts = {"node1": facts_for("10.0.0.1"), "node2": facts_for("10.0.0.2", managed={consul_build.GOSSIP_FILE: "x"})}
    assert consul_hosts(Context(cluster, facts)) == ["node2"]


def test_consul_disabled_needs_no_key(tmp_path):
    cluster = load_text(FILE + "consul: {enabled: false}\n", "c.yaml")
    ctx = Context(cluster, {"node1": facts_for("10.0.0.1", managed={consul_build.GOSSIP_FILE: "x"})}, INPUTS)
    assert gossip_inputs(ctx, tmp_path / "none", dry_run=False) is INPUTS and not (tmp_path / "none").exists()


def test_up_through_the_cli_is_refused_with_one_line_and_exit_2(tmp_path, d, fake_ssh, monkeypatch, capsys):
    from clusterctl import cli

    hosts = fake_ssh(Hosts({n: probe_json(f"10.0.0.{i}", [consul_container()]) for i, n in enumerate(["node1", "node2", "node3"], 1)}))
    f = tmp_path / "prod.yaml"
    f.write_text(FILE)
    monkeypatch.setattr(cli, "_inputs", lambda cluster, dry_run: INPUTS)  # no filebox build here
    for argv in (["up", "-f", str(f)], ["up", "-f", str(f), "-o", "json"], ["plan", "-f", str(f)]):
        monkeypatch.setattr(sys, "argv", ["clusterctl", *argv])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 2
        out, err = capsys.readouterr()
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: cluster 'prod' runs Consul on node1, node2, node3 but its gossip key "
            f"{tmp_path / 'state' / 'clusters' / 'prod' / GOSSIP_KEY} is missing: get it from the operator that made the "
            "cluster (`clusterctl secrets export -o FILE` there, `clusterctl secrets import FILE` here); a new key would "
            "cut every agent off"
        ], err
        assert "Traceback" not in err and out == ""
    assert hosts.sent == []
    assert not (tmp_path / "state" / "clusters" / "prod" / GOSSIP_KEY).exists()


# ---------------------------------------------------------------------------------------------
# clusterctl secrets export / import


@pytest.fixture
def op(tmp_path):
    """Two operators (own state dirs) of cluster 'prod', and a cluster file of 'other'."""
    f = tmp_path / "prod.yaml"
    f.write_text(FILE)
    other = tmp_path / "other.yaml"
    other.write_text(FILE.replace("name: prod", "name: other"))

    def cli_for(state: str) -> CLI:
        return CLI(dict(os.environ, CLUSTERCTL_STATE_DIR=str(tmp_path / state), COLUMNS="200", NO_COLOR="1"))

    class Ops:
        file, other_file = f, other
        a, b = cli_for("a"), cli_for("b")
        a_dir, b_dir = tmp_path / "a" / "clusters" / "prod", tmp_path / "b" / "clusters" / "prod"

    return Ops


def _one_line_exit_2(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_export_then_import_gives_a_second_operator_the_same_secrets(op, tmp_path):
    key, pw = secrets.gossip_key(op.a_dir), secrets.weave_password(op.a_dir)
    out = tmp_path / "prod-secrets.json"
    proc = op.a("secrets", "export", "-o", str(out), "-f", str(op.file))
    assert proc.returncode == 0, proc.stderr
    assert _mode(out) == 0o600 and proc.stdout == ""
    assert key not in proc.stderr and "gossip.key, weave.password" in proc.stderr
    doc = json.loads(out.read_text())
    assert doc["cluster"] == "prod" and doc["secrets"] == {GOSSIP_KEY: key, WEAVE_PASSWORD: pw.decode()}

    proc = op.b("secrets", "import", str(out), "-f", str(op.file))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [GOSSIP_KEY, "imported", WEAVE_PASSWORD, "imported"] and key not in proc.stdout + proc.stderr
    for name in (GOSSIP_KEY, WEAVE_PASSWORD):
        assert (op.b_dir / name).read_bytes() == (op.a_dir / name).read_bytes() and _mode(op.b_dir / name) == 0o600
    assert _mode(op.b_dir) == 0o700
    code, doc = op.b.json("secrets", "import", str(out), "-f", str(op.file))  # the same again: a no-op
    assert code == 0 and doc["secrets"] == {GOSSIP_KEY: "unchanged", WEAVE_PASSWORD: "unchanged"} and doc["cluster"] == "prod"


def test_export_and_import_carry_the_tls_files_too(op, tmp_path):
    secrets.gossip_key(op.a_dir)
    for name in ("tls/ca.pem", "tls/agent-node1.pem"):
        secrets.install(op.a_dir / name, PEM)
    out = tmp_path / "s.json"
    assert op.a("secrets", "export", "-o", str(out), "-f", str(op.file)).returncode == 0
    code, doc = op.b.json("secrets", "import", str(out), "-f", str(op.file))
    assert code == 0 and doc["secrets"] == {GOSSIP_KEY: "imported", "tls/ca.pem": "imported", "tls/agent-node1.pem": "imported"}
    assert (op.b_dir / "tls" / "agent-node1.pem").read_bytes() == PEM and _mode(op.b_dir / "tls") == 0o700


def test_export_refuses_to_write_over_a_file_unless_forced(op, tmp_path):
    secrets.gossip_key(op.a_dir)
    out = tmp_path / "s.json"
    out.write_text("keep me")
    _one_line_exit_2(op.a("secrets", "export", "-o", str(out), "-f", str(op.file)), f"{out}: exists; pass --force")
    assert out.read_text() == "keep me"
    assert op.a("secrets", "export", "-o", str(out), "-f", str(op.file), "--force").returncode == 0
    assert json.loads(out.read_text())["cluster"] == "prod" and _mode(out) == 0o600


def test_export_to_stdout_off_a_terminal_and_import_from_stdin(op):
    key = secrets.gossip_key(op.a_dir)
    proc = op.a("secrets", "export", "-o", "-", "-f", str(op.file))
    assert proc.returncode == 0 and json.loads(proc.stdout)["secrets"] == {GOSSIP_KEY: key}
    proc = op.b("secrets", "import", "-", "-f", str(op.file), input=proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert secrets.read_secret(op.b_dir, GOSSIP_KEY) == key.encode()


def test_export_without_secrets_is_one_line(op, tmp_path):
    _one_line_exit_2(op.a("secrets", "export", "-o", str(tmp_path / "s.json"), "-f", str(op.file)), "has no secrets", "nothing to export")
    assert not (tmp_path / "s.json").exists()


def test_export_of_a_broken_key_is_one_line_naming_it(op, tmp_path):
    op.a_dir.mkdir(parents=True)
    (op.a_dir / GOSSIP_KEY).write_text("")
    _one_line_exit_2(op.a("secrets", "export", "-o", str(tmp_path / "s.json"), "-f", str(op.file)), f"{op.a_dir / GOSSIP_KEY}: empty")


def test_import_refuses_a_different_secret_unless_forced(op, tmp_path):
    secrets.gossip_key(op.a_dir)
    mine = secrets.gossip_key(op.b_dir)
    out = tmp_path / "s.json"
    assert op.a("secrets", "export", "-o", str(out), "-f", str(op.file)).returncode == 0
    _one_line_exit_2(op.b("secrets", "import", str(out), "-f", str(op.file)), f"{op.b_dir / GOSSIP_KEY}: a different secret", "--force")
    assert secrets.read_secret(op.b_dir, GOSSIP_KEY) == mine.encode()
    code, doc = op.b.json("secrets", "import", str(out), "-f", str(op.file), "--force")
    assert code == 0 and doc["secrets"] == {GOSSIP_KEY: "replaced"}
    assert (op.b_dir / GOSSIP_KEY).read_bytes() == (op.a_dir / GOSSIP_KEY).read_bytes()


def test_import_mends_a_broken_key_only_when_forced(op, tmp_path):
    secrets.gossip_key(op.a_dir)
    out = tmp_path / "s.json"
    assert op.a("secrets", "export", "-o", str(out), "-f", str(op.file)).returncode == 0
    op.b_dir.mkdir(parents=True)
    (op.b_dir / GOSSIP_KEY).write_text("")
    _one_line_exit_2(op.b("secrets", "import", str(out), "-f", str(op.file)), "a different secret")
    assert op.b("secrets", "import", str(out), "-f", str(op.file), "--force").returncode == 0
    assert (op.b_dir / GOSSIP_KEY).read_bytes() == (op.a_dir / GOSSIP_KEY).read_bytes()


def test_import_into_another_cluster_is_refused(op, tmp_path):
    secrets.gossip_key(op.a_dir)
    out = tmp_path / "s.json"
    assert op.a("secrets", "export", "-o", str(out), "-f", str(op.file)).returncode == 0
    _one_line_exit_2(op.b("secrets", "import", str(out), "-f", str(op.other_file)), "holds the secrets of cluster 'prod', not 'other'")
    assert not (tmp_path / "b" / "clusters" / "other").exists()


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read: No such file or directory"),
    ("", "not JSON"),
    ("{not json", "not JSON"),
    ('["a"]', "not a clusterctl secrets file"),
    ('{"format": "clusterctl-secrets/1", "cluster": "prod", "secrets": {"gossip.key": "short"}}', "secrets.gossip.key: not a Consul gossip key"),
    ('{"format": "clusterctl-secrets/1", "cluster": "prod", "secrets": {"gossip.key": ""}}', "secrets.gossip.key: empty"),
    ('{"format": "clusterctl-secrets/1", "cluster": "prod", "secrets": {"gossip.key": 3}}', "secrets.gossip.key: not a string"),
    ('{"format": "clusterctl-secrets/1", "cluster": "prod", "secrets": {"id_rsa": "x"}}', "unknown secret 'id_rsa'"),
    ('{"format": "clusterctl-secrets/1", "cluster": "prod", "secrets": {}}', "holds no secrets"),
])  # fmt: skip
def test_import_of_bad_input_is_one_line_exit_2_and_writes_nothing(op, tmp_path, content, needle):
    src = tmp_path / "in.json"
    if content is not None:
        src.write_text(content)
    _one_line_exit_2(op.b("secrets", "import", str(src), "-f", str(op.file)), str(src), needle)
    assert not op.b_dir.exists()


def test_a_state_dir_from_another_cluster_is_refused_not_rolled_out(tmp_path):
    """Its gossip key (or CA) is valid but not the one the hosts run: one line, never a roll."""
    from clusterctl.phases.consul_tls import CA_FILE_ON_HOST, tls_inputs
    from clusterctl.pki import ClusterPKI

    cluster = load_text(FILE, "c.yaml")
    secrets.install(tmp_path / GOSSIP_KEY, KEY.encode())
    theirs = {consul_build.GOSSIP_FILE: sha256(consul_build.gossip_file(secrets._new_gossip_key().decode()))}
    ours = {consul_build.GOSSIP_FILE: sha256(consul_build.gossip_file(KEY))}

    def ctx(managed):
        return Context(cluster, {"node1": parse_probe_output(probe_json("10.0.0.1", [consul_container()], managed))}, INPUTS)

    with pytest.raises(SecretError, match=r"gossip.key: not the gossip key that cluster 'prod' runs on node1 \(a state dir from another cluster\?\)"):
        gossip_inputs(ctx(theirs), tmp_path, dry_run=False)
    assert gossip_inputs(ctx(ours), tmp_path, dry_run=False).gossip_key == KEY
    pki = ClusterPKI(tmp_path, "prod", secrets.install)
    ca = pki.ca(create=True)
    with pytest.raises(SecretError, match=r"tls/ca.pem: not the TLS CA that cluster 'prod' runs on node1"):
        tls_inputs(ctx(ours | {CA_FILE_ON_HOST: "ab" * 32}), tmp_path, dry_run=False)
    assert tls_inputs(ctx(ours | {CA_FILE_ON_HOST: sha256(ca.cert_pem)}), tmp_path, dry_run=False).tls is not None


def test_one_hosts_odd_facts_fail_that_host_only(d, fake_ssh):
    """A nameserver line that is not an address is skipped (as the resolver skips it); any
    exception while planning one host is that host's one-line failure, the others go on."""

    class Odd:
        name = "odd"
        title = "a phase that cannot plan node2"

        def plan(self, ctx, host, facts):
            if host.name == "node2":
                raise OverflowError("cannot convert float infinity\nto integer \x1b[31m")
            return []

    probes = {n: probe_json(f"10.0.0.{i}") for i, n in enumerate(["node1", "node2", "node3"], 1)}
    data = json.loads(probes["node3"])
    data["nameservers"] = [{"ip": "bogus!"}, {"ip": "10.0.0.53"}, {"ip": None}, "x"]
    probes["node3"] = json.dumps(data)
    fake_ssh(Hosts(probes))
    report = _run(FILE, phases=(Odd(),))
    steps = {h.name: {s.phase: s for s in h.steps} for h in report.hosts}
    assert [h.name for h in report.failed_hosts] == ["node2"]
    why = steps["node2"]["odd"].message
    assert why == "could not plan this host (OverflowError: cannot convert float infinity to integer \\x1b[31m)"
    assert report.hosts[2].facts.nameservers == ("10.0.0.53",)
    assert steps["node3"]["probe"].message.endswith("; /etc/resolv.conf: skipped nameserver 'bogus!' (not an address)")
