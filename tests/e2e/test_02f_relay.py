"""End to end on the shared lab (Consul running after test_02): the filebox relay trusts nothing
it fetches. A rogue HTTP server that holds the relay port first on the seed host makes the relay
fail, nothing it serves is loaded anywhere, and `up` still converges over SSH; a fetch of other
bytes than the operator's is refused before `docker load`; no relay is left behind."""

from __future__ import annotations

import json
import re
import shlex
import uuid

import pytest
import yaml

from clusterctl.filebox.build import build_filebox
from clusterctl.images.base import base_image

pytestmark = pytest.mark.e2e

HOSTS = ("node1", "node2", "node3")
ROGUE = "clusterctl-e2e-rogue"


def _on(lab, host: str, script: str, *args: str, check: bool = False):
    return lab.docker("exec", lab.container(host), "sh", "-c", script, "sh", *args, check=check)


def _rogue_archive(lab, host: str, name: str, tag: str) -> None:
    """On `host`: /tmp/rogue-www/NAME, a loadable archive of an image tagged TAG (the engine's
    own base image under another name), not the operator's bytes."""
    script = """set -e
base=$(docker images --format '{{.Repository}}:{{.Tag}}' | grep '^clusterctl/base:' | head -n 1)
mkdir -p /tmp/rogue-www
docker tag "$base" "$2"
docker save "$2" > "/tmp/rogue-www/$1"
docker rmi "$2" >/dev/null
echo "$base"
"""
    _on(lab, host, script, name, tag, check=True)


def _serve_rogue(lab, host: str, listen: str) -> None:
    script = """base=$(docker images --format '{{.Repository}}:{{.Tag}}' | grep '^clusterctl/base:' | head -n 1)
docker rm -f "$1" >/dev/null 2>&1
docker run -d --name "$1" --net host -v /tmp/rogue-www:/www:ro --entrypoint busybox "$base" httpd -f -p "$2" -h /www >/dev/null
"""
    _on(lab, host, script, ROGUE, listen, check=True)


def _cleanup_rogue(lab) -> None:
    for host in HOSTS:
        _on(lab, host, 'docker rm -f "$1" >/dev/null 2>&1; rm -rf /tmp/rogue-www', ROGUE)


def _failures(report) -> list:
    return [(h["name"], p["phase"], p["message"]) for h in report.get("hosts", []) for p in h["phases"] if p["status"] == "failed"]


def _images(lab, host: str) -> str:
    return _on(lab, host, "docker images --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}'").stdout


def test_a_rogue_server_on_the_relay_port_is_never_loaded_and_up_converges_over_ssh(cli, lab, tmp_path):
    doc = yaml.safe_load(lab.cluster_file.read_text())
    marker = tmp_path / "relay-marker.txt"
    marker.write_text(f"relay test {uuid.uuid4()}\n")  # a new filebox version, so every host lacks it
    doc["filebox"] = {"binaries": ["consul"], "files": [f"{marker}:/etc/relay-marker.txt"], "relay": True}
    f = tmp_path / "relay.yaml"
    f.write_text(yaml.safe_dump(doc))
    tag = f"rogue/evil:{uuid.uuid4().hex[:8]}"
    try:
        code, plan = cli.json("plan", "-f", str(f))
        assert code == 0, json.dumps(plan)[-2000:]
        steps = {h["name"]: next(p for p in h["phases"] if p["phase"] == "filebox") for h in plan["hosts"]}
        # node1 seeds; the others would fetch from it, checked against the operator's sha256.
        fetch = next(c for c in steps["node2"]["commands"] if "wget" in c)
        url, sha = re.search(r"(http://[0-9.]+:7380/([0-9a-f]{64})\.tar)", fetch).groups()
        assert sha in fetch and "sha256sum -c" in fetch
        # Someone on node1 holds the port first and serves their own archive under that name.
        _rogue_archive(lab, "node1", f"{sha}.tar", tag)
        _serve_rogue(lab, "node1", "0.0.0.0:7380")

        code, report = cli.json("up", "-f", str(f))
        assert code == 0, _failures(report) or json.dumps(report, indent=1)[-3000:]
        box = build_filebox(["consul"], [f"{marker}:/etc/relay-marker.txt"])
        base = base_image(box.manifest, box.version)
        done = {h["name"]: next(p for p in h["phases"] if p["phase"] == "filebox")["message"] for h in report["hosts"]}
        assert "check that the relay serves" in done["node1"], done  # it tried, and failed
        for host in HOSTS:
            held = _images(lab, host)
            assert tag.split(":")[0] not in held, (host, held)  # nothing from the rogue
            assert box.tag in held and base.image.tag in held, (host, held)
            # The operator's own bytes reached every host: over SSH, the relay having failed.
            assert host == "node1" or ("load" in done[host] and "fetch" not in done[host]), done
            leftovers = _on(lab, host, "docker ps -aq --filter name=clusterctl-relay; ls -d /var/lib/clusterctl/relay /var/lib/clusterctl/fetch.* 2>/dev/null").stdout
            assert leftovers.strip() == "", (host, leftovers)
        # The rogue was left alone: it is not clusterctl's.
        assert _on(lab, "node1", "docker inspect -f '{{.State.Running}}' \"$1\"", ROGUE).stdout.strip() == "true"
    finally:
        _cleanup_rogue(lab)
        code, report = cli.json("up", "-f", str(lab.cluster_file))  # back to the lab's own filebox
        assert code == 0, json.dumps(report, indent=1)[-3000:]


def test_a_fetch_of_other_bytes_is_refused_before_docker_load(cli, lab):
    """The very fetch command the filebox phase plans, run on node2 against a server that
    serves other bytes under the archive's name: nothing is loaded, the temp dir is gone."""
    from clusterctl.config.loader import load
    from clusterctl.facts.parser import parse_probe_output, probe_script
    from clusterctl.images.archive import ImageSpec
    from clusterctl.phases.base import Context, Inputs
    from clusterctl.shipping.relay import Relay, relay_fetch_cmd

    cluster = load(lab.cluster_file)
    box = build_filebox(list(cluster.spec.filebox.binaries))
    base = base_image(box.manifest, box.version).image
    probe = _on(lab, "node2", probe_script(), check=True).stdout
    facts = parse_probe_output(probe)
    tag = f"rogue/evil:{uuid.uuid4().hex[:8]}"
    sha = "0" * 64  # what the operator would expect; the server has other bytes
    try:
        _rogue_archive(lab, "node2", f"{sha}.tar", tag)
        _serve_rogue(lab, "node2", "127.0.0.1:7399")
        victim = ImageSpec(base.layers, base.config, tag=tag)
        relay = Relay("node1", (victim,), (victim,), frozenset(), sha, f"http://127.0.0.1:7399/{sha}.tar", True)
        ctx = Context(cluster, {"node2": facts}, Inputs(base_image=base))
        cmd = relay_fetch_cmd(ctx, relay, facts)
        proc = _on(lab, "node2", shlex.join(cmd.argv))
        assert proc.returncode != 0
        assert "not the archive the operator sent" in proc.stderr, proc.stderr
        assert tag.split(":")[0] not in _images(lab, "node2")
        assert _on(lab, "node2", "ls -d /var/lib/clusterctl/fetch.* 2>/dev/null").stdout.strip() == ""
    finally:
        _cleanup_rogue(lab)
