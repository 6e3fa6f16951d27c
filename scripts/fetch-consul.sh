#!/usr/bin/env bash
# Fetch the real Consul 1.8.7 binary from Debian's bullseye archive, without touching the
# system's apt sources: a private sources file and lists dir, then `apt-get download`.
# Prints the binary's path. Idempotent.
set -euo pipefail
dest=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.cache/consul"}
if [ -x "$dest/consul" ]; then echo "$dest/consul"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$dest"
cat >"$work/bullseye.sources" <<SRC
Types: deb
URIs: ${DEBIAN_MIRROR:-http://deb.debian.org/debian}
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
opts=(-o "Dir::Etc::sourcelist=$work/bullseye.sources" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/lists"
	-o Debug::NoLocking=1 -o APT::Sandbox::User=root)
apt-get "${opts[@]}" update -qq >/dev/null
(cd "$work" && apt-get "${opts[@]}" download consul >/dev/null 2>&1)
dpkg-deb -x "$work"/consul_*.deb "$work/x"
install -m 0755 "$work/x/usr/bin/consul" "$dest/consul"
echo "$dest/consul"
