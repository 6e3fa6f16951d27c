"""Issue 13's targets: a cold `up` of the job beside its floor, a no-op `up` beside a minimal
bare probe, each floor measured in the same run on the same lab hosts.

The job: the lab's cluster file plus `filebox: {binaries: [consul]}` (one Consul server per host:
the lab's hosts all have `roles: [server]`) and one service, an `app:` folder made here whose
clusterctl-app.yaml runs `busybox httpd -f -p 8080`, an HTTP check on `/`, one replica per host.

Every repeat starts from fresh hosts: `lab down` + `lab up` (Docker installed, an empty engine)
and a fresh CLUSTERCTL_STATE_DIR (no gossip key, CA or tokens from an earlier repeat). On them:

  1. the floor: the same steps as bare parallel OpenSSH commands, each step on every host at
     once, the steps one after another (floor = the sum of each step's slowest host):
       (a) one round trip per host (it reads docker0's address and the nameservers, for (c));
       (b) one local `docker save` of the very images clusterctl ships (filebox, base, app: built
           with clusterctl's builders), piped into `docker load` on every host, and the filebox
           container created (`docker create`, as the filebox phase does);
       (c) a Consul server on every host, `docker run` of the base image with consul from the
           filebox and clusterctl's own agent argv (AgentConfig.args(), gossip key in its file)
           minus TLS and ACLs, until each host's agent knows a leader;
       (d) the app's container on every host (`--volumes-from` the filebox, its port published
           on the host's address) until it answers `/` on that address;
     then every floor container, volume, image and file is removed, and the hosts are checked
     empty (no container, image or volume), so the next `up` is cold;
  2. the cold `up -o json` of the job (wall time around the process; per phase, each host's
     `seconds` from the report);
  3. `--noop-runs` times: a no-op `up` (checked: nothing changed, one round trip per host), the
     minimal bare probe (`ssh HOST sh -s`: docker version, `docker ps -a`, `docker images`, as
     JSON) and clusterctl's own probe script run bare the same way.

Figures are medians over the repeats (no-op figures over repeats x noop-runs); ratios are of
the medians. Benches print figures; nothing here asserts a time.

Usage (from the repo root):  .venv/bin/python bench/up.py [--sizes 3 6] [--repeat 3] [--noop-runs 3] [--png bench/up.png]
Creates labs bup<pid>n<N> (removed at the end, also on failure); needs the local Docker engine
(for `docker save`) and consul on PATH (scripts/setup.sh). Progress goes to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's clusterctl, not whichever the venv installed

import yaml  # noqa: E402

from clusterctl.commands.consul import AgentConfig  # noqa: E402
from clusterctl.config.loader import load  # noqa: E402
from clusterctl.facts.parser import probe_script  # noqa: E402
from clusterctl.filebox.build import build_filebox  # noqa: E402
from clusterctl.images.app import app_on_base  # noqa: E402
from clusterctl.images.archive import write_archive_file  # noqa: E402
from clusterctl.images.base import base_image  # noqa: E402
from clusterctl.lab.lab import docker_cli  # noqa: E402

DOCKER = docker_cli()
TIMEOUT = 900.0  # any one command; a hung host fails the bench instead of stalling it
APP_PORT = 8080
APP_YAML = f'name: web\ncommand: [busybox, httpd, -f, -p, "{APP_PORT}"]\nport: {APP_PORT}\n'
# The floor's names on the hosts, none of them clusterctl's.
F_BOX, F_CONSUL, F_APP, F_DATA, F_DIR = (
    "clusterctl-floor-filebox", "clusterctl-floor-consul", "clusterctl-floor-app", "clusterctl-floor-consul-data", "/tmp/clusterctl-floor",
)  # fmt: skip
MINIMAL_PROBE = (
    "docker version --format '{{json .}}'\n"
    "docker ps -a --format '{{json .}}'\n"
    "docker images --format '{{json .}}'\n"
)
PHASES = ("connect", "probe", "docker", "engine", "network", "filebox", "consul", "services", "prune")
STEPS = ("(a) ssh round trip", "(b) docker save into docker load", "(c) Consul to a leader", "(d) app answers")
COLD_TARGET, NOOP_TARGET = 1.5, 2.0


def log(msg: str) -> None:
    print(f"[bench/up] {msg}", file=sys.stderr, flush=True)


def clusterctl(env: dict, *args: str, stamped: list[tuple[float, str]] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """`python -m clusterctl ARGS` from the repo root (so this checkout's), timed around the
    process. With `stamped`, each stderr line (the progress lines) is added to it with its time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "clusterctl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    err: list[str] = []

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            if stamped is not None:
                stamped.append((time.perf_counter() - t0, line.rstrip()))

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    killer = threading.Timer(TIMEOUT, proc.kill)  # a hung run fails the bench instead of stalling it
    killer.start()
    try:
        out = proc.stdout.read()  # type: ignore[union-attr]
        proc.wait()
    except BaseException:
        proc.kill()
        raise
    finally:
        killer.cancel()
    took = time.perf_counter() - t0
    reader.join(5)
    return took, subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(err))


def check(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else (proc.stderr or b"").decode(errors="replace")
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{err[-3000:]}")
    return proc


@dataclass
class Lab:
    name: str
    env: dict
    file: Path  # the lab's own cluster file
    doc: dict = field(default_factory=dict)

    @property
    def hosts(self) -> list[dict]:
        return self.doc["hosts"]

    def ssh(self, host: dict) -> list[str]:
        s = self.doc["ssh"]
        return ["ssh", "-i", s["identity_file"], "-o", f"UserKnownHostsFile={s['known_hosts']}", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes", "-o", "Compression=no",
                f"{s['user']}@{host['address']}"]  # fmt: skip


def on_hosts(lab: Lab, scripts: dict[str, str], what: str) -> tuple[float, dict[str, str]]:
    """Each host's script through `ssh HOST sh -s`, all hosts at once: (seconds until the last one
    ended, each host's stdout). The clock starts before the first ssh starts."""
    out: dict[str, str] = {}

    def one(host: dict) -> None:
        proc = subprocess.run([*lab.ssh(host), "sh", "-s"], input=scripts[host["name"]].encode(), capture_output=True, timeout=TIMEOUT)
        check(proc, f"{what} on {host['name']}")
        out[host["name"]] = proc.stdout.decode(errors="replace")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(lab.hosts)) as pool:
        list(pool.map(one, lab.hosts))
    return time.perf_counter() - t0, out


def same_on_hosts(lab: Lab, script: str, what: str) -> tuple[float, dict[str, str]]:
    return on_hosts(lab, {h["name"]: script for h in lab.hosts}, what)


# ---------------------------------------------------------------------------------------------
# The job


@dataclass(frozen=True)
class Job:
    file: Path  # the job's cluster file
    tags: tuple[str, ...]  # filebox, base, app: what clusterctl ships, as it names them
    filebox_tag: str
    base_tag: str
    app_tag: str


def make_job(lab_file: Path, work: Path) -> tuple[Job, tuple]:
    """The job's cluster file beside its app folder, and the images clusterctl will build for it
    (the same builders and inputs as `up`'s own: cli._inputs)."""
    app = work / "web"
    app.mkdir(parents=True, exist_ok=True)
    (app / "clusterctl-app.yaml").write_text(APP_YAML)
    (app / "index.html").write_text("hello from busybox httpd\n")
    doc = yaml.safe_load(lab_file.read_text())
    assert all(h.get("roles") == ["server"] for h in doc["hosts"]), "the lab's hosts are all servers"
    doc["filebox"] = {"binaries": ["consul"]}
    n = len(doc["hosts"])
    doc["services"] = [{"name": "web", "app": str(app), "replicas": n, "check": {"http": "/"}}]
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cluster = load(path)
    spec = cluster.spec
    box = build_filebox(spec.filebox.binaries, spec.filebox.files, base_dir=cluster.path.parent)
    base = base_image(box.manifest, box.version)
    web = app_on_base(cluster.resolve_path(spec.services[0].app), base)
    images = (box.image, base.image, web)
    job = Job(path, tuple(i.tag for i in images), box.tag, base.tag, web.tag)  # type: ignore[arg-type]
    return job, images


def load_locally(images) -> list[str]:
    """The job's images into the local engine (for `docker save`); returns the tags that were not
    there before (the only ones removed at the end: another run may use the others)."""
    new = [i.tag for i in images if subprocess.run([DOCKER, "image", "inspect", i.tag], capture_output=True).returncode != 0]
    if new:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "images.tar"
            write_archive_file(list(images), path)
            check(subprocess.run([DOCKER, "load", "-q", "-i", str(path)], capture_output=True, timeout=TIMEOUT), "local docker load")
    return new


# ---------------------------------------------------------------------------------------------
# The floor


def ship(lab: Lab, job: Job) -> tuple[float, int]:
    """(b): one `docker save` of the job's images, its bytes fanned out to `docker load` on every
    host at once (then `docker create` of the filebox container): (seconds, bytes to one host)."""
    remote = f"docker load -q >/dev/null && docker create --name {F_BOX} {shlex.quote(job.filebox_tag)} >/dev/null"
    t0 = time.perf_counter()
    save = subprocess.Popen([DOCKER, "save", *job.tags], stdout=subprocess.PIPE)
    loads = [subprocess.Popen([*lab.ssh(h), remote], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for h in lab.hosts]
    size = 0
    assert save.stdout is not None
    while chunk := save.stdout.read(1 << 20):
        size += len(chunk)
        for p in loads:
            p.stdin.write(chunk)  # type: ignore[union-attr]
    for p in loads:
        p.stdin.close()  # type: ignore[union-attr]
    errs = [p.stderr.read() for p in loads]  # type: ignore[union-attr]
    codes = [p.wait(TIMEOUT) for p in loads]
    took = time.perf_counter() - t0
    if save.wait(TIMEOUT) != 0 or any(codes):
        raise SystemExit(f"floor (b) failed: save exit {save.returncode}, loads {codes}: {[e.decode()[-500:] for e in errs]}")
    return took, size


def consul_script(lab: Lab, job: Job, host: dict, facts: dict, key: str) -> str:
    """(c) on one host: clusterctl's agent argv (TLS and ACLs off), the gossip key in its file,
    then wait (polling every 0.1 s) until this agent knows a leader."""
    cfg = AgentConfig(
        node=host["name"], server=True, bootstrap_expect=len(lab.hosts),
        retry_join=tuple(sorted(h["address"] for h in lab.hosts if h is not host)),
        bind=host["address"], client_addresses=("127.0.0.1",), dns_addresses=("127.0.0.1", facts["docker0"]),
        datacenter="dc1", recursors=tuple(facts["nameservers"]), image=job.base_tag, filebox_container=F_BOX,
        cluster="floor", tls_stage=0, acl_stage=0,
    )  # fmt: skip
    run = ["docker", "run", "-d", "--name", F_CONSUL, "--net", "host", "--volumes-from", F_BOX,
           "-v", f"{F_DATA}:/consul/data", "-v", f"{F_DIR}/consul:/consul/config:ro", job.base_tag, *cfg.args()]  # fmt: skip
    gossip = json.dumps({"encrypt": key})
    return (
        "set -e\n"
        f"mkdir -p {F_DIR}/consul/services && (umask 077; printf '%s' {shlex.quote(gossip)} > {F_DIR}/consul/gossip.json)\n"
        f"{shlex.join(run)} >/dev/null\n"
        "i=0; until curl -fsS --max-time 2 http://127.0.0.1:8500/v1/status/leader 2>/dev/null | grep -q :; do\n"
        f'  i=$((i+1)); if [ "$i" -ge 1200 ]; then echo "no leader after 120 s" >&2; docker logs --tail 20 {F_CONSUL} >&2; exit 1; fi\n'
        "  sleep 0.1\ndone\n"
    )


def app_script(job: Job, host: dict) -> str:
    """(d) on one host: the app's container, as a replica runs (filebox mounted, port on the
    host's address), until `/` answers there (polling every 0.05 s)."""
    addr = host["address"]
    run = ["docker", "run", "-d", "--name", F_APP, "--volumes-from", f"{F_BOX}:ro", "-p", f"{addr}:{APP_PORT}:{APP_PORT}", job.app_tag]
    return (
        "set -e\n"
        f"{shlex.join(run)} >/dev/null\n"
        f"i=0; until curl -fsS --max-time 2 -o /dev/null http://{addr}:{APP_PORT}/ 2>/dev/null; do\n"
        f'  i=$((i+1)); if [ "$i" -ge 1200 ]; then echo "the app did not answer" >&2; docker logs --tail 20 {F_APP} >&2; exit 1; fi\n'
        "  sleep 0.05\ndone\n"
    )


EMPTY = "echo $(docker ps -aq | wc -l) $(docker images -q | wc -l) $(docker volume ls -q | wc -l)\n"


def clean_floor(lab: Lab, job: Job) -> None:
    script = (
        f"docker rm -f -v {F_APP} {F_CONSUL} {F_BOX} >/dev/null 2>&1\n"
        f"docker volume rm {F_DATA} >/dev/null 2>&1\n"
        f"docker rmi {shlex.join(job.tags)} >/dev/null 2>&1\n"
        f"rm -rf {F_DIR}\n"
    )
    same_on_hosts(lab, script + "true\n", "floor clean-up")
    check_empty(lab, "after the floor")


def check_empty(lab: Lab, when: str) -> None:
    _, out = same_on_hosts(lab, EMPTY, "emptiness check")
    left = {h: o.split() for h, o in out.items() if o.split() != ["0", "0", "0"]}
    if left:
        raise SystemExit(f"hosts not empty {when} (containers images volumes): {left}")


def floor(lab: Lab, job: Job) -> tuple[list[float], int]:
    """The four steps, each on every host at once: ([seconds of each step], bytes to one host)."""
    facts_script = (
        "printf 'docker0 %s\\n' \"$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)\"\n"
        "sed -n 's/^nameserver[[:space:]]*\\([^[:space:]]*\\).*/ns \\1/p' /etc/resolv.conf\n"
    )
    a, out = same_on_hosts(lab, facts_script, "floor (a)")
    facts = {}
    for name, text in out.items():
        lines = [line.split(None, 1) for line in text.splitlines() if line.strip()]
        docker0 = next((v[1] for v in lines if v[0] == "docker0" and len(v) > 1), "") or "172.17.0.1"
        facts[name] = {"docker0": docker0, "nameservers": [v[1] for v in lines if v[0] == "ns" and len(v) > 1]}
    b, size = ship(lab, job)
    key = base64.b64encode(os.urandom(32)).decode()
    c, _ = on_hosts(lab, {h["name"]: consul_script(lab, job, h, facts[h["name"]], key) for h in lab.hosts}, "floor (c)")
    d, _ = on_hosts(lab, {h["name"]: app_script(job, h) for h in lab.hosts}, "floor (d)")
    return [a, b, c, d], size


# ---------------------------------------------------------------------------------------------
# One size


@dataclass
class Figures:
    n: int
    cold: list[float] = field(default_factory=list)
    cold_run: list[float] = field(default_factory=list)  # the report's own seconds
    floor_steps: list[list[float]] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)  # slowest host per phase, per repeat
    # Per repeat: each phase's wall time, the time before the first progress line, after the last phase.
    walls: list[tuple[dict[str, float], float, float]] = field(default_factory=list)
    cold_bytes: list[int] = field(default_factory=list)
    save_bytes: int = 0
    noop: list[float] = field(default_factory=list)
    trips: list[int] = field(default_factory=list)
    minimal: list[float] = field(default_factory=list)
    own_probe: list[float] = field(default_factory=list)

    @property
    def floor_total(self) -> list[float]:
        return [sum(s) for s in self.floor_steps]


PROGRESS_LINE = re.compile(r"^\s*(\S+) ([a-z_-]+): (ok|changed|failed|skipped|planned)\b")


def phase_walls(stamped: list[tuple[float, str]]) -> tuple[dict[str, float], float, float] | None:
    """Each phase's wall time from the times of clusterctl's progress lines (`HOST PHASE: STATUS
    ...`, printed as a phase ends on each host): from the previous phase's last line (for the
    first phase, the run's first line) to this phase's last line, so re-probes, passes, waves and
    the operator's steps before a phase count in it. Also the times of the run's first line and
    of the last phase's last line. None if no line matches."""
    ends: dict[str, float] = {}
    for t, line in stamped:
        m = PROGRESS_LINE.match(line)
        if m:
            ends[m[2]] = t
    if not ends:
        return None
    first = last = stamped[0][0]
    walls = {}
    for phase, end in sorted(ends.items(), key=lambda kv: kv[1]):
        walls[phase] = end - last
        last = end
    return walls, first, last


def med(values) -> float:
    return statistics.median(values) if values else float("nan")


def fresh_lab(name: str, n: int, state: str) -> Lab:
    env = dict(os.environ, CLUSTERCTL_STATE_DIR=state)
    t, proc = clusterctl(env, "lab", "up", "--name", name, "--hosts", str(n))
    check(proc, f"lab up {name}")
    lab = Lab(name, env, Path(proc.stdout.strip().splitlines()[-1]))
    lab.doc = yaml.safe_load(lab.file.read_text())
    # lab up waits for sshd; the engines may still be starting (not timed).
    wait = 'i=0; until docker info >/dev/null 2>&1; do i=$((i+1)); [ "$i" -lt 600 ] || { echo "docker did not start" >&2; exit 1; }; sleep 0.1; done\n'
    same_on_hosts(lab, wait, "waiting for Docker")
    log(f"lab {name}: {n} fresh hosts in {t:.1f}s")
    return lab


def run_size(n: int, args, figures: Figures, work: Path, cleanup_tags: list[str]) -> None:
    name = f"bup{os.getpid()}n{n}"
    for r in range(args.repeat):
        state = tempfile.mkdtemp(prefix="clusterctl-bench-up-")
        try:
            lab = fresh_lab(name, n, state)
            job, images = make_job(lab.file, work / f"n{n}r{r}")
            cleanup_tags += load_locally(images)
            check_empty(lab, "after lab up")

            steps, figures.save_bytes = floor(lab, job)
            figures.floor_steps.append(steps)
            clean_floor(lab, job)
            log(f"n={n} repeat {r + 1}: floor {sum(steps):.2f}s ({', '.join(f'{s:.2f}' for s in steps)})")

            stamped: list[tuple[float, str]] = []
            t, proc = clusterctl(lab.env, "up", "-f", str(job.file), "-o", "json", stamped=stamped)
            if args.log:
                args.log.mkdir(parents=True, exist_ok=True)
                (args.log / f"cold-{n}hosts-{r + 1}.log").write_text("".join(f"{at:7.2f}s  {line}\n" for at, line in stamped))
                (args.log / f"cold-{n}hosts-{r + 1}.json").write_text(proc.stdout)
            check(proc, "cold up")
            report = json.loads(proc.stdout)
            assert report["ok"], report
            figures.cold.append(t)
            figures.cold_run.append(report["seconds"])
            figures.cold_bytes.append(sum(h["bytes_sent"] for h in report["hosts"]))
            slowest = {}
            for h in report["hosts"]:
                for p in h["phases"]:
                    slowest[p["phase"]] = max(slowest.get(p["phase"], 0.0), p["seconds"])
            figures.phases.append(slowest)
            walls = phase_walls(stamped)
            if walls:
                figures.walls.append((walls[0], walls[1], t - walls[2]))
            log(f"n={n} repeat {r + 1}: cold up {t:.2f}s (report {report['seconds']:.2f}s): "
                + ", ".join(f"{k} {v:.2f}" for k, v in slowest.items()))  # fmt: skip
            # Sanity, not timed: the hosts hold the floor's very images, and every replica answers.
            tags = shlex.join(job.tags)
            sane = {h["name"]: f"docker image inspect {tags} >/dev/null && curl -fsS -o /dev/null http://{h['address']}:{APP_PORT}/ && echo ok\n" for h in lab.hosts}
            _, out = on_hosts(lab, sane, "checking the cold up")
            if any(o.strip() != "ok" for o in out.values()):
                raise SystemExit(f"after the cold up: images or app missing: {out}")

            for _ in range(args.noop_runs):
                t, proc = clusterctl(lab.env, "up", "-f", str(job.file), "-o", "json")
                check(proc, "no-op up")
                report = json.loads(proc.stdout)
                assert report["ok"] and not report["changed"], json.dumps(report)[-2000:]
                figures.noop.append(t)
                figures.trips.append(max(h["round_trips"] for h in report["hosts"]))
                figures.minimal.append(same_on_hosts(lab, MINIMAL_PROBE, "minimal probe")[0])
                figures.own_probe.append(same_on_hosts(lab, probe_script(), "clusterctl's probe, bare")[0])
            log(f"n={n} repeat {r + 1}: no-op {med(figures.noop[-args.noop_runs:]):.2f}s, minimal probe "
                f"{med(figures.minimal[-args.noop_runs:]):.2f}s, clusterctl's probe bare {med(figures.own_probe[-args.noop_runs:]):.2f}s")  # fmt: skip
        finally:
            env = dict(os.environ, CLUSTERCTL_STATE_DIR=state)
            _, proc = clusterctl(env, "lab", "down", "--name", name)
            if proc.returncode != 0:
                log(f"lab down {name} failed: {proc.stderr.strip()[-500:]}")
            shutil.rmtree(state, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Output


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "MISS"


def print_tables(rows: list[Figures], args) -> None:
    print(f"\n### bench/up.py: {', '.join(str(f.n) for f in rows)} lab hosts, {args.repeat} repeat(s), "
          f"{args.noop_runs} no-op run(s) per repeat\n")  # fmt: skip
    print("Cold: every repeat on fresh hosts (`lab down` + `lab up`: Docker installed, an empty engine; a fresh "
          "CLUSTERCTL_STATE_DIR); the floor ran first on those hosts and was removed (hosts checked empty) before the cold `up`.\n")  # fmt: skip
    print("| hosts | what | clusterctl | floor | ratio | target | result |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for f in rows:
        cold, fl = med(f.cold), med(f.floor_total)
        noop, mini = med(f.noop), med(f.minimal)
        print(f"| {f.n} | cold `up` of the job | {cold:.2f} s | {fl:.2f} s (bare ssh steps) | {cold / fl:.2f}x | <= {COLD_TARGET:g}x | {verdict(cold / fl, COLD_TARGET)} |")
        print(f"| {f.n} | no-op `up` ({max(f.trips)} round trip(s) per host) | {noop:.2f} s | {mini:.2f} s (minimal probe) | {noop / mini:.2f}x | <= {NOOP_TARGET:g}x | {verdict(noop / mini, NOOP_TARGET)} |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        cg, fg = med(b.cold) / med(a.cold), med(b.floor_total) / med(a.floor_total)
        ng, pg = med(b.noop) / med(a.noop), med(b.minimal) / med(a.minimal)
        print(f"\n{b.n} vs {a.n} hosts: cold `up` {cg:.2f}x, its floor {fg:.2f}x ({'PASS' if cg <= fg else 'MISS'}: "
              f"no worse than the floor's growth); no-op {ng:.2f}x, minimal probe {pg:.2f}x.")  # fmt: skip

    print("\nThe floor, step by step (slowest host of each step; the steps run one after another):\n")
    print("| hosts | " + " | ".join(STEPS) + " | floor | MB to each host (floor) | MB sent by clusterctl (all hosts) |")
    print("|---:|" + "---:|" * (len(STEPS) + 3))
    for f in rows:
        steps = [med([s[i] for s in f.floor_steps]) for i in range(len(STEPS))]
        print(f"| {f.n} | " + " | ".join(f"{s:.2f} s" for s in steps) + f" | {med(f.floor_total):.2f} s | {f.save_bytes / 1e6:.1f} | {med(f.cold_bytes) / 1e6:.1f} |")

    print("\nclusterctl's cold `up`, per phase: the slowest host's `seconds` in the report (`-o json`), and the phase's "
          "wall time (from the times of the progress lines on stderr):\n")  # fmt: skip
    names = [p for p in PHASES if any(p in ph for f in rows for ph in f.phases)]
    names += sorted({p for f in rows for ph in f.phases for p in ph} - set(names))
    print("| hosts | per phase | " + " | ".join(names) + " | phases | the rest | cold `up` |")
    print("|---:|---|" + "---:|" * (len(names) + 3))
    for f in rows:
        per = [med([ph.get(p, 0.0) for ph in f.phases]) for p in names]
        sums = [sum(ph.values()) for ph in f.phases]
        between = med([run - s for run, s in zip(f.cold_run, sums)])
        outside = med([wall - run for wall, run in zip(f.cold, f.cold_run)])
        print(f"| {f.n} | slowest host | " + " | ".join(f"{v:.2f}" for v in per)
              + f" | {med(sums):.2f} | {between + outside:.2f} (between phases {between:.2f}, outside the run {outside:.2f}) | {med(f.cold):.2f} |")  # fmt: skip
        if f.walls:
            per = [med([w.get(p, 0.0) for w, _, _ in f.walls]) for p in names]
            sums = [sum(w.values()) for w, _, _ in f.walls]
            before, after = med([b for _, b, _ in f.walls]), med([a for _, _, a in f.walls])
            print(f"| {f.n} | wall | " + " | ".join(f"{v:.2f}" for v in per)
                  + f" | {med(sums):.2f} | {before + after:.2f} (before the first line {before:.2f}, after the last phase {after:.2f}) | {med(f.cold):.2f} |")  # fmt: skip
    print("\n(between phases: the report's seconds minus the sum of the slowest hosts' phases: re-probes after a "
          "change, one pass or wave waiting for another (the relay's seed before the fetching hosts), the operator's "
          "steps (TLS, ACL bootstrap); outside the run: process start-up, building the images, loading the file, "
          "printing the report, exit. A phase's wall time holds all of that which happens before its end.)")  # fmt: skip

    print("\nThe no-op `up` beside the probes (each `ssh HOST sh -s`, all hosts at once):\n")
    print("| hosts | no-op `up` | round trips per host | minimal probe | clusterctl's probe, bare | no-op / minimal | clusterctl's probe / minimal | no-op minus its probe |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for f in rows:
        noop, mini, own = med(f.noop), med(f.minimal), med(f.own_probe)
        print(f"| {f.n} | {noop:.2f} s | {max(f.trips)} | {mini:.2f} s | {own:.2f} s | {noop / mini:.2f}x | {own / mini:.2f}x | {noop - own:.2f} s |")

    print("\nThe floor leaves out: the engine phase (daemon.json, the engine's restart), the overlay network (swarm init "
          "and joins), the relay (the floor sends every host the images over SSH), Consul's TLS and ACLs (CA, "
          "certificates, bootstrap, tokens) and the raft voter check, the service's Consul registration and its "
          "first passing check, the prune phase, clusterctl's own probe and re-probes (the floor's round trip reads two "
          "facts), the cluster's lock, and the local image builds (the floor saves images already built).")  # fmt: skip


def chart(rows: list[Figures], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    xs = list(range(len(rows)))
    labels = [f"{f.n} hosts" for f in rows]
    width = 0.32
    step_colors = ("#c7d7ea", "#8fb0d6", "#4f81bd", "#284f7f")
    for i, f in enumerate(rows):
        cold, fl = med(f.cold), med(f.floor_total)
        left.bar(i - width / 2, cold, width, color="#d9822b", label="cold up" if i == 0 else None)
        left.text(i - width / 2, cold, f"{cold:.1f} s\n{cold / fl:.1f}x floor", ha="center", va="bottom", fontsize=8)
        bottom = 0.0
        for k, name in enumerate(STEPS):
            v = med([s[k] for s in f.floor_steps])
            left.bar(i + width / 2, v, width, bottom=bottom, color=step_colors[k], label=f"floor {name}" if i == 0 else None)
            bottom += v
        left.text(i + width / 2, fl, f"{fl:.1f} s", ha="center", va="bottom", fontsize=8)
        left.hlines(COLD_TARGET * fl, i - width, i, colors="black", linestyles="dashed",
                    label=f"target: {COLD_TARGET:g}x floor" if i == 0 else None)  # fmt: skip
    left.set_title("cold up of the job vs its floor", fontsize=10)
    left.set_ylim(0, max(med(f.cold) for f in rows) * 1.2)

    w = 0.24
    for i, f in enumerate(rows):
        noop, mini, own = med(f.noop), med(f.minimal), med(f.own_probe)
        for off, v, color, label in ((-w, noop, "#d9822b", "no-op up"), (0, own, "#9bbb59", "clusterctl's probe, bare"), (w, mini, "#4f81bd", "minimal bare probe")):
            right.bar(i + off, v, w, color=color, label=label if i == 0 else None)
            right.text(i + off, v, f"{v:.2f} s" + (f"\n{v / mini:.1f}x probe" if off < 0 else ""), ha="center", va="bottom", fontsize=8)
        right.hlines(NOOP_TARGET * mini, i - 1.5 * w, i - w / 2, colors="black", linestyles="dashed",
                     label=f"target: {NOOP_TARGET:g}x minimal probe" if i == 0 else None)  # fmt: skip
    right.set_title("no-op up vs a minimal bare probe", fontsize=10)
    right.set_ylim(0, max(max(med(f.noop), med(f.own_probe)) for f in rows) * 1.25)
    for ax in (left, right):
        ax.set_xticks(xs, labels)
        ax.set_xlim(-0.7, len(rows) - 0.3)
        ax.set_ylabel("seconds")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    fig.suptitle("bench/up.py: medians, lab hosts on one machine", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 6])
    ap.add_argument("--repeat", type=int, default=3, help="fresh labs per size (cold up and floor once each)")
    ap.add_argument("--noop-runs", type=int, default=3, help="no-op ups (and probes) per repeat")
    ap.add_argument("--png", type=Path, default=ROOT / "bench" / "up.png")
    ap.add_argument("--log", type=Path, help="write each cold run's progress lines (with their times) and report here")
    args = ap.parse_args()
    if shutil.which("consul") is None:
        raise SystemExit("consul is not on PATH (scripts/setup.sh installs it): the filebox needs it")
    # This checkout's code as an install has it, byte-compiled (see scripts/setup.sh).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "clusterctl")], check=True, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="clusterctl-bench-up-job-"))
    cleanup_tags: list[str] = []
    rows: list[Figures] = []
    try:
        for n in args.sizes:
            figures = Figures(n)
            run_size(n, args, figures, work, cleanup_tags)
            rows.append(figures)
    finally:
        if cleanup_tags:
            subprocess.run([DOCKER, "rmi", *sorted(set(cleanup_tags))], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print_tables(rows, args)
    chart(rows, args.png)
    print(f"\nchart: {args.png}")


if __name__ == "__main__":
    main()
