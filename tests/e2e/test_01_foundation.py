"""End to end on 3 bare lab hosts over real SSH: install Docker, converge, fail well.

Tests run in file order and share the session's lab; each leaves the lab as it found it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import paramiko
import yaml

from clusterctl.lab import lab as lab_mod
from clusterctl.lock import cluster_lock
from tests.e2e.conftest import MIXED_STACKS, on_all, watching_processes

pytestmark = __import__("pytest").mark.e2e


def _statuses(report: dict) -> dict[str, dict[str, str]]:
    return {h["name"]: {p["phase"]: p["status"] for p in h["phases"]} for h in report["hosts"]}


def test_plan_sends_nothing_that_changes(cli, lab):
    code, report = cli.json("plan", "-f", str(lab.cluster_file))
    assert code == 0, report
    assert report["dry_run"] is True
    for host in report["hosts"]:
        assert host["round_trips"] == 1  # the read-only probe, nothing else
        docker = next(p for p in host["phases"] if p["phase"] == "docker")
        assert docker["status"] == "planned"
        assert any("apt-get install" in c for c in docker["commands"])
    # Still bare afterwards.
    proc = cli("exec", "-f", str(lab.cluster_file), "--all", "--", "sh", "-c", "command -v docker || echo absent")
    assert proc.returncode == 0 and proc.stdout.count("absent") == 3, proc.stdout


def test_up_installs_and_starts_docker_on_bare_hosts(cli, lab, state_dir):
    """Each host's own archive: Debian 12's docker.io (client inside), Debian 13's and sid's
    docker.io plus docker-cli (only Recommended there). daemon.json is written before the
    engine's first start, so the engine phase has nothing left to change (no restart); the
    filebox's archive crosses while apt installs. The
    swarm is formed in this run: a poll of every host's process list all along never shows a
    join token, nor the gossip key or a TLS private key. With -v, each remote command is a line
    as it starts and another with its time as it ends, host and phase first."""
    with watching_processes(lab) as seen:
        proc = cli("up", "-f", str(lab.cluster_file), "-v", "--output", "json")
    code, report = proc.returncode, json.loads(proc.stdout)
    assert code == 0, report
    lines = proc.stderr.splitlines()
    for host in ("node1", "node2", "node3"):
        started = [line for line in lines if line.startswith(f"  {host} docker$ ")]
        ended = [line for line in lines if line.startswith(f"  {host} docker: done in ")]
        assert started and len(started) == len(ended), proc.stderr[-3000:]
    for host in report["hosts"]:
        (docker,) = [p for p in host["phases"] if p["phase"] == "docker"]
        assert any("apt-get" in c for c in docker["commands"]), docker["commands"]
    key = (state_dir / "clusters" / f"lab-{lab.name}" / "gossip.key").read_text().strip()
    # The ACL tokens too: the management token and each agent's (the probe reads raft with it).
    tokens = [p.read_text().strip() for p in (state_dir / "clusters" / f"lab-{lab.name}" / "acl").glob("*.token")]
    assert len(seen) > 30 and any("consul agent" in s for s in seen) and len(tokens) >= 4, tokens and len(tokens)
    assert not any("SWMTKN" in s or key in s or "PRIVATE KEY" in s or any(t in s for t in tokens) for s in seen)
    assert all(s["docker"] == "changed" and s["engine"] == "ok" for s in _statuses(report).values())
    # The filebox's archive crossed while apt installed Docker; the filebox phase loaded that file.
    for host in report["hosts"]:
        steps = {p["phase"]: p["message"] for p in host["phases"]}
        assert "for the filebox phase meanwhile" in steps["docker"], steps["docker"]
        assert "received ahead into /var/lib/clusterctl/spool/" in steps["filebox"], steps["filebox"]
    fmt = "{{.ServerVersion}} {{json .DriverStatus}}"
    for host, (version, store) in MIXED_STACKS.items():
        proc = cli("exec", "-f", str(lab.cluster_file), "--host", host, "--", "sh", "-c", f"command -v docker && docker info --format '{fmt}'")
        assert proc.returncode == 0, proc.stderr
        path, info = proc.stdout.splitlines()
        assert path == "/usr/bin/docker" and info.startswith(version), (host, proc.stdout)
        assert ("io.containerd.snapshotter.v1" in info) == (store == "containerd"), (host, info)


def test_second_up_changes_nothing_in_one_round_trip(cli, lab):
    code, report = cli.json("up", "-f", str(lab.cluster_file))
    assert code == 0 and report["changed"] is False
    for host in report["hosts"]:
        assert host["round_trips"] == 1
        assert all(p["changed"] is False for p in host["phases"])


def _comparable(facts) -> dict:
    """Facts as data, without what differs from one read to the next (the engine's clock, the
    order of its remote managers) or between the two ways (the CLI's own ClientInfo)."""
    import dataclasses

    d = dataclasses.asdict(facts)
    info = d["docker"]["info"]
    for key in ("SystemTime", "ClientInfo", "NFd", "NGoroutines", "NEventsListener"):  # the engine's clock and counters
        info.pop(key, None)
    swarm = info.get("Swarm") or {}
    swarm["RemoteManagers"] = sorted(swarm.get("RemoteManagers") or [], key=lambda m: m.get("NodeID", ""))
    (d["network"]["blocks"].get("wireguard") or {}).pop("now", None)  # the host's clock
    return d


def _differences(a, b, path: str = "") -> list[str]:
    """Where two nested values differ, as paths (a failure names them)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:120]!r} != {str(b)[:120]!r}"]


def test_the_probe_reads_the_same_facts_from_dockers_api_as_from_its_cli(cli, lab):
    """Docker's API on its socket by curl where the CLI would reach the same engine; by the CLI
    where DOCKER_HOST is set (here to the same socket): on every host of the converged cluster
    (swarm managers, Consul, replicas) the very same facts."""
    from clusterctl.facts.parser import parse_probe_output, probe_script

    by_api = on_all(cli, lab.cluster_file, probe_script())
    by_cli = on_all(cli, lab.cluster_file, "DOCKER_HOST=unix:///var/run/docker.sock; export DOCKER_HOST\n" + probe_script())
    assert sorted(by_api) == sorted(by_cli) == ["node1", "node2", "node3"]
    for host in by_api:
        assert '"containers_api":' in by_api[host] and '"containers_api":' not in by_cli[host]
        api, via_cli = parse_probe_output(by_api[host]), parse_probe_output(by_cli[host])
        assert api.docker.running and api.docker.containers and api.docker.images and api.network.swarm_nodes
        assert not _differences(_comparable(api), _comparable(via_cli)), (host, _differences(_comparable(api), _comparable(via_cli)))


def test_garbage_nameserver_lines_are_skipped_and_named_without_a_traceback(cli, lab):
    """A resolv.conf line that is not an address (once a traceback for the whole run): the
    others converge, this host too, and its probe step names the lines it skipped."""
    container = lab.container("node2")
    saved = lab.docker("exec", container, "cat", "/etc/resolv.conf").stdout
    garbage = 'nameserver not-an-address\nnameserver 10.0.0.300\nnameserver "q\\\n'
    subprocess.run([lab_mod.docker_cli(), "exec", "-i", container, "sh", "-c", "cat >> /etc/resolv.conf"], input=garbage, text=True, check=True)
    try:
        proc = cli("up", "-f", str(lab.cluster_file), "--output", "json")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        report = json.loads(proc.stdout)
        probe = {h["name"]: next(p for p in h["phases"] if p["phase"] == "probe")["message"] for h in report["hosts"]}
        assert "skipped nameserver 'not-an-address', '10.0.0.300', '\"q\\\\'" in probe["node2"], probe
        assert "skipped" not in probe["node1"] and report["changed"] is False
    finally:
        subprocess.run([lab_mod.docker_cli(), "exec", "-i", container, "sh", "-c", "cat > /etc/resolv.conf"], input=saved, text=True, check=True)


def test_exec_single_host_passes_output_and_exit_code(cli, lab):
    proc = cli("exec", "-f", str(lab.cluster_file), "--host", "node2", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")
    # Arguments stay arguments: no shell sees them unquoted.
    proc = cli("exec", "-f", str(lab.cluster_file), "--host", "node1", "--", "echo", "$(hostname); true")
    assert proc.stdout == "$(hostname); true\n"


def test_stopped_host_others_converge_and_it_is_named(cli, lab):
    lab.docker("stop", "-t", "1", lab.container("node2"))
    try:
        code, report = cli.json("up", "-f", str(lab.cluster_file))
        assert code == 1
        assert report["failed_hosts"] == ["node2"]
        st = _statuses(report)
        assert st["node2"]["connect"] == "failed" and "docker" not in st["node2"]
        assert st["node1"]["docker"] == "ok" and st["node3"]["docker"] == "ok"
        proc = cli("up", "-f", str(lab.cluster_file))
        assert proc.returncode == 1 and "node2" in proc.stderr and "cannot reach" in proc.stderr
    finally:
        lab.docker("start", lab.container("node2"))
    # Back: its Docker comes up at boot; the next up converges everything.
    deadline = time.monotonic() + 60
    while True:
        code, report = cli.json("up", "-f", str(lab.cluster_file))
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert code == 0, report


def _variant(lab, tmp_path, **ssh_changes) -> str:
    doc = yaml.safe_load(lab.cluster_file.read_text())
    doc["ssh"].update(ssh_changes)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_changed_host_key_is_refused(cli, lab, tmp_path):
    known = tmp_path / "known_hosts"
    lines = (lab.cluster_file.parent / "known_hosts").read_text().splitlines()
    node3 = yaml.safe_load(lab.cluster_file.read_text())["hosts"][2]["address"]
    forged = paramiko.Ed25519Key.from_private_key_file(str(lab.cluster_file.parent / "id_ed25519"))
    # node3's recorded key is replaced by a different ed25519 key: exactly what a MITM looks like.
    lines = [ln for ln in lines if not ln.startswith(node3 + " ")] + [f"{node3} ssh-ed25519 {forged.get_base64()}"]
    known.write_text("\n".join(lines) + "\n")
    f = _variant(lab, tmp_path, known_hosts=str(known))
    code, report = cli.json("up", "-f", f, "--accept-new-host-keys")
    assert code == 1 and report["failed_hosts"] == ["node3"]
    msg = next(p for p in report["hosts"][2]["phases"] if p["phase"] == "connect")["message"]
    assert "CHANGED" in msg and str(known) in msg


def test_unknown_host_keys_need_the_flag(cli, lab, tmp_path):
    known = tmp_path / "fresh_known_hosts"
    f = _variant(lab, tmp_path, known_hosts=str(known))
    code, report = cli.json("up", "-f", f)
    assert code == 1 and sorted(report["failed_hosts"]) == ["node1", "node2", "node3"]
    assert "--accept-new-host-keys" in report["hosts"][0]["phases"][0]["message"]
    code, report = cli.json("up", "-f", f, "--accept-new-host-keys")
    assert code == 0, report
    assert len(known.read_text().splitlines()) == 3
    # Recorded: no flag needed any more.
    assert cli.json("up", "-f", f)[0] == 0


def test_bad_hosts_are_one_clear_line(cli, lab, tmp_path):
    doc = yaml.safe_load(lab.cluster_file.read_text())
    subnet_base = doc["hosts"][0]["address"].rsplit(".", 1)[0]
    doc["ssh"]["connect_timeout"] = 2
    doc["hosts"][1]["user"] = "nobody"
    doc["hosts"].append({"name": "ghost", "address": f"{subnet_base}.250"})
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(doc))
    proc = cli("up", "-f", str(f), "--accept-new-host-keys")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "failed on 2 of 4 hosts" in last and "node2" in last and "ghost" in last
    assert "authentication failed for nobody@" in last and "cannot reach" in last


def test_missing_identity_file_touches_no_host(cli, lab, tmp_path):
    f = _variant(lab, tmp_path, identity_file=str(tmp_path / "nope"))
    proc = cli("up", "-f", f)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "ssh.identity_file: identity file not found" in proc.stderr


def test_second_up_at_once_waits_then_names_the_holder(cli, lab, state_dir):
    # Hold the cluster's lock the way a running `up` does, from this process.
    held, release = threading.Event(), threading.Event()

    def holder():
        with cluster_lock(state_dir / "clusters" / f"lab-{lab.name}", f"lab-{lab.name}", "clusterctl up (test holder)"):
            held.set()
            release.wait(60)

    t = threading.Thread(target=holder)
    t.start()
    try:
        held.wait(10)
        t0 = time.monotonic()
        proc = cli("up", "-f", str(lab.cluster_file), "--lock-wait", "1")
        waited = time.monotonic() - t0
    finally:
        release.set()
        t.join()
    assert proc.returncode == 3
    assert "is busy" in proc.stderr and "clusterctl up (test holder)" in proc.stderr
    assert waited >= 1
    assert cli("up", "-f", str(lab.cluster_file)).returncode == 0


def test_lab_ls_lists_the_lab(cli, lab):
    proc = cli("lab", "ls")
    assert proc.returncode == 0
    row = next(line for line in proc.stdout.splitlines() if line.startswith(lab.name))
    assert "3/3 running" in row and str(lab.cluster_file) in row


def test_a_stream_reaches_the_host_whole_over_aes_gcm(lab):
    """clusterctl's own transport to a lab host (OpenSSH's sshd): AES-GCM is negotiated, and a
    stream written in small and large pieces (as an image archive is) arrives byte for byte."""
    import hashlib
    import os
    from pathlib import Path

    from clusterctl.config.loader import load
    from clusterctl.transport.ssh import KnownHosts, open_session, resolve_endpoints

    cluster = load(lab.cluster_file)
    session = open_session(resolve_endpoints(cluster)["node1"], KnownHosts(Path(cluster.spec.ssh.known_hosts), accept_new=False))
    pieces = [os.urandom(n) for n in (512, 3 << 20, 0, 512, 700, 1 << 20, 512)] * 3

    class Stream:
        def write_to(self, write):  # noqa: ANN001
            for p in pieces:
                write(p)

    try:
        assert session.connection.client.get_transport().remote_cipher == "aes128-gcm@openssh.com"
        result = session.run("sha256sum", stdin=Stream(), timeout=60)
    finally:
        session.close()
    assert result.ok, result.stderr
    assert result.stdout.split()[0] == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert session.bytes_sent == sum(map(len, pieces))
