"""Argv builders and host files of the wireguard network driver (planned by network/drivers/wireguard.py).

On each host, under /etc/clusterctl/wireguard/ (0700): IFACE.key, the private key, made there
under umask 077 and never read by anything but `wg`; IFACE.conf, the peers in `wg setconf`
format with a `# host NAME` line above each (public keys and endpoints: nothing secret); and
IFACE.sh, the script that brings the tunnel to what the conf says, run by `up` and, on systemd
hosts, at boot by clusterctl-wireguard-IFACE.service. The private key reaches `wg syncconf`
through a pipe, never a command line; syncconf changes only what differs, so other peers'
tunnels are not disturbed when one is added or removed.

The kernel's WireGuard where the host has it; wireguard-go (userspace, a TUN device) where not.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from clusterctl.commands.base import Cmd, sh, sh_args
from clusterctl.commands.docker import APT_ENV, APT_KEEP_CONFIG

DIR = "/etc/clusterctl/wireguard"
# Keepalives keep NAT mappings open and make a handshake happen as soon as both ends know each other.
KEEPALIVE = 25
# A session is rekeyed every 2 minutes while traffic flows, and keepalives flow every 25 s: a
# peer whose last handshake is older than this is not talking to us.
STALE_AFTER = 180


def interface_name(network: str) -> str:
    """`wg-` and up to 12 characters of the network's name (IFNAMSIZ is 16)."""
    return "wg-" + re.sub(r"[^A-Za-z0-9_-]", "-", network)[:12]


def key_path(iface: str) -> str:
    return f"{DIR}/{iface}.key"


def conf_path(iface: str) -> str:
    return f"{DIR}/{iface}.conf"


def script_path(iface: str) -> str:
    return f"{DIR}/{iface}.sh"


def unit_name(iface: str) -> str:
    return f"clusterctl-wireguard-{iface}.service"


def unit_path(iface: str) -> str:
    """The unit beside the other files (so the probe sees its hash); `systemctl enable PATH`
    links it into /etc/systemd/system."""
    return f"{DIR}/{unit_name(iface)}"


@dataclass(frozen=True)
class Peer:
    host: str  # the cluster host it is, for people and for naming a pair that cannot talk
    public_key: str
    endpoint: str  # ADDRESS:PORT ([IPv6]:PORT)
    allowed_ips: tuple[IPv4Network, ...]


def render_conf(listen_port: int, peers: Sequence[Peer]) -> str:
    """IFACE.conf: the interface's port and its peers, in file order (no private key)."""
    lines = ["[Interface]", f"ListenPort = {listen_port}"]
    for p in peers:
        lines += [
            "",
            f"# host {p.host}",
            "[Peer]",
            f"PublicKey = {p.public_key}",
            f"Endpoint = {p.endpoint}",
            f"AllowedIPs = {', '.join(str(n) for n in p.allowed_ips)}",
            f"PersistentKeepalive = {KEEPALIVE}",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ConfPeer:
    host: str | None
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]


def parse_conf(text: str) -> tuple[ConfPeer, ...]:
    """The peers of an IFACE.conf this module wrote (a host that did not answer keeps its own)."""
    peers: list[ConfPeer] = []
    host: str | None = None
    cur: dict[str, str] | None = None

    def flush() -> None:
        if cur is not None and cur.get("publickey"):
            ips = tuple(x.strip() for x in cur.get("allowedips", "").split(",") if x.strip())
            peers.append(ConfPeer(cur.get("#host"), cur["publickey"], cur.get("endpoint"), ips))

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# host "):
            host = line[len("# host "):].strip() or None
        elif line == "[Peer]":
            flush()
            cur = {"#host": host} if host else {}
            host = None
        elif line.startswith("[") and line.endswith("]"):
            flush()
            cur = None
        elif cur is not None and "=" in line:
            k, v = line.split("=", 1)
            cur[k.strip().lower()] = v.strip()
    flush()
    return tuple(peers)


def up_script(
    iface: str, address: IPv4Address, mtu: int, cidr: IPv4Network, routes: Sequence[IPv4Network], after_docker: Sequence[Cmd] = ()
) -> str:
    """IFACE.sh: the tunnel as IFACE.conf says, from any state (none, half made, running).

    Routes to the other hosts' subnets go through the tunnel with this host's mesh address as
    their source, so the host itself (Consul, health checks) is reached over the mesh too.
    Routes through the tunnel into the cluster CIDR that are not wanted any more go.
    `after_docker`: commands (the cluster's firewall rules) run once Docker's chains exist, so a
    rebooted host forwards cluster traffic again before anyone runs `up`.
    """
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# Written by clusterctl (the wireguard network driver); run by `clusterctl up` and at boot.",
        "set -eu",
        f"iface={q(iface)}",
        "if ! ip link show dev \"$iface\" >/dev/null 2>&1; then",
        "  if ! ip link add dev \"$iface\" type wireguard 2>/dev/null; then",
        "    # No kernel WireGuard: the userspace one (it daemonizes; it must not hold our output).",
        "    WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go \"$iface\" </dev/null >/dev/null 2>&1 ||",
        "      { echo \"cannot make $iface: no WireGuard in the kernel, and wireguard-go failed (no /dev/net/tun?)\" >&2; exit 1; }",
        "  fi",
        "fi",
        f"{{ printf '[Interface]\\nPrivateKey = %s\\n' \"$(cat {q(key_path(iface))})\"; "
        f"sed 1d {q(conf_path(iface))}; }} | wg syncconf \"$iface\" /dev/stdin",
        f"ip link set dev \"$iface\" mtu {int(mtu)} up",
        f"ip -4 addr replace {q(str(address))}/32 dev \"$iface\"",
    ]
    for r in routes:
        lines.append(f"ip -4 route replace {q(str(r))} dev \"$iface\" src {q(str(address))}")
    wanted = " ".join(q(str(r)) for r in routes)
    lines += [
        f"for r in $(ip -4 route show root {q(str(cidr))} dev \"$iface\" | cut -d' ' -f1); do",
        f"  case \" {wanted} \" in *\" $r \"*) ;; *) ip -4 route del \"$r\" dev \"$iface\" || true ;; esac",
        "done",
    ]
    if after_docker:
        lines.append("if iptables -w -S DOCKER-USER >/dev/null 2>&1; then")
        lines += [f"  {c.render()}" for c in after_docker]
        lines.append("fi")
    return "\n".join(lines) + "\n"


def unit_text(iface: str) -> str:
    """A oneshot unit that runs IFACE.sh at boot, once Docker has made its firewall chains (its
    bridge network then holds the mesh address too, so Consul can bind it from the start)."""
    return (
        "[Unit]\n"
        f"Description=clusterctl WireGuard mesh ({iface})\n"
        "Wants=network-online.target\nAfter=network-online.target docker.service\n\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        f"ExecStart=/bin/sh {script_path(iface)}\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def install(userspace: bool) -> Cmd:
    """wireguard-tools (and, without the kernel module, wireguard-go) from the host's archive.

    Tried with the lists the host has first, then after `apt-get update` (as Docker's install is).
    """
    pkgs = ["wireguard-tools", *(["wireguard-go"] if userspace else [])]
    install_ = shlex.join([*APT_ENV, "apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_KEEP_CONFIG, *pkgs])
    return sh(
        f't=$(mktemp -d) && trap \'rm -rf "$t"\' EXIT && {{ {install_} >"$t/apt.log" 2>&1 || '
        f'{{ env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$t/apt.log" 2>&1 && {install_} >>"$t/apt.log" 2>&1; }} || '
        f'{{ echo "no WireGuard here: {" and ".join(pkgs)} cannot be installed from this host\'s archive '
        f'($(grep -E "^E:" "$t/apt.log" | tail -n 1))" >&2; exit 1; }}; }}',
        description=f"install {' and '.join(pkgs)} from the distribution's packages",
    )


def make_key(iface: str) -> Cmd:
    """The host's private key, made on the host (umask 077); kept if it exists."""
    return sh_args(
        'umask 077; mkdir -p "$(dirname "$1")" && if [ ! -s "$1" ]; then wg genkey >"$1.tmp" && mv -f "$1.tmp" "$1"; fi',
        key_path(iface),
        description="make this host's WireGuard private key (it never leaves the host)",
    )


def run_up(iface: str) -> Cmd:
    return Cmd(("sh", script_path(iface)), f"bring the WireGuard mesh {iface} to its configuration")


def enable_unit(iface: str) -> Cmd:
    return Cmd(("systemctl", "enable", unit_path(iface)), "bring the mesh back at boot (systemd)")


# $1 interface, $2 this host's name, $3 seconds, then NAME PUBKEY ENDPOINT triples.
WAIT_HANDSHAKES = (
    'iface=$1; me=$2; limit=$3; shift 3; start=$(date +%s); '
    'while :; do hs=$(wg show "$iface" latest-handshakes 2>/dev/null) || hs=""; now=$(date +%s); missing=""; k=0; '
    'for x in "$@"; do case $k in 0) name=$x ;; 1) key=$x ;; *) '
    't=$(printf "%s\\n" "$hs" | awk -v k="$key" \'$1 == k {print $2}\'); '
    f'if [ -z "$t" ] || [ "$t" = 0 ] || [ $((now - t)) -gt {STALE_AFTER} ]; then missing="$missing, $name ($x)"; fi ;; esac; '
    'k=$(((k + 1) % 3)); done; '
    '[ -z "$missing" ] && exit 0; '
    'if [ $(($(date +%s) - start)) -ge "$limit" ]; then '
    'echo "no WireGuard handshake between $me and ${missing#, } within ${limit}s: is UDP open between them?" >&2; exit 1; fi; '
    'sleep 0.5; done'
)


def wait_handshakes(iface: str, me: str, peers: Sequence[Peer], timeout: float) -> Cmd:
    """Wait until every peer has completed a handshake with this host, naming the pairs that did not."""
    args: list[str] = []
    for p in peers:
        args += [p.host, p.public_key, p.endpoint]
    return sh_args(WAIT_HANDSHAKES, iface, me, str(max(1, int(round(timeout)))), *args,
                   description=f"wait for a handshake with {len(peers)} peer(s)")  # fmt: skip


# $1 interface, $2 "systemd" when the host runs it. The link goes (a userspace daemon exits
# when its socket goes); the unit is disabled and removed; the files go with /etc/clusterctl.
REMOVE = (
    'iface=$1; if [ "$2" = systemd ]; then systemctl disable "clusterctl-wireguard-$iface.service" >/dev/null 2>&1 || true; fi; '
    'ip link del dev "$iface" 2>/dev/null || true; rm -f "/var/run/wireguard/$iface.sock"; '
    f'rm -f "{DIR}/$iface.key" "{DIR}/$iface.conf" "{DIR}/$iface.sh" "{DIR}/clusterctl-wireguard-$iface.service"'
)


def remove(iface: str, systemd: bool) -> Cmd:
    return sh_args(REMOVE, iface, "systemd" if systemd else "-", description=f"remove the WireGuard mesh {iface}", check=False)
