"""End to end through an ssh config: a bastion lab of its own, rewired so that node3 is
reachable only through node1 then node2, and a cluster file whose hosts are only names that
`ssh.config_file` (its Include'd files) turns into addresses, users, keys and jump hosts.

    this machine --lab net--> node1 --private net--> node2 --extra net--> node3

- node1: `HostName` only; node2: a `ProxyCommand` running OpenSSH's `ssh -W` through node1;
  node3: `ProxyJump jump1,jump2` (two hops, each one looked up in the config).
- A changed host key on the middle hop (node2) is refused, even with --accept-new-host-keys:
  nothing runs on node2 or on node3 behind it, and nothing is added to known_hosts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
import yaml

from clusterctl.lab import lab as lab_mod
from tests.e2e.conftest import Lab, lab_for_tests

pytestmark = pytest.mark.e2e

EXTRA_NET_PREFIX = "clusterctl-labextra-"


@dataclass
class Topology:
    lab: Lab
    cluster_file: Path
    known_hosts: Path
    node1: str  # on the lab network: the only address this machine reaches
    node1_private: str
    node2: str  # on the private network (node1 reaches it)
    node2_extra: str  # on the extra network
    node3: str  # on the extra network only (node2 reaches it)


def _remove_stale_extra_networks(lab: Lab) -> None:
    """Networks left by an earlier run that was killed before its teardown (`lab down` removes
    a lab's networks by name only, so it leaves this test's one behind)."""
    names = lab.docker("network", "ls", "--filter", f"label={lab_mod.LABEL}", "--format", "{{.Name}}").stdout.split()
    for name in names:
        m = re.fullmatch(rf"{EXTRA_NET_PREFIX}e2e[a-z]*(\d+)", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            lab.docker("network", "rm", name, check=False)


def _address(lab: Lab, host: str, net: str) -> str:
    fmt = "{{(index .NetworkSettings.Networks %s).IPAddress}}" % json.dumps(net)
    return lab.docker("inspect", "-f", fmt, lab.container(host)).stdout.strip()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o644)
    return path


def _write_files(d: Path, lab: Lab, t: dict[str, str]) -> tuple[Path, Path]:
    key = lab.cluster_file.parent / "id_ed25519"
    lab_known = (lab.cluster_file.parent / "known_hosts").read_text().splitlines()
    # The hosts' own keys (the lab read them from the hosts), each under the address SSH
    # connects to: node3's under its address on the extra network.
    by_addr = {addr: [ln for ln in lab_known if ln.split()[0] == addr] for addr in (t["node1"], t["node2"], t["node3_private"])}
    lines = by_addr[t["node1"]] + by_addr[t["node2"]] + [f"{t['node3']} {ln.split(' ', 1)[1]}" for ln in by_addr[t["node3_private"]]]
    known = _write(d / "known_hosts", "\n".join(lines) + "\n")
    openssh = (  # OpenSSH as the ProxyCommand, reading no config file at all
        f"ssh -F none -i {key} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={known} -o ConnectTimeout=5 -W %h:%p root@{t['node1']}"
    )
    top = _write(d / "ssh" / "config", f"""\
# Hosts and jump hosts come from the included files (relative: to this file's folder).
Include hosts.d/*.conf
Host *
  User root
  IdentityFile {key}
  IdentitiesOnly yes
""")  # fmt: skip
    _write(d / "ssh" / "hosts.d" / "10-jumps.conf", f"""\
Host jump1
  HostName {t['node1']}
  ProxyJump none
Host jump2
  HostName {t['node2']}
  ProxyJump jump1
""")  # fmt: skip
    _write(d / "ssh" / "hosts.d" / "20-nodes.conf", f"""\
Host node1
  HostName {t['node1']}
Host node2
  HostName {t['node2']}
  ProxyCommand {openssh}
Host node3
  HostName {t['node3']}
  ProxyJump jump1,jump2
""")  # fmt: skip
    _write(d / "ssh" / "hosts.d" / "README", "Host *\n  User nobody-this-file-is-not-included\n")
    doc = {
        "name": f"sshcfg-{os.getpid()}",
        "ssh": {"config_file": str(top), "known_hosts": str(known), "connect_timeout": 5},
        "hosts": [{"name": n, "address": n} for n in ("node1", "node2", "node3")],
    }
    return _write(d / "cluster.yaml", yaml.safe_dump(doc, sort_keys=False)), known


@pytest.fixture(scope="module")
def topo(cli, state_dir, tmp_path_factory):
    with lab_for_tests(cli, f"e2ec{os.getpid()}", "--bastion") as lab:
        net = f"{EXTRA_NET_PREFIX}{lab.name}"
        subnet = None
        try:
            _remove_stale_extra_networks(lab)
            hosts = {h["name"]: h for h in yaml.safe_load(lab.cluster_file.read_text())["hosts"]}
            # An internal network with no address on this machine and an unreachable route, as
            # the lab makes its private one: nothing here can reach it, node2 and node3 can.
            for _ in range(3):  # another lab made at the same moment may take the same /24
                free = lab_mod._free_subnet()  # noqa: SLF001 - the lab's own choice of a free /24
                made = lab.docker("network", "create", "--internal", "-o", "com.docker.network.bridge.inhibit_ipv4=true",
                                  "--subnet", str(free), "--label", f"{lab_mod.LABEL}={lab.name}", net, check=False)  # fmt: skip
                if made.returncode == 0:
                    subnet = free
                    break
            assert subnet is not None, made.stderr
            lab_mod._block_route(subnet)  # noqa: SLF001
            node3_private = hosts["node3"]["address"]
            for host in ("node2", "node3"):
                lab.docker("network", "connect", net, lab.container(host))
            lab.docker("network", "disconnect", lab_mod.private_network_name(lab.name), lab.container("node3"))
            t = {
                "node1": hosts["node1"]["address"],
                "node1_private": hosts["node1"]["cluster_address"],
                "node2": hosts["node2"]["address"],
                "node2_extra": _address(lab, "node2", net),
                "node3": _address(lab, "node3", net),
                "node3_private": node3_private,
            }
            cluster_file, known = _write_files(tmp_path_factory.mktemp("sshcfg"), lab, t)
            yield Topology(lab, cluster_file, known, t["node1"], t["node1_private"], t["node2"], t["node2_extra"], t["node3"])
        finally:
            for host in ("node2", "node3"):
                lab.docker("network", "disconnect", "-f", net, lab.container(host), check=False)
            lab.docker("network", "rm", net, check=False)
            if subnet is not None:
                lab_mod._unblock_route(subnet)  # noqa: SLF001


def _exec(cli, cluster_file: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    """`exec` with --output json: host -> its result (options, then -- and the command)."""
    proc = cli("exec", "-f", str(cluster_file), "--output", "json", *args, timeout=120)
    try:
        return proc, {r["host"]: r for r in json.loads(proc.stdout)}
    except json.JSONDecodeError:
        raise AssertionError(f"exit {proc.returncode}: {proc.stdout[-500:]} {proc.stderr[-2000:]}") from None


def test_node3_is_reachable_only_through_node1_then_node2(topo):
    # node1, the bastion, has no way to node3 any more; this machine has no route to it at all.
    probe = topo.lab.docker("exec", topo.lab.container("node1"), "timeout", "3", "bash", "-c",
                            f"exec 3<>/dev/tcp/{topo.node3}/22", check=False)  # fmt: skip
    assert probe.returncode != 0
    assert subprocess.run(["ip", "route", "get", topo.node3], capture_output=True).returncode != 0


def test_hosts_from_included_files_through_proxycommand_and_a_two_hop_proxyjump(cli, topo):
    proc, out = _exec(cli, topo.cluster_file, "--all", "--", "sh", "-c", 'echo "$(hostname) $USER $SSH_CONNECTION"')
    assert proc.returncode == 0, proc.stderr
    seen = {}
    for host, r in out.items():
        name, user, client, _, server, port = r["stdout"].split()
        assert (name, user, port) == (host, "root", "22"), r
        seen[host] = (client, server)
    operator = topo.node1.rsplit(".", 1)[0] + ".1"  # the lab network's gateway: this machine
    assert seen["node1"] == (operator, topo.node1)
    # node2 through OpenSSH's `ssh -W` on node1: its client is node1's private address.
    assert seen["node2"] == (topo.node1_private, topo.node2)
    # node3 through node1 and then node2: its client is node2, on the extra network.
    assert seen["node3"] == (topo.node2_extra, topo.node3)


def test_a_changed_key_on_the_middle_hop_is_refused_and_nothing_runs_behind_it(cli, topo, tmp_path):
    lines = topo.known_hosts.read_text().splitlines()
    forged = paramiko.Ed25519Key.from_private_key_file(str(topo.lab.cluster_file.parent / "id_ed25519"))
    lines = [ln for ln in lines if not ln.startswith(topo.node2 + " ")] + [f"{topo.node2} ssh-ed25519 {forged.get_base64()}"]
    known = _write(tmp_path / "known_hosts", "\n".join(lines) + "\n")
    doc = yaml.safe_load(topo.cluster_file.read_text())
    doc["ssh"]["known_hosts"] = str(known)
    variant = _write(tmp_path / "cluster.yaml", yaml.safe_dump(doc))
    marker = f"/tmp/clusterctl-e2e-{os.getpid()}"
    proc, out = _exec(cli, variant, "--host", "node2", "--host", "node3", "--accept-new-host-keys", "--", "touch", marker)
    assert proc.returncode == 1, proc.stderr
    assert not out["node2"]["ok"] and not out["node3"]["ok"]
    # node2's own connection (its ProxyCommand) meets the changed key...
    assert out["node2"]["error"].startswith(f"host key for root@{topo.node2} via ProxyCommand CHANGED"), out["node2"]
    # ...and so does the jump host jump2 (node2's address, through node1): one line, naming
    # the host behind it, which is skipped.
    assert out["node3"]["error"] == "skipped: bastion jump2 failed"
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert line.startswith(f"error: bastion jump2 (root@{topo.node2} via root@{topo.node1}): host key for root@{topo.node2}")
    assert "CHANGED" in line and line.endswith("; skipped the hosts behind it: node3"), line
    assert "Traceback" not in proc.stderr
    for host in ("node2", "node3"):
        assert topo.lab.docker("exec", topo.lab.container(host), "test", "-e", marker, check=False).returncode == 1
    assert known.read_text().splitlines() == lines  # nothing accepted, nothing added
