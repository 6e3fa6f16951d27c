"""The local lab: N SSH-reachable hosts on this machine, each a container with sshd and its own
Docker engine (docker-in-docker), on a lab network of their own with fixed addresses.

With --bastion, node1 is a jump host: it sits on the lab network and on a second, private one;
the other hosts sit on the private network only, which this machine cannot reach (an internal
Docker network with no address on this machine's side, and an `unreachable` route for its
subnet so nothing for it leaves by the default route). The cluster file reaches them through
node1 (`bastion: node1`).

The lab is a product feature for trying clusterctl and for its end-to-end tests. It talks to the
local engine with the Debian docker CLI; everything it creates carries the label clusterctl.lab.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from clusterctl.errors import UserError
from clusterctl.state import state_root

LABEL = "clusterctl.lab"
IMAGE_REPO = "clusterctl-lab-host"
# Lab networks are carved from this range, skipping any subnet already in use on this machine.
LAB_RANGE = ipaddress.ip_network("10.213.0.0/16")
FIRST_HOST_OCTET = 11
# What a host container needs to run its own Docker engine without --privileged (which fails
# where the VM lacks CAP_SYS_RESOURCE). The engine's data and containerd's (its image store,
# when used) each need a real filesystem: overlay mounts fail on the container's own overlay.
DIND_FLAGS = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
    "-v", "/var/lib/docker", "-v", "/var/lib/containerd",
    # /run is a tmpfs, as on a real host: a restarted host must not find the pid files and
    # sockets of its last boot (dockerd refuses to start over a stale pid that is now reused).
    "--tmpfs", "/run",
)  # fmt: skip


def docker_cli() -> str:
    """Debian's client talks to Debian's engine without API surprises; override with CLUSTERCTL_DOCKER."""
    explicit = os.environ.get("CLUSTERCTL_DOCKER")
    if explicit:
        return explicit
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if not found:
        raise UserError("the lab needs Docker on this machine: docker CLI not found (run scripts/setup.sh)")
    return found


def _docker(*args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([docker_cli(), *args], capture_output=True, input=input)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"docker {args[0]} failed: {err[-1] if err else proc.returncode}")
    return proc


def _engine_ready() -> None:
    proc = subprocess.run([docker_cli(), "info", "--format", "{{.ServerVersion}}"], capture_output=True)
    if proc.returncode != 0:
        raise UserError("the lab needs a running Docker engine on this machine (start dockerd; see scripts/setup.sh)")


def labs_root() -> Path:
    return state_root() / "labs"


def check_lab_name(name: str) -> None:
    """A lab name names a directory under the labs root: only what a cluster name may be (no
    `..`, no `/`, not empty), or `lab down` could remove far more than the lab."""
    from clusterctl.config.models import check_name

    try:
        check_name(name)
    except ValueError as exc:
        raise UserError(f"lab name: {exc}") from None


def lab_dir(name: str) -> Path:
    check_lab_name(name)
    path = labs_root() / name
    if path.parent != labs_root():
        raise UserError(f"lab name: {name!r} is not one directory name")
    return path


def _asset(name: str) -> Path:
    return Path(str(resources.files("clusterctl.lab").joinpath(name)))


@dataclass(frozen=True)
class HostOS:
    """A kind of lab host: a Debian release, and Docker as that release packages it."""

    name: str  # what --os takes
    suite: str  # debootstrap's suite
    docker_packages: str  # from trixie on, the client is docker-cli, apart from docker.io
    docker_major: int  # of the packaged Docker: the containerd image store needs 24 or later
    # Its systemd refuses to run on a cgroup v1 hierarchy (systemd 258 and later).
    systemd_needs_cgroup2: bool = False


HOST_OSES = {
    o.name: o
    for o in (
        HostOS("debian-12", "bookworm", "docker.io", 20),
        HostOS("debian-13", "trixie", "docker.io docker-cli", 26),
        HostOS("debian-sid", "sid", "docker.io docker-cli", 28, systemd_needs_cgroup2=True),
    )
}
DEFAULT_OS = "debian-12"
IMAGE_STORES = ("classic", "containerd")
# plain: tini runs lab-init, which starts sshd and Docker's init script. systemd: systemd is PID 1
# (as on real hosts), started the way kind's node images start it.
INITS = ("plain", "systemd")
SYSTEMD_FLAGS = ("-t", "--tmpfs", "/run/lock", "--cgroupns", "private")
# The systemd variants, built from the kind's bare image with the packages already in its apt
# cache; policy-rc.d keeps the build from starting services (enabling them for boot still works).
_NO_START = "printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d"
_APT = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-download -o Dpkg::Options::=--force-confold"
SYSTEMD_DOCKERFILE = f"""FROM {{base}}
RUN {_NO_START} && {_APT} systemd systemd-sysv dbus >/dev/null && rm -f /usr/sbin/policy-rc.d && : >/etc/machine-id && rm -f /var/lib/dbus/machine-id
ENV LAB_INIT=systemd container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/sbin/lab-init"]
"""
SYSTEMD_DOCKER_DOCKERFILE = f"""FROM {{base}}
RUN {_NO_START} && {_APT} {{packages}} >/dev/null && rm -f /usr/sbin/policy-rc.d
"""
CONTAINERD_STORE_MIN_DOCKER = 24


def _cgroup2() -> bool:
    """Whether this machine (so every lab host) has the unified cgroup v2 hierarchy."""
    return Path("/sys/fs/cgroup/cgroup.controllers").exists()


def parse_os_list(value: str) -> tuple[HostOS, ...]:
    """--os debian-12,debian-13: the kinds, cycled over the hosts (node1 the first)."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise UserError(f"--os: give one or more of {', '.join(HOST_OSES)}")
    unknown = [n for n in names if n not in HOST_OSES]
    if unknown:
        raise UserError(f"--os: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(HOST_OSES)}")
    return tuple(HOST_OSES[n] for n in names)


def image_tag(host_os: HostOS = HOST_OSES[DEFAULT_OS]) -> str:
    """The host image is named by a digest of the files that build it, so a change rebuilds it."""
    h = hashlib.sha256()
    for asset in ("build-host-image.sh", "host-init.sh"):
        h.update(_asset(asset).read_bytes())
    h.update(f"{host_os.suite} {host_os.docker_packages} {SYSTEMD_DOCKERFILE} {SYSTEMD_DOCKER_DOCKERFILE}".encode())
    return f"{IMAGE_REPO}:{h.hexdigest()[:12]}-{host_os.name}"


def ensure_image(log=print, host_os: HostOS = HOST_OSES[DEFAULT_OS]) -> str:  # noqa: ANN001 - a print-like callable
    """Build the host images of one kind once; later labs (and test runs) reuse them."""
    tag = image_tag(host_os)
    have = all(_docker("image", "inspect", f"{tag}-{v}", check=False).returncode == 0 for v in ("bare", "docker"))
    if have:
        return tag
    if os.geteuid() != 0:
        raise UserError("building the lab host image needs root (debootstrap, chroot)")
    if not shutil.which("debootstrap"):
        raise UserError("building the lab host image needs debootstrap (apt-get install debootstrap)")
    log(f"building lab host image {tag} from Debian {host_os.suite} packages (once; about a minute)")
    env = dict(os.environ, PATH=f"{Path(docker_cli()).parent}:{os.environ.get('PATH', '')}")
    mirror = os.environ.get("CLUSTERCTL_LAB_MIRROR", "http://deb.debian.org/debian")
    proc = subprocess.run(
        ["sh", str(_asset("build-host-image.sh")), tag, str(_asset("host-init.sh")), mirror, host_os.suite, host_os.docker_packages],
        capture_output=True,
        env=env,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"building the lab host image failed: {err[-1] if err else proc.returncode}")
    return tag


def ensure_systemd_images(tag: str, host_os: HostOS, log=print) -> None:  # noqa: ANN001
    """The kind's -systemd-bare and -systemd-docker images, from its -bare one (once)."""
    steps = (
        ("systemd-bare", SYSTEMD_DOCKERFILE.format(base=f"{tag}-bare")),
        ("systemd-docker", SYSTEMD_DOCKER_DOCKERFILE.format(base=f"{tag}-systemd-bare", packages=host_os.docker_packages)),
    )
    for variant, dockerfile in steps:
        if _docker("image", "inspect", f"{tag}-{variant}", check=False).returncode != 0:
            log(f"building lab host image {tag}-{variant}")
            _docker("build", "-q", "-t", f"{tag}-{variant}", "-", input=dockerfile.encode())


@dataclass(frozen=True)
class LabHost:
    name: str
    container: str
    # Where SSH connects: the lab network's address, or (behind the bastion) the private one.
    address: str
    # The host's address on the private network (a lab with a bastion), else None.
    private_address: str | None = None


def _used_networks() -> list[ipaddress.IPv4Network]:
    used: list[ipaddress.IPv4Network] = []
    ids = _docker("network", "ls", "-q").stdout.decode().split()
    if ids:
        for net in json.loads(_docker("network", "inspect", *ids).stdout):
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                try:
                    used.append(ipaddress.ip_network(cfg.get("Subnet", ""), strict=False))
                except ValueError:
                    pass
    proc = subprocess.run(["ip", "-4", "-o", "route", "show"], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        dest = line.split()[0]
        if dest != "default":
            try:
                used.append(ipaddress.ip_network(dest, strict=False))
            except ValueError:
                pass
    return [n for n in used if n.version == 4]


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for candidate in LAB_RANGE.subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise UserError(f"no free /24 left in {LAB_RANGE} for a lab network")


def network_name(name: str) -> str:
    return f"clusterctl-lab-{name}"


def private_network_name(name: str) -> str:
    # "clusterctl-labprivate-" cannot be another lab's network_name (those go on with "lab-").
    return f"clusterctl-labprivate-{name}"


def _network_subnet(net: str) -> ipaddress.IPv4Network | None:
    proc = _docker("network", "inspect", net, check=False)
    if proc.returncode != 0:
        return None
    cfg = json.loads(proc.stdout)[0]["IPAM"]["Config"]
    return ipaddress.ip_network(cfg[0]["Subnet"])


def _ensure_network(name: str, private: bool = False) -> ipaddress.IPv4Network:
    net = private_network_name(name) if private else network_name(name)
    subnet = _network_subnet(net)
    if subnet is None:
        subnet = _free_subnet()
        # A private network: --internal (no way out, no port publishing) and no address for
        # this machine on its bridge, so this machine has no route into it.
        extra = ("--internal", "-o", "com.docker.network.bridge.inhibit_ipv4=true") if private else ()
        _docker("network", "create", *extra, "--subnet", str(subnet), "--label", f"{LABEL}={name}", net)
    if private:
        _block_route(subnet)
    return subnet


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def _block_route(subnet: ipaddress.IPv4Network) -> None:
    """Without it, this machine would send packets for the private subnet out of its default
    route; with it, connecting there fails at once ("network is unreachable")."""
    if _route_blocked(subnet):
        return
    proc = _ip("route", "add", "unreachable", str(subnet))
    if proc.returncode != 0:
        raise UserError(
            f"lab --bastion: cannot add route 'unreachable {subnet}' ({proc.stderr.strip() or 'ip failed'}); "
            "the lab needs root for its private network"
        )


def _route_blocked(subnet: ipaddress.IPv4Network) -> bool:
    lines = _ip("-4", "route", "show", "type", "unreachable").stdout.splitlines()
    return any(line.split()[1:2] == [str(subnet)] for line in lines)


def _unblock_route(subnet: ipaddress.IPv4Network) -> None:
    if _route_blocked(subnet):
        _ip("route", "del", "unreachable", str(subnet))


def _networks_of(container: str) -> set[str]:
    out = _docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout
    return set(json.loads(out or b"{}") or {})


def check_lab_user(user: str | None) -> None:
    """--user: a name the cluster file can take, and not root (which is the lab's default)."""
    from clusterctl.config.models import check_user

    if user is None:
        return
    try:
        check_user(user)
    except ValueError as exc:
        raise UserError(f"--user: {exc}") from None
    if user == "root":
        raise UserError("--user: root is the lab's user without --user; name another (e.g. ops)")


def _check_layout(name: str, hosts: int, bastion: bool, user: str | None) -> None:
    """Refuse, before changing anything, to turn an existing lab into the other kind."""
    for i in range(1, hosts + 1):
        cname = container_name(name, i)
        proc = _docker("inspect", "-f", f'{{{{index .Config.Labels "{LABEL}.user"}}}}', cname, check=False)
        if proc.returncode != 0:
            continue
        has = proc.stdout.decode().strip() or None
        if has != user:
            raise UserError(
                f"lab {name} exists with {f'--user {has}' if has else 'root'} as its SSH user; "
                f"remove it first: clusterctl lab down --name {name}"
            )
        if i == 1:
            continue
        is_behind = _networks_of(cname) == {private_network_name(name)}
        if is_behind != bastion:
            raise UserError(
                f"lab {name} exists {'without' if bastion else 'with'} --bastion; "
                f"remove it first: clusterctl lab down --name {name}"
            )


def _ensure_key(directory: Path) -> Path:
    key = directory / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "clusterctl-lab", "-f", str(key)], check=True)
    return key


def _wait_for_sshd(addresses: list[str], timeout: float = 60.0, via: str | None = None) -> None:
    """Wait until each address answers with an SSH banner: from this machine, or (`via`) from
    inside that lab container (the bastion: the only way to the private network)."""
    deadline = time.monotonic() + timeout
    waiting = set(addresses)
    while waiting:
        if via is None:
            for addr in sorted(waiting):
                try:
                    with socket.create_connection((addr, 22), timeout=1) as s:
                        s.settimeout(2)
                        if s.recv(64).startswith(b"SSH-"):
                            waiting.discard(addr)
                except OSError:
                    pass
        else:
            script = 'for a; do timeout 2 bash -c \'exec 3<>"/dev/tcp/$0/22" && head -c 4 <&3\' "$a" 2>/dev/null | grep -q SSH- && echo "$a"; done'
            proc = _docker("exec", via, "sh", "-c", script, "sh", *sorted(waiting), check=False)
            waiting -= set(proc.stdout.decode().split())
        if waiting and time.monotonic() > deadline:
            raise UserError(f"lab hosts did not start sshd within {timeout:g}s: {', '.join(sorted(waiting))}")
        if waiting:
            time.sleep(0.2)


def _host_keys(container: str, address: str) -> list[str]:
    """Read the host's public keys from inside the container: the lab trusts what it created."""
    out = _docker("exec", container, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub").stdout.decode()
    return [f"{address} {' '.join(line.split()[:2])}" for line in out.splitlines() if line.strip()]


def container_name(lab: str, index: int) -> str:
    return f"clusterctl-lab-{lab}-{index}"


def up(
    name: str,
    hosts: int = 3,
    bare: bool = False,
    log=print,  # noqa: ANN001
    bastion: bool = False,
    oses: str = DEFAULT_OS,
    image_store: str = "classic",
    init: str = "plain",
    user: str | None = None,
    example: bool = False,
) -> Path:
    """Create (or complete) the lab and write its cluster file; returns the file's path.

    bastion: node1 is the only host this machine reaches; the others sit on a private network
    behind it (see the module's docstring). oses: a comma list of HOST_OSES, cycled over the
    hosts. image_store: containerd puts the containerd image store on the hosts whose Docker
    has it (24 and later); the others keep the classic store. init: systemd runs systemd as each
    host's PID 1. user: SSH goes to this user, who has passwordless sudo, instead of root
    (whose login the lab then refuses). An existing host keeps its kind. example: the file
    carries the hello example (lab/example.py), when this machine has what it needs."""
    if hosts < 1 or hosts > 50:
        raise UserError(f"--hosts must be between 1 and 50, got {hosts}")
    if bastion and hosts < 2:
        raise UserError("--bastion needs at least 2 hosts (node1 is the bastion)")
    check_lab_name(name)
    check_lab_user(user)
    kinds = parse_os_list(oses)
    if image_store not in IMAGE_STORES:
        raise UserError(f"--image-store: choose {' or '.join(IMAGE_STORES)}, not {image_store!r}")
    if init not in INITS:
        raise UserError(f"--init: choose {' or '.join(INITS)}, not {init!r}")
    if init == "systemd" and not _cgroup2():
        old = [k.name for k in kinds if k.systemd_needs_cgroup2]
        if old:
            raise UserError(
                f"--init systemd: the systemd of {', '.join(old)} refuses a cgroup v1 hierarchy, and this machine has "
                "cgroup v1; choose debian-12 or debian-13"
            )
    _engine_ready()
    # Each kind's image is built once; kinds not built yet are built side by side.
    unique = list({k.name: k for k in kinds}.values())
    with ThreadPoolExecutor(max_workers=len(unique)) as pool:
        tags = dict(zip((k.name for k in unique), pool.map(lambda k: ensure_image(log, k), unique)))
        if init == "systemd":
            list(pool.map(lambda k: ensure_systemd_images(tags[k.name], k, log), unique))
    directory = lab_dir(name)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = _ensure_key(directory)
    pub = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True).stdout.strip()
    _check_layout(name, hosts, bastion, user)
    subnet = _ensure_network(name)
    private = _ensure_network(name, private=True) if bastion else None
    lab_hosts: list[LabHost] = []
    behind: list[LabHost] = []  # hosts on the private network only
    for i in range(1, hosts + 1):
        cname = container_name(name, i)
        address = str(subnet.network_address + FIRST_HOST_OCTET + i - 1)
        private_address = str(private.network_address + FIRST_HOST_OCTET + i - 1) if private else None
        host = LabHost(f"node{i}", cname, address, private_address)
        if private_address and i > 1:
            host = LabHost(f"node{i}", cname, private_address, private_address)
            behind.append(host)
        lab_hosts.append(host)
        state = _docker("inspect", "-f", "{{.State.Running}}", cname, check=False)
        if state.returncode != 0:
            variant = ("systemd-" if init == "systemd" else "") + ("bare" if bare else "docker")
            kind = kinds[(i - 1) % len(kinds)]
            store = image_store if kind.docker_major >= CONTAINERD_STORE_MIN_DOCKER else "classic"
            net = private_network_name(name) if host in behind else network_name(name)
            _docker(
                "run", "-d", "--name", cname, "--hostname", host.name,
                "--network", net, "--ip", host.address,
                "--label", f"{LABEL}={name}", "--label", f"{LABEL}.host={host.name}",
                "--label", f"{LABEL}.os={kind.name}", "--label", f"{LABEL}.image-store={store}", "--label", f"{LABEL}.init={init}",
                *(("--label", f"{LABEL}.user={user}", "-e", f"LAB_USER={user}") if user else ()),
                "-e", f"LAB_AUTHORIZED_KEY={pub}", "-e", f"LAB_IMAGE_STORE={store}",
                *DIND_FLAGS, *(SYSTEMD_FLAGS if init == "systemd" else ()), f"{tags[kind.name]}-{variant}",
            )  # fmt: skip
        elif state.stdout.decode().strip() != "true":
            _docker("start", cname)
        if private_address and i == 1 and private_network_name(name) not in _networks_of(cname):
            # The bastion: on both networks (its sshd listens on every address it has).
            _docker("network", "connect", "--ip", private_address, private_network_name(name), cname)
    _wait_for_sshd([h.address for h in lab_hosts if h not in behind])
    if behind:
        _wait_for_sshd([h.address for h in behind], via=lab_hosts[0].container)
    known = directory / "known_hosts"
    # Each host's key under the address SSH connects to (a host behind the bastion: its private
    # address, which is what paramiko checks through the bastion's direct-tcpip channel).
    lines = [line for h in lab_hosts for line in _host_keys(h.container, h.address)]
    known.write_text("\n".join(lines) + "\n")
    cluster_file = directory / "cluster.yaml"
    extra: dict = {}
    if example:
        from clusterctl.lab.example import example_sections

        extra, why_not = example_sections()
        if why_not:
            log(f"lab {name}: without the hello example: {why_not}")
    cluster_file.write_text(render_cluster_file(name, lab_hosts, key, known, user, extra))
    return cluster_file


def render_cluster_file(name: str, hosts: list[LabHost], key: Path, known: Path, user: str | None = None, extra: dict | None = None) -> str:
    doc = {
        "name": f"lab-{name}",
        "ssh": {
            "user": user or "root",
            "identity_file": str(key),
            "known_hosts": str(known),
            "config_file": "",
            "connect_timeout": 5,
        },
        "hosts": [_host_entry(h, hosts[0]) for h in hosts],
        **(extra or {}),
    }
    header = f"# clusterctl lab {name!r}: written by `clusterctl lab up`; removed by `clusterctl lab down --name {name}`.\n"
    if any(h.private_address for h in hosts):
        header += "# node1 is the bastion: the other hosts are on a private network reachable only through it.\n"
    if user:
        header += f"# SSH goes to {user}, who has passwordless sudo; root has no login.\n"
    if extra and extra.get("services"):
        header += "# The article's example: the express hello app as a service, node in the filebox.\n"
    return header + yaml.safe_dump(doc, sort_keys=False)


def _host_entry(h: LabHost, first: LabHost) -> dict:
    entry: dict = {"name": h.name, "address": h.address}
    if h.private_address:
        # The cluster talks on the private network (node1's SSH address is not on it).
        entry["cluster_address"] = h.private_address
        if h is not first:
            entry["bastion"] = first.name
    entry.update({"roles": ["server"], "labels": {"provider": "lab"}})
    return entry


def down(name: str) -> list[str]:
    """Remove the lab's containers (with their volumes), networks, route and files; returns what went."""
    check_lab_name(name)
    removed: list[str] = []
    ids = _docker("ps", "-aq", "--filter", f"label={LABEL}={name}").stdout.decode().split()
    if ids:
        _docker("rm", "-f", "-v", *ids)
        removed += [f"container {i[:12]}" for i in ids]
    private = _network_subnet(private_network_name(name))
    if private is not None:
        _unblock_route(private)
        removed.append(f"route unreachable {private}")
    for net in (network_name(name), private_network_name(name)):
        if _docker("network", "inspect", net, check=False).returncode == 0:
            _docker("network", "rm", net)
            removed.append(f"network {net}")
    directory = lab_dir(name)
    if directory.exists():
        shutil.rmtree(directory)
        removed.append(str(directory))
    return removed


@dataclass(frozen=True)
class LabInfo:
    name: str
    hosts: int
    running: int
    cluster_file: str | None


def ls() -> list[LabInfo]:
    names = set()
    for line in _docker("network", "ls", "--filter", f"label={LABEL}", "--format", '{{.Label "clusterctl.lab"}}').stdout.decode().split():
        names.add(line)
    if labs_root().exists():
        names.update(p.name for p in labs_root().iterdir() if p.is_dir())
    out = []
    for n in sorted(names):
        states = _docker("ps", "-a", "--filter", f"label={LABEL}={n}", "--format", "{{.State}}").stdout.decode().split()
        f = labs_root() / n / "cluster.yaml"
        out.append(LabInfo(n, len(states), states.count("running"), str(f) if f.exists() else None))
    return out
