"""The prune phase: old filebox containers of this cluster and unused clusterctl images go."""

import json
from pathlib import Path

from clusterctl.config.loader import load_text
from clusterctl.facts.parser import parse_probe_output
from clusterctl.images.archive import File, ImageConfig, ImageSpec, Layer
from clusterctl.phases.base import Context, Inputs
from clusterctl.phases.prune import PrunePhase

FIXTURE = Path(__file__).parent.parent / "fixtures" / "probe-docker-running.json"
NEW = ImageSpec((Layer([File("x", data=b"x")]),), ImageConfig(labels={"clusterctl.role": "filebox"}), tag="clusterctl/filebox:new")
INPUTS = Inputs(filebox_container="clusterctl-filebox-new", images=(NEW,))


def facts(containers, images):
    data = json.loads(FIXTURE.read_text())
    data["docker"]["containers"] = [
        {"ID": n, "Names": n, "Image": img, "State": "created", "Labels": lab} for n, img, lab in containers
    ]
    data["docker"]["images"] = [{"Id": i, "RepoTags": tags, "Labels": {"clusterctl.role": role}, "Layers": []} for i, tags, role in images]
    return parse_probe_output(json.dumps(data))


def plan(f, inputs=INPUTS):
    cluster = load_text("name: c1\nhosts:\n  - {name: n1, address: 10.0.0.1}\n", "c.yaml")
    return [c.render() for c in PrunePhase().plan(Context(cluster, {"n1": f}, inputs), cluster.hosts[0], f)]


def test_old_filebox_and_unused_images_go_the_current_and_used_ones_stay():
    f = facts(
        containers=[
            ("clusterctl-filebox-new", "clusterctl/filebox:new", "clusterctl.cluster=c1,clusterctl.role=filebox"),
            ("clusterctl-filebox-old", "clusterctl/filebox:old", "clusterctl.cluster=c1,clusterctl.role=filebox"),
            ("clusterctl-filebox-x", "clusterctl/filebox:x", "clusterctl.cluster=other,clusterctl.role=filebox"),
            ("clusterctl-consul", "clusterctl/base:old", "clusterctl.cluster=c1,clusterctl.role=consul"),
        ],
        images=[
            (NEW.image_id, ["clusterctl/filebox:new"], "filebox"),
            ("sha256:old", ["clusterctl/filebox:old"], "filebox"),
            ("sha256:baseold", ["clusterctl/base:old"], "base"),  # consul still runs from it
            ("sha256:x", ["clusterctl/filebox:x"], "filebox"),  # another cluster's, in use
            ("sha256:app1", [], "app"),
        ],
    )
    assert plan(f) == [
        "docker rm clusterctl-filebox-old",
        "docker image rm clusterctl/filebox:old sha256:app1",
    ]


def test_converged_host_and_a_run_that_shipped_nothing_plan_nothing():
    f = facts([("clusterctl-filebox-new", "clusterctl/filebox:new", "clusterctl.cluster=c1,clusterctl.role=filebox")],
              [(NEW.image_id, ["clusterctl/filebox:new"], "filebox")])  # fmt: skip
    assert plan(f) == []
    old = facts([("clusterctl-filebox-old", "clusterctl/filebox:old", "clusterctl.cluster=c1,clusterctl.role=filebox")], [])
    assert plan(old, Inputs()) == []


def test_an_image_someone_else_runs_by_its_short_id_stays():
    """`docker run $(docker images clusterctl/base -q)`: docker ps names the image by short ID."""
    digest = "dd8700886674" + "0" * 52
    f = facts(
        containers=[("clusterctl-filebox-new", "clusterctl/filebox:new", "clusterctl.cluster=c1,clusterctl.role=filebox"),
                    ("foreign", "dd8700886674", "")],
        images=[(NEW.image_id, ["clusterctl/filebox:new"], "filebox"), (f"sha256:{digest}", ["clusterctl/base:old"], "base"),
                ("sha256:" + "ab" * 32, ["clusterctl/base:older"], "base")],
    )  # fmt: skip
    assert plan(f) == ["docker image rm clusterctl/base:older"]


def test_an_image_a_foreign_container_runs_stays():
    """A container without clusterctl's labels (someone's own `docker run clusterctl/base:..`)
    is reported by the probe only as its image (foreign_images): that image stays."""
    data = json.loads(FIXTURE.read_text())
    data["docker"]["containers"] = [{"ForeignImage": i} for i in ("debian:12", "clusterctl/base:old", "debian:12")]
    data["docker"]["images"] = [{"Id": i, "RepoTags": t, "Labels": {"clusterctl.role": "base"}, "Layers": []}
                                for i, t in (("sha256:baseold", ["clusterctl/base:old"]), ("sha256:b2", ["clusterctl/base:b2"]))]  # fmt: skip
    f = parse_probe_output(json.dumps(data))
    assert f.docker.foreign_images == ("clusterctl/base:old", "debian:12")
    assert plan(f) == ["docker image rm clusterctl/base:b2"]
