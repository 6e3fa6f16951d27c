"""The filebox phase's relay: the operator's uplink carries a big image once; the other hosts
fetch it from the first one over the cluster network. Planned from facts alone."""

import hashlib
import json
import shlex
from dataclasses import replace

from clusterctl.config.loader import load_text
from clusterctl.images.archive import File, ImageConfig, ImageSpec, Layer
from clusterctl.facts.parser import Image
from clusterctl.phases.base import Context, Inputs
from clusterctl.phases.filebox import RELAY_LATE, FileboxPhase
from clusterctl.shipping.relay import RELAY_CONTAINER, archive_sha256, relay_cleanup_cmds, relay_plan
from clusterctl.shipping.stream import LOAD_SCRIPT, ArchiveStream
from tests.unit.test_consul_plan import facts_for

SMALL = ImageSpec((Layer([File.from_bytes("/bin/x", b"x" * 1000)]),), ImageConfig(labels={"clusterctl.role": "base"}), tag="clusterctl/base:small")
BIG = ImageSpec((Layer([File.from_bytes("/opt/files/bin/big", b"b" * 11_000_000)]),), ImageConfig(labels={"clusterctl.role": "filebox"}), tag="clusterctl/filebox:big")
FILE = """
name: c1
hosts:
  - {name: n1, address: 10.0.0.1}
  - {name: n2, address: 10.0.0.2}
  - {name: n3, address: 10.0.0.3}
"""


def with_images(ip, images=(), containers=()):
    """Facts of a host holding `images` (as the probe reports them: id, tags, layer diff_ids)."""
    f = facts_for(ip, containers)
    held = tuple(Image(i.image_id, (i.tag,), {}, i.diff_ids) for i in images)
    return replace(f, docker=replace(f.docker, images=held))


def relay_container(relay=None, running=True, **labels):
    """The relay container as the probe reports it; by default with the labels `relay` put on it."""
    shown = {"clusterctl.cluster": "c1", "clusterctl.role": "relay", **(relay.labels if relay else {}), **labels}
    return {"ID": "r", "Names": RELAY_CONTAINER, "Image": "b", "State": "running" if running else "exited",
            "Labels": ",".join(f"{k}={v}" for k, v in shown.items())}


def ctx(facts, relay=True, pass_index=0):
    text = FILE if relay else FILE + "filebox: {binaries: [consul], relay: false}\n"
    cluster = load_text(text, "c.yaml")
    inputs = Inputs(gossip_key="k", base_image=SMALL, filebox_container="fb", images=(SMALL, BIG), filebox_image=BIG, filebox_version="v")
    return Context(cluster, facts, inputs, pass_index=pass_index)


def fresh():
    return {n: with_images(a) for n, a in (("n1", "10.0.0.1"), ("n2", "10.0.0.2"), ("n3", "10.0.0.3"))}


def is_load(cmd, source=None):
    """The checked load (shipping/stream.py): its source ("-" for stdin), then one expectation an image."""
    return cmd.argv[:3] == ("sh", "-c", LOAD_SCRIPT) and (source is None or cmd.argv[4] == source)


def plan(c, name):
    return FileboxPhase().plan(c, c.cluster.spec.host(name), c.facts[name])


def test_fresh_hosts_seed_gets_it_over_ssh_and_serves_others_wait():
    c = ctx(fresh())
    relay = relay_plan(c)
    assert relay.seed == "n1" and not relay.running and relay.url == f"http://10.0.0.1:7380/{relay.sha256}.tar"
    seed = plan(c, "n1")
    assert "tee" in seed[0].render() and seed[0].stdin.images == (SMALL, BIG) == relay.carried
    assert seed[1].argv[:2] == ("mv", "-f")  # the archive is served only once whole and loaded
    run = seed[2].argv
    assert run[:4] == ("docker", "run", "-d", "--name") and "10.0.0.1:7380" in run
    assert run[run.index("--entrypoint") + 2] == SMALL.image_id  # run by ID, never by tag
    # Served only once it answers with the operator's bytes (a taken port fails it).
    assert seed[3].argv[-3:] == ("10.0.0.1:7380", relay.url, relay.sha256) and seed[3].check
    other = plan(c, "n2")
    assert is_load(other[0], "-") and other[0].stdin.images == (SMALL,)  # small: over SSH
    fetch = other[1]
    assert is_load(fetch) and relay.url in fetch.argv[4] and relay.sha256 in fetch.argv[4] and "sha256sum -c" in fetch.argv[4]
    assert not fetch.check  # a failed fetch leaves the images missing: the next pass loads them over SSH
    assert fetch.argv[5:] == (f"{BIG.tag}={BIG.image_id} {json.dumps(list(BIG.diff_ids), separators=(',', ':'))}",)
    ph = FileboxPhase()
    assert [ph.wave(c, c.cluster.spec.host(n), c.facts[n]) for n in ("n1", "n2", "n3")] == [0, 1, 1]


def test_the_archive_sha256_is_that_of_the_bytes_the_seed_is_sent():
    relay = relay_plan(ctx(fresh()))
    sent = bytearray()
    ArchiveStream(relay.carried, relay.omit).write_to(sent.extend)
    assert hashlib.sha256(sent).hexdigest() == relay.sha256 == archive_sha256(relay.carried, relay.omit)


def serving(relay, images=(SMALL, BIG), **labels):
    box = {"ID": "f", "Names": "fb", "Image": "b", "State": "created", "Labels": "clusterctl.cluster=c1,clusterctl.role=filebox"}
    return with_images("10.0.0.1", images, [relay_container(relay, **labels), box])


def test_fetch_pass_trusts_only_a_relay_rebuilt_from_the_operators_own_images():
    started = relay_plan(ctx(fresh()))
    c = ctx({"n1": serving(started), "n2": with_images("10.0.0.2", (SMALL,)), "n3": with_images("10.0.0.3")}, pass_index=1)
    relay = relay_plan(c)
    assert relay.running and relay.sha256 == started.sha256 and relay.url == started.url
    assert plan(c, "n1") == []  # still needed
    assert [x.description.split()[0] for x in plan(c, "n2")] == ["fetch", "create"]
    assert FileboxPhase().wave(c, c.cluster.spec.host("n2"), c.facts["n2"]) == 0
    # Labels that name an image or a layer the operator does not have, or another archive:
    # no relay; the others load over SSH, the relay is removed.
    for bad in ({"clusterctl.relay.images": "0123456789abcdef"}, {"clusterctl.relay.omit": "fedcba9876543210"},
                {"clusterctl.relay.archive": "0" * 64 + ".tar"}, {"clusterctl.cluster": "other"}):
        c = ctx({"n1": serving(started, **bad), "n2": with_images("10.0.0.2", (SMALL,)), "n3": with_images("10.0.0.3")}, pass_index=1)
        assert relay_plan(c) is None, bad
        assert is_load(plan(c, "n2")[0], "-")
        assert plan(c, "n1")[0].render() == "docker rm -f clusterctl-relay || true"


def test_a_relay_that_did_not_start_means_ssh_in_the_fetch_pass():
    c = ctx({"n1": with_images("10.0.0.1", (SMALL, BIG)), "n2": with_images("10.0.0.2", (SMALL,)), "n3": with_images("10.0.0.3")}, pass_index=1)
    assert relay_plan(c) is None
    cmds = plan(c, "n3")
    assert is_load(cmds[0], "-") and cmds[0].stdin.images == (SMALL, BIG)


def test_last_pass_loads_over_ssh_what_a_fetch_did_not_bring_and_stops_the_relay():
    started = relay_plan(ctx(fresh()))
    c = ctx({"n1": serving(started), "n2": with_images("10.0.0.2", (SMALL,)), "n3": with_images("10.0.0.3", (SMALL, BIG))}, pass_index=2)
    assert relay_plan(c) is None
    assert is_load(plan(c, "n2")[0], "-") and plan(c, "n2")[0].stdin.images == (BIG,)
    assert [x.render() for x in plan(c, "n1")] == ["docker rm -f clusterctl-relay || true", "rm -rf /var/lib/clusterctl/relay"]


def test_a_relay_from_an_earlier_run_is_removed_never_used():
    earlier = relay_plan(ctx(fresh()))
    c = ctx({"n1": serving(earlier, images=()), "n2": with_images("10.0.0.2"), "n3": with_images("10.0.0.3")})
    relay = relay_plan(c)
    assert not relay.running and relay.seed == "n1"
    assert [x.render() for x in plan(c, "n1")][:2] == ["docker rm -f clusterctl-relay || true", "rm -rf /var/lib/clusterctl/relay"]
    assert "tee" in plan(c, "n1")[2].render()


def test_one_host_lacking_or_relay_off_means_plain_ssh():
    have = (SMALL, BIG)
    c = ctx({"n1": with_images("10.0.0.1", have), "n2": with_images("10.0.0.2", have), "n3": with_images("10.0.0.3")})
    assert relay_plan(c) is None
    cmds = plan(c, "n3")
    assert is_load(cmds[0], "-") and cmds[0].stdin.images == (SMALL, BIG)
    assert relay_plan(ctx(fresh(), relay=False)) is None


def test_finish_removes_a_relay_the_run_started_and_left():
    c = ctx(fresh())
    seed_cmds = plan(c, "n1")
    ph = FileboxPhase()
    # Removed, and once more a second later: a `docker run` ended mid-way may land late.
    again = shlex.join(["sh", "-c", RELAY_LATE, "sh", "clusterctl-relay"])
    cleanup = ["docker rm -f clusterctl-relay || true", "rm -rf /var/lib/clusterctl/relay", again]
    assert {h: [x.render() for x in cmds] for h, cmds in ph.finish(c, {"n1": seed_cmds, "n2": plan(c, "n2")}).items()} == {"n1": cleanup}
    assert ph.finish(c, {"n1": seed_cmds + relay_cleanup_cmds()}) == {}


def _auto(facts, direct=("n1", "n2", "n3"), relay=None):
    text = FILE + (f"filebox: {{binaries: [consul], relay: {relay}}}\n" if relay is not None else "")
    inputs = Inputs(gossip_key="k", base_image=SMALL, filebox_container="fb", images=(SMALL, BIG), filebox_image=BIG, filebox_version="v", direct_ssh=frozenset(direct))
    return Context(load_text(text, "c.yaml"), facts, inputs)


def test_auto_sends_each_host_its_copy_when_the_operator_sits_on_their_own_network():
    # facts_for: the SSH client (the operator) is 10.0.0.100, on each host's 10.0.0.0/24.
    c = _auto(fresh())
    assert load_text(FILE, "c.yaml").spec.filebox.relay == "auto" and relay_plan(c) is None
    for name in ("n1", "n2", "n3"):
        cmds = plan(c, name)
        assert is_load(cmds[0], "-") and cmds[0].stdin.images == (SMALL, BIG), name  # over SSH, at once
    assert {FileboxPhase().wave(c, c.cluster.spec.host(n), c.facts[n]) for n in ("n1", "n2", "n3")} == {0}


def test_auto_relays_when_a_host_is_behind_a_bastion_or_sees_the_operator_from_afar():
    assert relay_plan(_auto(fresh(), direct=("n1", "n3"))).seed == "n1"  # n2: through a bastion
    far = fresh() | {"n3": replace(with_images("10.0.0.3"), ssh_client_address="198.51.100.7")}
    assert relay_plan(_auto(far)).seed == "n1"
    assert relay_plan(_auto(fresh(), relay="true")).seed == "n1"  # true: always
    assert relay_plan(_auto(fresh(), relay="false")) is None


def test_relay_takes_true_false_or_auto_only():
    import pytest

    from clusterctl.config.loader import ConfigError

    with pytest.raises(ConfigError, match="relay"):
        load_text(FILE + "filebox: {binaries: [consul], relay: sometimes}\n", "c.yaml")


APP = ImageSpec(SMALL.layers + (Layer([File.from_bytes("/app/index.html", b"hi")]),), ImageConfig(labels={"clusterctl.role": "app"}), tag="web:a1")


def test_the_app_images_of_the_replicas_placed_on_a_host_ride_in_its_filebox_load(tmp_path):
    # One `docker load` where the filebox goes over SSH: the services phase then has none to run.
    (tmp_path / "web").mkdir()
    path = str(tmp_path / "c.yaml")
    box = FILE + "filebox: {binaries: [consul], relay: false}\nservices:\n"
    cluster = load_text(box + "  - {name: web, app: web, replicas: 2, port: 8080}\n", path)
    inputs = Inputs(gossip_key="k", base_image=SMALL, filebox_container="fb", images=(SMALL, BIG), filebox_image=BIG,
                    filebox_version="v", apps={"web": APP})  # fmt: skip
    facts = fresh()
    facts["n2"] = with_images("10.0.0.2", (APP,))
    c = Context(cluster, facts, inputs)
    loads = {n: [cmd for cmd in plan(c, n) if is_load(cmd)] for n in ("n1", "n2", "n3")}
    # Placement puts web on n1 and n2 (fixed port: one a host, in the file's order).
    assert "web:a1=" in " ".join(loads["n1"][0].argv) and loads["n1"][0].description.startswith("load 3 image(s)")
    assert "web:a1=" not in " ".join(loads["n2"][0].argv)  # it holds the app already
    assert "web:a1=" not in " ".join(loads["n3"][0].argv) and loads["n3"][0].description.startswith("load 2 image(s)")
    # A placement the services phase refuses ships no app here (that phase says why).
    crowded = Context(load_text(box + "  - {name: web, app: web, replicas: 2, port: 8080, resources: {cpu: 64}}\n", path), fresh(), inputs)
    assert all("web:a1=" not in " ".join(cmd.argv) for n in ("n1", "n2", "n3") for cmd in plan(crowded, n))
