"""The probe's Docker API reader (DOCKER_API, an awk program running curl) in a local shell,
with a stand-in curl that answers by path as Docker's API would; and the parser taking the API's
shapes to the same facts as the CLI's. The real curl against real engines: e2e (test_01)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clusterctl.facts.parser import parse_probe_output

PROBE = Path(__file__).parent.parent.parent / "clusterctl" / "facts" / "probe.sh"
IMG_A, IMG_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
NET_BRIDGE, NET_OURS = "1" * 64, "k2x7overlayid0000000000000"
INFO = {"ServerVersion": "26.1.5", "NCPU": 2, "Swarm": {"ControlAvailable": False}}
CONTAINERS = [
    {"Id": "c1", "Names": ["/clusterctl-consul"], "Image": "clusterctl/base:1", "State": "running", "Labels": {"clusterctl.cluster": "lab", "clusterctl.role": "consul"}},
    {"Id": "c2", "Names": ["/someone-elses"], "Image": "nginx:1.27", "State": "exited", "Labels": {"com.example": "x"}},
]  # fmt: skip
IMAGES = [{"Id": IMG_B, "RepoTags": ["clusterctl/base:1"], "ParentId": "", "Labels": {"clusterctl.role": "base"}},
          {"Id": IMG_A, "RepoTags": ["clusterctl/filebox:1"], "ParentId": "", "Labels": {"clusterctl.role": "filebox"}}]  # fmt: skip
NETWORKS = [{"Name": "bridge", "Id": NET_BRIDGE, "Driver": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]}, "Containers": None},
            {"Name": "clusterctl", "Id": NET_OURS, "Driver": "overlay", "ConfigFrom": {"Network": ""}, "Labels": {"clusterctl.cluster": "lab"}, "Containers": None}]  # fmt: skip


def _inspected_image(i):
    return {"Id": i["Id"], "RepoTags": i["RepoTags"], "Config": {"Labels": i["Labels"]}, "RootFS": {"Layers": ["sha256:" + i["Id"][7:9] * 32]}, "Size": 5}


def _answers(**override):
    answers = {
        "/info": (200, INFO),
        "/containers/json?all=1": (200, CONTAINERS),
        "/images/json?filters=%7B%22label%22%3A%5B%22clusterctl.role%22%5D%7D": (200, IMAGES),
        "/networks": (200, NETWORKS),
        "/nodes": (503, {"message": "This node is not a swarm manager."}),
        "/images/json?filters=%7B%22reference%22%3A%5B%22weaveworks%2F%2A%22%5D%7D": (200, [{"Id": "sha256:" + "c" * 64, "RepoTags": ["weaveworks/weave:2.8.1", "mine/weave:1"]}]),
    }  # fmt: skip
    for i in IMAGES:
        answers[f"/images/{i['Id']}/json"] = (200, _inspected_image(i))
    for n in NETWORKS:
        answers[f"/networks/{n['Id']}"] = (200, dict(n, Containers={"c1": {}} if n["Name"] == "clusterctl" else {}))
    answers.update(override)
    return answers


CURL = r'''
import json, sys
answers = json.load(open(sys.argv[1]))
args = sys.argv[2:]
fmt = args[args.index("-w") + 1]
with open(sys.argv[1] + ".log", "a") as log:
    log.write(" ".join(a for a in args if a.startswith("http://")) + "\n")
for url in (a for a in args if a.startswith("http://docker/")):
    code, body = answers.get(url[len("http://docker"):], (404, {"message": "no such"}))
    if code:  # 0: no answer at all (as when nothing listens)
        sys.stdout.write(json.dumps(body, separators=(",", ":")) + "\n")
    sys.stdout.write(fmt.replace("%{http_code}", f"{code:03d}"))
'''


def _api(tmp_path, answers) -> tuple[subprocess.CompletedProcess, list[str]]:
    """DOCKER_API run as the probe runs it, `get` being the stand-in: (the run, each curl's URLs)."""
    program = re.search(r"^DOCKER_API='(.*?)'$", PROBE.read_text(), re.S | re.M).group(1)
    table = tmp_path / "answers.json"
    table.write_text(json.dumps(answers))
    (tmp_path / "curl.py").write_text(CURL)
    get = f"{sys.executable} {tmp_path / 'curl.py'} {table} -gsS --unix-socket /var/run/docker.sock"
    run = subprocess.run(["awk", "-v", f"get={get}", program], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    log = Path(str(table) + ".log")
    return run, log.read_text().splitlines() if log.exists() else []


def test_one_request_lists_the_next_inspects_what_was_listed(tmp_path):
    run, calls = _api(tmp_path, _answers())
    assert run.returncode == 0, run.stderr
    assert len(calls) == 2 and calls[0].split()[0] == "http://docker/info"
    assert sorted(calls[1].split()) == sorted([f"http://docker/images/{IMG_A}/json", f"http://docker/images/{IMG_B}/json",
                                               f"http://docker/networks/{NET_BRIDGE}", f"http://docker/networks/{NET_OURS}"])  # fmt: skip
    d = json.loads("{" + run.stdout[1:] + "}")
    assert d["info"] == INFO and d["containers_api"] == CONTAINERS
    assert [i["Id"] for i in d["images"]] == [IMG_B, IMG_A] and d["images"][0]["RootFS"]["Layers"]
    net = d["network_api"]
    assert [n["Name"] for n in net["networks"]] == ["bridge", "clusterctl"] and net["networks"][1]["Containers"] == {"c1": {}}
    assert net["swarm_nodes"] is None  # 503: not a manager, as the CLI path says it


@pytest.mark.parametrize("info", [(0, None), (500, {"message": "boom"}), (200, "not an object")])
def test_no_engine_answer_prints_nothing_and_fails(tmp_path, info):
    """The probe then reads by the CLI: nothing half-printed."""
    run, _ = _api(tmp_path, _answers(**{"/info": info}))
    assert run.returncode == 3 and run.stdout == ""


def test_an_inspect_gone_in_between_is_left_out(tmp_path):
    run, _ = _api(tmp_path, _answers(**{f"/images/{IMG_A}/json": (404, {"message": "No such image"})}))
    assert run.returncode == 0, run.stderr
    d = json.loads("{" + run.stdout[1:] + "}")
    assert [i["Id"] for i in d["images"]] == [IMG_B]


def _probe_json(docker: dict) -> str:
    return json.dumps({"probe": 1, "hostname": "h", "uid": 0, "docker": docker})


def test_the_api_shapes_parse_to_the_cli_shapes_facts():
    """The same engine as each path prints it: the API's (inspect objects, Config.Labels,
    Names with a slash, labels as objects, foreign containers whole) and the CLI's (`docker ps`
    and the probe's templates)."""
    images = [_inspected_image(i) for i in IMAGES]
    networks = [dict(n, Containers={"c1": {}} if n["Name"] == "clusterctl" else {}) for n in NETWORKS]
    api = _probe_json({
        "cli": "/usr/bin/docker", "info": INFO, "containers_api": CONTAINERS, "images": images,
        "network": {"docker_user": []},
        "network_api": {"networks": networks[::-1], "swarm_nodes": None,
                        "weave_images_api": [{"RepoTags": ["weaveworks/weave:2.8.1", "mine/weave:1"]}]},
    })  # fmt: skip
    cli = _probe_json({
        "cli": "/usr/bin/docker", "info": INFO,
        "containers": [{"ID": "c1", "Names": "clusterctl-consul", "Image": "clusterctl/base:1", "State": "running",
                        "Labels": "clusterctl.cluster=lab,clusterctl.role=consul"}, {"ForeignImage": "nginx:1.27"}],
        "images": [{"Id": i["Id"], "RepoTags": i["RepoTags"], "Labels": i["Config"]["Labels"], "RootFS": i["RootFS"], "Size": 5} for i in images],
        "network": {"docker_user": [], "networks": networks, "swarm_nodes": None, "weave_images": ["weaveworks/weave:2.8.1"]},
    })  # fmt: skip
    a, c = parse_probe_output(api), parse_probe_output(cli)
    assert a == c
    assert a.container("clusterctl-consul").labels["clusterctl.role"] == "consul"
    assert a.docker.foreign_images == ("nginx:1.27",) and [i.labels["clusterctl.role"] for i in a.docker.images] == ["filebox", "base"]
    assert a.network.weave_images == ("weaveworks/weave:2.8.1",) and a.network.networks[1].containers == 1
