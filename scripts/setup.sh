#!/usr/bin/env bash
# Set up this machine for clusterctl and its lab: Debian packages, a running Docker engine,
# and the project's virtualenv in .venv. Idempotent: re-running skips what is already there.
# Needs root (apt-get, dockerd). Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

# tcpdump: the e2e tests look at what crosses the lab's bridge (encrypted or not).
# nodejs (+ npm): the default lab's hello example puts node in its filebox.
packages=(docker.io busybox-static debootstrap openssh-client iproute2 iptables dnsutils ca-certificates vagrant tcpdump nodejs)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm: Debian's own package, unless a nodejs that brings its own (NodeSource's) is installed.
command -v npm >/dev/null || missing+=(npm)
if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
	missing+=(python3 python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's client matches Debian's engine; a newer client elsewhere on PATH is not used.
DOCKER=/usr/bin/docker
if ! "$DOCKER" info >/dev/null 2>&1; then
	if [ -d /run/systemd/system ]; then
		log "starting docker (systemd)"
		systemctl start docker
	else
		log "starting dockerd (no systemd here; log: /var/log/clusterctl-dockerd.log)"
		setsid dockerd >/var/log/clusterctl-dockerd.log 2>&1 < /dev/null &
	fi
	for _ in $(seq 1 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.5; done
	"$DOCKER" info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/clusterctl-dockerd.log"; exit 1; }
fi

if [ ! -x .venv/bin/python ]; then
	log "creating .venv"
	python3 -m venv .venv
fi
stamp=.venv/.clusterctl-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
	log "installing clusterctl and its test dependencies into .venv"
	.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch "$stamp"
fi
# Byte-compiled as a wheel install would be: this environment may set PYTHONDONTWRITEBYTECODE,
# and then every command compiles clusterctl's modules again (~0.1 s of each run's start-up).
# Python checks each .pyc against its source, so an edited module is compiled afresh.
.venv/bin/python -m compileall -q clusterctl >/dev/null
# The real Consul 1.8.7 (Debian bullseye), for the filebox and the Consul phase.
consul_bin=$(bash scripts/fetch-consul.sh)
# On PATH, where the filebox looks for `consul` by default (a user brings their own binary).
if ! cmp -s "$consul_bin" /usr/local/bin/consul; then install -m 0755 "$consul_bin" /usr/local/bin/consul; fi

# The article's express example: its node_modules, from package-lock.json.
if [ ! -d examples/hello/node_modules ] && command -v npm >/dev/null; then
	log "npm ci in examples/hello"
	(cd examples/hello && npm ci --omit=dev --no-audit --no-fund >/dev/null 2>&1) || log "npm ci failed: the hello image tests will skip"
fi

log "ready: consul $("$consul_bin" version | head -n 1 | cut -d' ' -f2), $(.venv/bin/clusterctl --help >/dev/null && echo clusterctl OK), docker $("$DOCKER" version --format '{{.Server.Version}}')"
