"""The filebox phase's relay: the operator's uplink carries a big image once; the other hosts
fetch it from the first one over the cluster network. Planned from facts alone."""

from dataclasses import replace

from clusterctl.config.loader import load_text
from clusterctl.images.archive import File, ImageConfig, ImageSpec, Layer
from clusterctl.facts.parser import Image
from clusterctl.phases.base import Context, Inputs
from clusterctl.phases.filebox import FileboxPhase
from clusterctl.shipping.relay import RELAY_CONTAINER, relay_plan
from clusterctl.shipping.stream import LOAD_SCRIPT
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


def relay_container(archive="a.tar", running=True):
    ids = BIG.image_id.split(":")[1][:12]
    return {"ID": "r", "Names": RELAY_CONTAINER, "Image": "b", "State": "running" if running else "exited",
            "Labels": f"clusterctl.cluster=c1,clusterctl.role=relay,clusterctl.relay.archive={archive},clusterctl.relay.images={ids}"}


def ctx(facts, relay=True):
    text = FILE if relay else FILE + "filebox: {binaries: [consul], relay: false}\n"
    cluster = load_text(text, "c.yaml")
    inputs = Inputs(gossip_key="k", base_image=SMALL.tag, filebox_container="fb", images=(SMALL, BIG), filebox_tag=BIG.tag, filebox_version="v")
    return Context(cluster, facts, inputs)


def is_load(cmd, source=None):
    """The checked load (shipping/stream.py): its source ("-" for stdin), then one expectation an image."""
    return cmd.argv[:3] == ("sh", "-c", LOAD_SCRIPT) and (source is None or cmd.argv[4] == source)


def plan(c, name):
    return FileboxPhase().plan(c, c.cluster.spec.host(name), c.facts[name])


def test_fresh_hosts_seed_gets_it_over_ssh_and_serves_others_wait():
    c = ctx({n: with_images(a) for n, a in (("n1", "10.0.0.1"), ("n2", "10.0.0.2"), ("n3", "10.0.0.3"))})
    relay = relay_plan(c)
    assert relay.seed == "n1" and not relay.running and relay.url.startswith("http://10.0.0.1:7380/")
    seed = plan(c, "n1")
    assert "tee" in seed[0].render() and seed[0].stdin.images == (SMALL, BIG)
    assert seed[1].argv[:2] == ("mv", "-f")  # the archive is served only once whole and loaded
    assert seed[2].argv[:4] == ("docker", "run", "-d", "--name") and "10.0.0.1:7380" in seed[2].argv
    other = plan(c, "n2")
    assert is_load(other[0], "-") and other[0].stdin.images == (SMALL,)  # small: over SSH
    assert is_load(other[1]) and relay.url in other[1].argv[4] and "wget" in other[1].argv[4]
    ph = FileboxPhase()
    assert [ph.wave(c, c.cluster.spec.host(n), c.facts[n]) for n in ("n1", "n2", "n3")] == [0, 1, 1]


def test_running_relay_serves_the_rest_then_is_removed():
    box = {"ID": "f", "Names": "fb", "Image": "b", "State": "created", "Labels": "clusterctl.cluster=c1,clusterctl.role=filebox"}
    serving = with_images("10.0.0.1", (SMALL, BIG), [relay_container(), box])
    c = ctx({"n1": serving, "n2": with_images("10.0.0.2", (SMALL,)), "n3": with_images("10.0.0.3")})
    relay = relay_plan(c)
    assert relay.running and relay.url == "http://10.0.0.1:7380/a.tar"
    assert plan(c, "n1") == []  # still needed
    assert [x.description.split()[0] for x in plan(c, "n2")] == ["fetch", "create"]
    ph = FileboxPhase()
    assert ph.wave(c, c.cluster.spec.host("n2"), c.facts["n2"]) == 0
    done = {n: with_images(a, (SMALL, BIG)) for n, a in (("n2", "10.0.0.2"), ("n3", "10.0.0.3"))}
    c = ctx({"n1": serving, **done})
    assert [x.render() for x in plan(c, "n1")] == ["docker rm -f clusterctl-relay || true", "rm -rf /var/lib/clusterctl/relay"]


def test_one_host_lacking_or_relay_off_means_plain_ssh():
    have = (SMALL, BIG)
    c = ctx({"n1": with_images("10.0.0.1", have), "n2": with_images("10.0.0.2", have), "n3": with_images("10.0.0.3")})
    assert relay_plan(c) is None
    cmds = plan(c, "n3")
    assert is_load(cmds[0], "-") and cmds[0].stdin.images == (SMALL, BIG)
    c = ctx({n: with_images(a) for n, a in (("n1", "10.0.0.1"), ("n2", "10.0.0.2"), ("n3", "10.0.0.3"))}, relay=False)
    assert relay_plan(c) is None


def test_a_stale_relay_is_cleaned_up():
    stale = dict(relay_container())
    stale["Labels"] = stale["Labels"].replace("clusterctl.relay.images=", "clusterctl.relay.images=0ld")
    have = (SMALL, BIG)
    c = ctx({"n1": with_images("10.0.0.1", have, [stale]), "n2": with_images("10.0.0.2", have), "n3": with_images("10.0.0.3", have)})
    assert [x.render() for x in plan(c, "n1")][0] == "docker rm -f clusterctl-relay || true"
