"""The filebox's archive received while the engine restarts (shipping/stream.py RECEIVE_WHILE):
planned by the engine phase from the filebox phase's own load, kept only when whole, loaded
from the file by the filebox phase, leftovers removed. Planned from facts; the receiving
script runs in a local shell."""

import io
import json
import subprocess
from dataclasses import replace

from clusterctl.config.loader import load_text
from clusterctl.facts.parser import parse_probe_output
from clusterctl.images.archive import archive_size, write_archive
from clusterctl.phases.base import Context, Inputs
from clusterctl.phases.engine import EnginePhase
from clusterctl.phases.filebox import FileboxPhase
from clusterctl.shipping.stream import RECEIVE_WHILE, SPOOL_DIR, ArchiveStream, receiving_meanwhile
from tests.unit.test_consul_plan import FIXTURE
from tests.unit.test_relay_plan import BIG, SMALL, with_images

FILE = """
name: c1
hosts:
  - {name: n1, address: 10.0.0.1}
  - {name: n2, address: 10.0.0.2}
filebox: {binaries: [consul], relay: RELAY}
"""


def ctx(facts, relay="false"):
    cluster = load_text(FILE.replace("RELAY", relay), "c.yaml")
    inputs = Inputs(gossip_key="k", base_image=SMALL, filebox_container="fb", images=(SMALL, BIG), filebox_image=BIG, filebox_version="v")
    return Context(cluster, facts, inputs)


def fresh(ip, spooled=(), daemon_json=""):
    f = with_images(ip)
    return replace(f, spooled=frozenset(spooled), daemon_json=daemon_json)


def test_the_archive_size_is_known_without_reading_a_layer_and_is_exact():
    for images, omit in (((SMALL, BIG), ()), ((SMALL,), ()), ((SMALL, BIG), (BIG.diff_ids[0],))):
        out = io.BytesIO()
        write_archive(list(images), out, omit)
        assert archive_size(images, omit) == len(out.getvalue())


def test_the_engine_restart_receives_the_filebox_load_and_the_filebox_phase_reads_it_back():
    facts = {"n1": fresh("10.0.0.1"), "n2": fresh("10.0.0.2")}
    c = ctx(facts)
    host = c.cluster.spec.hosts[0]
    engine = EnginePhase().plan(c, host, facts["n1"])
    (receive,) = [cmd for cmd in engine if cmd.stdin is not None]
    assert isinstance(receive.stdin, ArchiveStream) and [i.tag for i in receive.stdin.images] == [SMALL.tag, BIG.tag]
    assert receive.argv[:3] == ("sh", "-c", RECEIVE_WHILE) and receive.argv[-3:] == ("service", "docker", "restart")
    name = receive.stdin.spool_name
    assert receive.argv[4:7] == (SPOOL_DIR, name, str(receive.stdin.size()))
    assert "# stdin: image archive of" in receive.display() and "for the filebox phase meanwhile" in receive.description
    # Before: the filebox phase streams; once the probe shows the file: it loads the file.
    before = FileboxPhase().plan(c, host, facts["n1"])
    assert before[0].stdin is not None
    after_facts = {**facts, "n1": fresh("10.0.0.1", spooled=[name])}
    after = FileboxPhase().plan(ctx(after_facts), host, after_facts["n1"])
    assert after[0].stdin is None and f"{SPOOL_DIR}/{name}" in after[0].argv[4] and "received ahead" in after[0].description
    assert not any(cmd.argv[0] == "rm" for cmd in after)


def test_leftovers_are_removed_and_a_wrong_one_is_never_loaded():
    other = "0123456789abcdef.tar"
    facts = {"n1": fresh("10.0.0.1", spooled=[other, "fedcba9876543210.tar.part"]), "n2": fresh("10.0.0.2")}
    c = ctx(facts)
    cmds = FileboxPhase().plan(c, c.cluster.spec.hosts[0], facts["n1"])
    assert cmds[0].argv == ("rm", "-f", "--", f"{SPOOL_DIR}/{other}", f"{SPOOL_DIR}/fedcba9876543210.tar.part")
    assert cmds[1].stdin is not None  # streamed: the file there holds other images


def test_nothing_is_received_ahead_through_the_relay_without_a_restart_or_when_nothing_is_missing():
    facts = {"n1": fresh("10.0.0.1"), "n2": fresh("10.0.0.2")}
    relayed = ctx(facts, relay="true")
    assert all(cmd.stdin is None for cmd in EnginePhase().plan(relayed, relayed.cluster.spec.hosts[0], facts["n1"]))
    done = json.dumps({"dns": ["172.17.0.1", "192.0.2.53"]})
    as_wanted = {"n1": fresh("10.0.0.1", daemon_json=done), "n2": fresh("10.0.0.2")}
    assert EnginePhase().plan(ctx(as_wanted), ctx(as_wanted).cluster.spec.hosts[0], as_wanted["n1"]) == []
    holding = {"n1": replace(with_images("10.0.0.1", (SMALL, BIG)), daemon_json=""), "n2": fresh("10.0.0.2")}
    c = ctx(holding)
    assert all(cmd.stdin is None for cmd in EnginePhase().plan(c, c.cluster.spec.hosts[0], holding["n1"]))


def _receive(tmp_path, data: bytes, size: int, then: str = "exit 7", spool=None):
    spool = spool or tmp_path / "spool"
    proc = subprocess.run(["sh", "-c", RECEIVE_WHILE, "sh", str(spool), "aa.tar", str(size), "sh", "-c", then],
                          input=data, capture_output=True, timeout=30)  # fmt: skip
    return proc, spool


def test_a_whole_archive_gets_its_name_and_the_commands_status_is_kept(tmp_path):
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "old.tar.part").write_bytes(b"x")
    proc, spool = _receive(tmp_path, b"a" * 300_000, 300_000)
    assert proc.returncode == 7
    assert sorted(p.name for p in spool.iterdir()) == ["aa.tar"] and (spool / "aa.tar").read_bytes() == b"a" * 300_000


def test_a_cut_archive_is_not_kept(tmp_path):
    proc, spool = _receive(tmp_path, b"a" * 1000, 5000, then="true")
    assert proc.returncode == 0 and list(spool.iterdir()) == []


def test_where_the_file_cannot_be_written_stdin_is_still_read_to_its_end(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    # What the script leaves unread of its stdin, a later `wc -c` would count: nothing.
    outer = 'sh -c "$1" sh "$2" aa.tar 2000000 true; echo "rc=$? left=$(wc -c)"'
    proc = subprocess.run(["sh", "-c", outer, "sh", RECEIVE_WHILE, str(blocker / "spool")], input=b"a" * 2_000_000, capture_output=True, timeout=30)
    assert proc.stdout.decode().split() == ["rc=0", "left=0"], proc.stderr


def test_receiving_meanwhile_takes_a_streamed_load_only():
    import pytest

    from clusterctl.commands.base import Cmd

    with pytest.raises(ValueError):
        receiving_meanwhile(Cmd(("true",)), Cmd(("docker", "load"), stdin=b"x"))


def test_the_probe_names_only_spool_files():
    data = json.loads(FIXTURE.read_text())
    data["spooled"] = ["0123456789abcdef.tar", "0123456789abcdef.tar.part", "../etc.tar", "x.tar", 5]
    assert parse_probe_output(json.dumps(data)).spooled == {"0123456789abcdef.tar", "0123456789abcdef.tar.part"}


def test_a_bare_host_receives_the_archive_while_docker_installs_a_stopped_one_while_it_starts():
    from clusterctl.phases.docker import DockerPhase
    from tests.unit.test_docker_phase import facts as docker_facts

    for kw, long_step in (({"installed": False, "docker0": False}, "install docker.io"), ({"running": False}, "start docker")):
        f = docker_facts(init="other", **kw)
        c = ctx({"n1": f, "n2": fresh("10.0.0.2")})
        cmds = DockerPhase().plan(c, c.cluster.spec.hosts[0], f)
        (receive,) = [cmd for cmd in cmds if cmd.stdin is not None]
        assert receive.argv[:3] == ("sh", "-c", RECEIVE_WHILE) and receive.description.startswith(long_step), receive.description
        assert cmds[-1].description == "wait until `docker info` answers"
