"""Weave builders as exact strings, and plan_weave on fresh/partial/converged/changed inputs.

Weave's images cannot be had here, so the driver is tested as command plans only.
"""

from __future__ import annotations

import hashlib
import shlex
from ipaddress import IPv4Network, ip_interface

import pytest

from clusterctl.commands import weave
from clusterctl.commands.base import Script
from clusterctl.network.drivers.weave import WeaveHost, WeaveHostFacts, WeaveSettings, plan_weave
from clusterctl.network.facts import DockerNetwork

CIDR = IPv4Network("10.240.0.0/16")
LOW, HIGH = IPv4Network("10.240.0.0/17"), IPv4Network("10.240.128.0/17")
SETTINGS = WeaveSettings(cluster="lab", network="clusterctl", cidr=CIDR)
HOSTS = (WeaveHost("node1", "10.77.0.11"), WeaveHost("node2", "10.77.0.12"), WeaveHost("node3", "10.77.0.13"))
IMAGES = ("weaveworks/weave:2.8.1", "weaveworks/weaveexec:2.8.1", "weaveworks/weavedb:latest", "busybox:latest")
SECRET = b"wfvAwt7sj-correct-horse"
SECRET_SHA = hashlib.sha256(SECRET).hexdigest()
NET = DockerNetwork(name="clusterctl", driver="weavemesh", ipam_driver="weavemesh", subnets=(HIGH,))


def render(cmds):
    return [c.render() for c in cmds]


def fresh(**kw) -> WeaveHostFacts:
    base = dict(script_version=None, router="absent", images=IMAGES)
    base.update(kw)
    return WeaveHostFacts(**base)


def converged(name: str, peers=("10.77.0.11", "10.77.0.12", "10.77.0.13"), **kw) -> WeaveHostFacts:
    own = dict(node1="10.77.0.11", node2="10.77.0.12", node3="10.77.0.13").get(name)
    base = dict(
        script_version="2.8.1",
        router="running",
        images=IMAGES,
        targets=tuple(p for p in peers if p != own),
        ipalloc_range=str(CIDR),
        networks=(NET,),
        bridge_addresses=(ip_interface("10.240.0.1/17"), ip_interface("10.240.128.1/17")),
    )
    base.update(kw)
    return WeaveHostFacts(**base)


# ---------------------------------------------------------------------------------------------
# Builders


def test_builders_render_exactly():
    assert weave.launch(["10.77.0.12", "10.77.0.13"], ipalloc_range=CIDR, default_subnet=LOW, nickname="node1").render() == (
        "weave launch --ipalloc-range 10.240.0.0/16 --ipalloc-default-subnet 10.240.0.0/17 "
        "--nickname node1 --proxy=false 10.77.0.12 10.77.0.13"
    )
    assert weave.launch(ipalloc_range="10.32.0.0/12", proxy=True).render() == "weave launch --ipalloc-range 10.32.0.0/12"
    assert weave.launch(ipalloc_range=CIDR, plugin=False).render() == (
        "weave launch --ipalloc-range 10.240.0.0/16 --proxy=false --plugin=false"
    )
    assert weave.connect(["10.77.0.14"]).render() == "weave connect 10.77.0.14"
    assert weave.connect(["10.77.0.14", "10.77.0.15"], replace=True).render() == "weave connect --replace 10.77.0.14 10.77.0.15"
    assert weave.forget(["10.77.0.14"]).render() == "weave forget 10.77.0.14"
    assert weave.status().render() == "weave status"
    assert weave.status("targets").render() == "weave status targets"
    assert weave.expose().render() == "weave expose"
    assert weave.expose(["net:10.240.128.0/17"]).render() == "weave expose net:10.240.128.0/17"
    assert weave.env().render() == "weave env"
    assert weave.stop().render() == "weave stop"
    assert weave.reset().render() == "weave reset"
    assert weave.network_create("clusterctl", HIGH, cluster="lab", cidr=CIDR).render() == (
        "docker network create --driver weavemesh --ipam-driver weavemesh --subnet 10.240.128.0/17 "
        "--label clusterctl.cluster=lab --label clusterctl.cidr=10.240.0.0/16 clusterctl"
    )
    assert weave.install_script().render() == (
        "sh -c 'curl -fsSL \"$1\" -o \"$2.tmp\" && chmod a+x \"$2.tmp\" && mv \"$2.tmp\" \"$2\"' sh "
        "https://github.com/weaveworks/weave/releases/download/v2.8.1/weave /usr/local/bin/weave"
    )
    assert weave.images() == ("weaveworks/weave:2.8.1", "weaveworks/weaveexec:2.8.1", "weaveworks/weavedb:latest")
    with pytest.raises(ValueError):
        weave.forget([])
    with pytest.raises(ValueError):
        weave.status("everything")


def test_the_password_never_appears_in_any_argv():
    cmd = weave.launch(["10.77.0.12"], ipalloc_range=CIDR, password_file="/etc/clusterctl/weave/password")
    assert cmd.render() == (
        "sh -c 'WEAVE_PASSWORD=$(cat \"$1\") || exit 1; export WEAVE_PASSWORD; shift; exec weave launch \"$@\"' "
        "sh /etc/clusterctl/weave/password --ipalloc-range 10.240.0.0/16 --proxy=false 10.77.0.12"
    )
    assert "--password" not in cmd.argv
    store = weave.store_password(SECRET)
    assert store.stdin == SECRET and store.argv[-2:] == ("/etc/clusterctl/weave/password", "0600")
    assert "not shown" in store.display() and SECRET.decode() not in store.display()
    settings = WeaveSettings("lab", "clusterctl", CIDR, password=SECRET)
    assert SECRET.decode() not in repr(settings)
    plan = plan_weave(HOSTS, {h.name: fresh() for h in HOSTS}, settings)
    for cmds in plan.cmds.values():
        assert all(SECRET.decode() not in c.display() for c in cmds)
        Script(cmds)  # one stdin per host script


# ---------------------------------------------------------------------------------------------
# Planner


def test_fresh_cluster_installs_launches_with_all_peers_creates_the_network_and_exposes():
    plan = plan_weave(HOSTS, {h.name: fresh() for h in HOSTS}, SETTINGS)
    assert (plan.default_subnet, plan.network_subnet) == (LOW, HIGH) and not plan.errors
    assert render(plan.cmds["node2"]) == [
        weave.install_script().render(),
        "weave launch --ipalloc-range 10.240.0.0/16 --ipalloc-default-subnet 10.240.0.0/17 "
        "--nickname node2 --proxy=false 10.77.0.11 10.77.0.13",
        "docker network create --driver weavemesh --ipam-driver weavemesh --subnet 10.240.128.0/17 "
        "--label clusterctl.cluster=lab --label clusterctl.cidr=10.240.0.0/16 clusterctl",
        "weave expose net:10.240.128.0/17",
    ]


def test_encrypted_fresh_cluster_stores_the_password_first():
    settings = WeaveSettings("lab", "clusterctl", CIDR, password=SECRET)
    plan = plan_weave(HOSTS, {h.name: fresh() for h in HOSTS}, settings)
    cmds = plan.cmds["node1"]
    assert cmds[0] == weave.store_password(SECRET) and cmds[0].stdin == SECRET
    assert cmds[2].argv[:3] == ("sh", "-c", 'WEAVE_PASSWORD=$(cat "$1") || exit 1; export WEAVE_PASSWORD; shift; exec weave launch "$@"')


def test_converged_cluster_plans_nothing():
    plan = plan_weave(HOSTS, {h.name: converged(h.name) for h in HOSTS}, SETTINGS)
    assert plan.empty and not plan.errors
    settings = WeaveSettings("lab", "clusterctl", CIDR, password=SECRET)
    facts = {h.name: converged(h.name, password_sha256=SECRET_SHA) for h in HOSTS}
    assert plan_weave(HOSTS, facts, settings).empty


def test_targets_with_the_default_port_count_as_the_same_peer():
    facts = {h.name: converged(h.name) for h in HOSTS}
    facts["node1"] = converged("node1", targets=("10.77.0.12:6783", "10.77.0.13"))
    assert plan_weave(HOSTS, facts, SETTINGS).empty


def test_partial_cluster_finishes_each_host():
    facts = {h.name: converged(h.name) for h in HOSTS}
    facts["node2"] = converged("node2", router="stopped", targets=())
    facts["node3"] = converged("node3", networks=(), bridge_addresses=(ip_interface("10.240.0.1/17"),))
    plan = plan_weave(HOSTS, facts, SETTINGS)
    assert render(plan.cmds["node1"]) == []
    assert render(plan.cmds["node2"]) == [
        "weave launch --ipalloc-range 10.240.0.0/16 --ipalloc-default-subnet 10.240.0.0/17 "
        "--nickname node2 --proxy=false 10.77.0.11 10.77.0.13"
    ]
    assert render(plan.cmds["node3"]) == [
        weave.network_create("clusterctl", HIGH, cluster="lab", cidr=CIDR).render(),
        "weave expose net:10.240.128.0/17",
    ]


def test_added_host_launches_and_the_others_connect_to_it():
    hosts = (*HOSTS, WeaveHost("node4", "10.77.0.14"))
    facts = {h.name: converged(h.name) for h in HOSTS}
    facts["node4"] = fresh(script_version="2.8.1")
    plan = plan_weave(hosts, facts, SETTINGS)
    for n in ("node1", "node2", "node3"):
        assert render(plan.cmds[n]) == ["weave connect 10.77.0.14"]
    assert render(plan.cmds["node4"])[0] == (
        "weave launch --ipalloc-range 10.240.0.0/16 --ipalloc-default-subnet 10.240.0.0/17 "
        "--nickname node4 --proxy=false 10.77.0.11 10.77.0.12 10.77.0.13"
    )


def test_removed_host_is_forgotten():
    everyone = ("10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.14")
    facts = {h.name: converged(h.name, peers=everyone) for h in HOSTS}
    plan = plan_weave(HOSTS, facts, SETTINGS)
    for n in ("node1", "node2", "node3"):
        assert render(plan.cmds[n]) == ["weave forget 10.77.0.14"]


def test_changed_password_is_stored_and_the_router_relaunched():
    settings = WeaveSettings("lab", "clusterctl", CIDR, password=SECRET)
    facts = {h.name: converged(h.name, password_sha256="0" * 64) for h in HOSTS}
    cmds = render(plan_weave(HOSTS, facts, settings).cmds["node1"])
    assert cmds[0] == weave.store_password(SECRET).render()
    assert cmds[1] == "weave stop"
    assert cmds[2].startswith("sh -c 'WEAVE_PASSWORD=$(cat \"$1\")")


def test_old_script_is_replaced():
    facts = {h.name: converged(h.name) for h in HOSTS}
    facts["node1"] = converged("node1", script_version="2.6.5")
    assert render(plan_weave(HOSTS, facts, SETTINGS).cmds["node1"]) == [weave.install_script().render()]


def test_hosts_without_weave_images_are_refused():
    facts = {h.name: fresh() for h in HOSTS}
    facts["node2"] = fresh(images=("weaveworks/weave:2.8.1", "busybox:latest"))
    plan = plan_weave(HOSTS, facts, SETTINGS)
    assert plan.errors["node2"].startswith(
        "weave images missing: weaveworks/weaveexec:2.8.1, weaveworks/weavedb:latest; load them"
    )
    assert "node2" not in plan.cmds and "node1" in plan.cmds
    # The others still list node2 as a peer: it joins once its images are there.
    assert "10.77.0.12" in plan.cmds["node1"][1].argv


def test_wrong_range_or_network_is_refused_per_host():
    facts = {h.name: converged(h.name) for h in HOSTS}
    facts["node1"] = converged("node1", ipalloc_range="10.32.0.0/12")
    facts["node2"] = converged("node2", networks=(DockerNetwork("clusterctl", "bridge", subnets=(HIGH,)),))
    plan = plan_weave(HOSTS, facts, SETTINGS)
    assert "allocates from 10.32.0.0/12" in plan.errors["node1"]
    assert "not weavemesh 10.240.128.0/17" in plan.errors["node2"]
    assert plan.cmds == {"node3": ()}
    assert all("\n" not in e for e in plan.errors.values())


def test_silent_hosts_are_still_peers():
    facts = {"node1": fresh()}
    plan = plan_weave(HOSTS, facts, SETTINGS)
    assert list(plan.cmds) == ["node1"]
    assert plan.cmds["node1"][1].argv[-2:] == ("10.77.0.12", "10.77.0.13")


def test_every_rendered_command_splits_back_to_its_argv():
    settings = WeaveSettings("lab", "clusterctl", CIDR, password=SECRET)
    plan = plan_weave(HOSTS, {h.name: fresh() for h in HOSTS}, settings)
    for cmds in plan.cmds.values():
        for c in cmds:
            assert shlex.split(c.render()) == list(c.argv)
