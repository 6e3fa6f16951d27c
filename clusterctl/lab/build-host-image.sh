#!/bin/sh
# Build the lab host images of one Debian release from Debian packages (no registry): a minbase
# Debian with sshd and sudo (for `lab up --user`) and, in its apt cache, Docker's packages (and
# WireGuard's userspace tools, which the wireguard network driver installs from the host's archive). Tags: $1-bare (Docker not
# installed; installing it works offline from the cache) and $1-docker (Docker installed).
# Needs root and debootstrap.
#   $1 tag prefix   $2 lab-init script   $3 mirror   $4 suite (bookworm, trixie, sid)
#   $5 Docker's packages in that suite (from trixie on the client is docker-cli, apart)
# systemd's packages wait in the cache too: lab.py builds the --init systemd variants from $1-bare.
set -eu
tag=$1 init_script=$2 mirror=${3:-http://deb.debian.org/debian} suite=${4:-bookworm} docker_pkgs=${5:-docker.io}
work=$(mktemp -d /var/tmp/clusterctl-lab-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
debootstrap --variant=minbase \
	--include=openssh-server,iproute2,iptables,ca-certificates,procps,curl,bind9-dnsutils,iputils-ping,kmod,tini,sudo \
	"$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
cp /etc/resolv.conf "$root/etc/resolv.conf"
# shellcheck disable=SC2086
chroot "$root" sh -c "apt-get clean && apt-get install -y -q --download-only --no-install-recommends $docker_pkgs wireguard-tools wireguard-go systemd systemd-sysv dbus" >"$work/apt.log" 2>&1 \
	|| { tail -n 20 "$work/apt.log" >&2; exit 1; }
: >"$root/etc/resolv.conf"
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/locale" "$root/var/log/"*.log
install -m 0755 "$init_script" "$root/usr/local/sbin/lab-init"
# Each host makes its own SSH host keys at first boot (lab-init runs ssh-keygen -A).
rm -f "$root"/etc/ssh/ssh_host_*
# A container has no login session to record; sshd must not insist on it.
sed -i 's/^session\s\+required\s\+pam_loginuid.so/session optional pam_loginuid.so/' "$root/etc/pam.d/sshd"
# Lab hosts lack CAP_SYS_RESOURCE, so Debian's /etc/init.d/docker cannot raise hard limits with
# ulimit; this file is sourced by that script and keeps the limits the container was given.
printf '%s\n' '# clusterctl lab host: the container cannot raise its hard limits; keep them.' 'ulimit() { :; }' \
	>"$root/etc/default/docker"
tar -C "$root" -c . | docker import \
	-c 'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/sbin/lab-init"]' \
	-c 'LABEL clusterctl.lab.image=host' - "$tag-bare" >/dev/null
printf 'FROM %s\nRUN DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-download -o Dpkg::Options::=--force-confold %s >/dev/null\n' "$tag-bare" "$docker_pkgs" |
	docker build -q -t "$tag-docker" - >/dev/null
echo "$tag"
