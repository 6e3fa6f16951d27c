#!/bin/sh
# Build the lab host images from Debian packages (no registry): a minbase Debian with sshd and,
# in its apt cache, the docker.io packages. Tags: $1-bare (Docker not installed; installing it
# works offline from the cache) and $1-docker (Docker installed). Needs root and debootstrap.
set -eu
tag=$1 init_script=$2 mirror=${3:-http://deb.debian.org/debian}
work=$(mktemp -d /var/tmp/clusterctl-lab-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
debootstrap --variant=minbase \
	--include=openssh-server,iproute2,iptables,ca-certificates,procps,curl,dnsutils,iputils-ping,kmod,tini \
	bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
cp /etc/resolv.conf "$root/etc/resolv.conf"
chroot "$root" sh -c 'apt-get clean && apt-get install -y -q --download-only --no-install-recommends docker.io' >"$work/apt.log" 2>&1 \
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
printf 'FROM %s\nRUN DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-download -o Dpkg::Options::=--force-confold docker.io >/dev/null\n' "$tag-bare" |
	docker build -q -t "$tag-docker" - >/dev/null
echo "$tag"
