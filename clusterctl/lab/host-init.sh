#!/bin/sh
# A lab host container's start: make the container behave like a small Linux host (writable
# /sys and cgroups for an inner Docker engine, host keys, the lab's authorized key for root, or
# for LAB_USER), then either hand over to systemd as PID 1 (LAB_INIT=systemd: it starts sshd
# and, if installed, Docker), or start sshd and Docker as a plain init would (under tini).
set -u
if grep -q ' /sys sysfs ro[, ]' /proc/mounts; then mount -o remount,rw /sys; fi
# Read-only cgroup mounts must be re-bound rw (plain remount,rw fails: "mount point is busy").
awk '($3 == "cgroup" || $3 == "cgroup2" || $2 == "/sys/fs/cgroup") && $4 ~ /(^|,)ro(,|$)/ {print $2}' /proc/mounts |
while read -r mp; do mount -o remount,bind,rw "$mp" || echo "lab-init: cannot remount $mp rw" >&2; done
# The TUN device wireguard-go needs (a real host has it; a container gets it made here).
if [ ! -c /dev/net/tun ]; then mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 666 /dev/net/tun; fi
ssh-keygen -A >/dev/null
mkdir -p /root/.ssh /run/sshd
chmod 700 /root/.ssh
if [ -n "${LAB_USER:-}" ]; then
	# lab up --user: the lab's key is this user's, who has passwordless sudo (as a cloud image's
	# default user has), and root has none. '*': no password, yet not a locked account.
	id -u "$LAB_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash -p '*' "$LAB_USER"
	home=$(getent passwd "$LAB_USER" | cut -d: -f6)
	mkdir -p "$home/.ssh" && printf '%s\n' "$LAB_AUTHORIZED_KEY" > "$home/.ssh/authorized_keys"
	chmod 700 "$home/.ssh" && chmod 600 "$home/.ssh/authorized_keys" && chown -R "$LAB_USER:" "$home/.ssh"
	printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$LAB_USER" > /etc/sudoers.d/lab-user && chmod 440 /etc/sudoers.d/lab-user
	rm -f /root/.ssh/authorized_keys
elif [ -n "${LAB_AUTHORIZED_KEY:-}" ]; then printf '%s\n' "$LAB_AUTHORIZED_KEY" > /root/.ssh/authorized_keys; fi
chmod 600 /root/.ssh/authorized_keys 2>/dev/null
# The containerd image store, as an admin (or Docker 29's defaults) would set it, before Docker
# first starts; an existing daemon.json (clusterctl's keys, after a restart) is kept.
if [ "${LAB_IMAGE_STORE:-}" = containerd ] && [ ! -e /etc/docker/daemon.json ]; then
	mkdir -p /etc/docker
	printf '%s\n' '{"features": {"containerd-snapshotter": true}}' > /etc/docker/daemon.json
fi
if [ "${LAB_INIT:-}" = systemd ]; then exec /sbin/init; fi
/usr/sbin/sshd -e
if [ -x /etc/init.d/docker ]; then service docker start; fi
echo "lab-init: ready"
exec sleep infinity
