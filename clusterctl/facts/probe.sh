# clusterctl probe: prints one JSON object of host facts. POSIX sh, no python needed on the host.
# Runs read-only; one round trip per host per `up`. Docker's own JSON is embedded as it comes.
export LC_ALL=C PATH="$PATH:/usr/sbin:/sbin:/usr/local/bin"
# awk's str(s): s as a JSON string (control characters but tab dropped; index(), not gsub, for the
# backslashes: awks differ in what a backslash means in gsub's replacement).
AWK_STR='function rep(s, from, to,    out, i) { out = ""; while ((i = index(s, from)) > 0) { out = out substr(s, 1, i - 1) to; s = substr(s, i + length(from)) }; return out s }
function str(s) { gsub(/[\001-\010\012-\037]/, "", s); return "\"" rep(rep(rep(s, "\\", "\\\\"), "\"", "\\\""), "\t", "\\t") "\"" }
'
js() { # JSON string from $1; no process for the common value (nothing to escape)
	case "$1" in
	*[\\\"]* | *[![:print:]]*) printf '%s' "$1" | awk "$AWK_STR"'{ out = out $0 } END { printf "%s", str(out) }' ;;
	*) printf '"%s"' "$1" ;;
	esac
}
jsonl() { # JSON array from lines of JSON values on stdin
	awk 'BEGIN { printf "[" } $0 != "" { printf "%s%s", (n++ ? "," : ""), $0 } END { printf "]" }'
}
# /etc/os-release's values, read by the shell itself (the first of each key, one quote pair off).
os_id="" os_version="" os_pretty=""
if [ -r /etc/os-release ]; then
	while IFS="=" read -r o_key o_value || [ -n "$o_key" ]; do
		o_value=${o_value#\"}; o_value=${o_value%\"}
		case "$o_key" in
		ID) [ -n "$os_id" ] || os_id=$o_value ;;
		VERSION_ID) [ -n "$os_version" ] || os_version=$o_value ;;
		PRETTY_NAME) [ -n "$os_pretty" ] || os_pretty=$o_value ;;
		esac
	done </etc/os-release
fi
uid=$(id -u)
if [ "$uid" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
root_read() { # a read of what only root may see (clusterctl keeps /etc/clusterctl 0700): as root,
	# through sudo -n (never prompting) for another user, as this user when it has no sudo
	if [ "$SUDO" = none ]; then "$@"; else $SUDO "$@"; fi
}
containers_facts() {
	# One read: clusterctl's containers whole; of the others only the image they were made from
	# (prune and down keep those images).
	printf ',"containers":'
	$SUDO docker ps -a --no-trunc --format '{{if .Label "clusterctl.cluster"}}{{json .}}{{else}}{"ForeignImage":{{json .Image}}}{{end}}' 2>/dev/null | jsonl
}
images_facts() {
	printf ',"images":'
	# Images clusterctl built, with their layer digests: shipping sends only the layers missing here.
	ids=$($SUDO docker images -q --no-trunc --filter label=clusterctl.role 2>/dev/null | sort -u)
	if [ -n "$ids" ]; then
		# shellcheck disable=SC2086
		$SUDO docker image inspect --format '{"Id":"{{.Id}}","RepoTags":{{json .RepoTags}},"Labels":{{json .Config.Labels}},"RootFS":{{json .RootFS}},"Size":{{.Size}}}' $ids 2>/dev/null | jsonl
	else
		printf '[]'
	fi
}
# Bash's /dev/tcp to the agent's HTTP API on the host's loopback (~15 ms; a docker exec and the
# consul CLI cost ~0.5 s on a busy host). Raft is read with the agent's token: a root-only file
# read by `cat` into bash, sent in a header by printf, a builtin: on no command line. The
# checks, as anonymous (its policy reads them). $1 sudo, $2 the API's port, $3 the token's file.
CONSUL_HTTP='printf -v cr "\r"
port=$2
if [ -z "$1" ]; then { IFS= read -r tok || [ -n "$tok" ]; } <"$3" 2>/dev/null || tok=""; else tok=$($1 cat "$3" 2>/dev/null) || tok=""; fi
hdr=""; [ -n "$tok" ] && hdr="X-Consul-Token: $tok$cr
"
get() { # $1 the path, $2 the headers; the answer in $body. 0: 200; 2: 403 ACL not found;
	# 3: nothing listening; 1: anything else
	body=""; why="nothing listens on its port"
	exec 3<>"/dev/tcp/127.0.0.1/$port" || return 3
	printf "GET %s HTTP/1.0$cr\n%s$cr\n" "$1" "$2" >&3
	why="no answer within 2 s"
	IFS= read -r -t 2 status <&3 || { exec 3<&-; return 1; }
	while IFS= read -r -t 2 l <&3 && [ -n "${l%$cr}" ]; do :; done
	body=$(cat <&3); exec 3<&-
	case "$status" in
	"HTTP/"*" 200 "*) return 0 ;;
	*" 403 "*) case "$body" in *"ACL not found"*) return 2 ;; esac ;;
	esac
	why="${status%$cr}: ${body:0:80}"; why=${why//[!A-Za-z0-9 .:\/_-]/ }
	return 1
}
object() { if [ "$1" = 0 ]; then case "$body" in "{"*"}") printf "%s" "$body"; return ;; esac; fi; printf null; }
# Raft is asked twice before it counts as unknown (unknown means a wait, never a no-op); when
# nothing listens, only if the agent container is there ($4 = 1: it may be restarting).
get "/v1/operator/raft/configuration?stale" "$hdr"; rc=$?
if [ "$rc" = 1 ] || { [ "$rc" = 3 ] && [ "$4" = 1 ]; }; then sleep 0.3; get "/v1/operator/raft/configuration?stale" "$hdr"; rc=$?; fi
if [ "$rc" = 2 ]; then printf ",\"consul_token_missing\":true"; fi
if [ "$rc" = 1 ] || [ "$rc" = 3 ]; then printf ",\"consul_raft_error\":\"%s\"" "$why"; fi
printf ",\"consul_raft\":"; object "$rc"
get /v1/agent/checks ""; rc=$?
printf ",\"consul_checks\":"; object "$rc"'
consul_in_container() {
	# Where the host has no bash: the same reads in the agent's container (the consul CLI with the
	# agent's token from its file; BusyBox wget for the checks, meanwhile).
	$SUDO docker exec clusterctl-consul sh -c 'if [ -f /consul/config/agent.token ]; then export CONSUL_HTTP_TOKEN_FILE=/consul/config/agent.token; fi
		rm -f /tmp/.clusterctl-checks; timeout 3 wget -qO /tmp/.clusterctl-checks "$0" 2>/dev/null &
		p=$(timeout 5 consul operator raft list-peers -stale 2>&1) || p=$(timeout 5 consul operator raft list-peers -stale 2>&1) || { case "$p" in *"ACL not found"*) echo "{\"TokenMissing\":true}"; p="" ;; *) p="" ;; esac; }
		printf "%s\n" "$p" | awk '"'"'NR > 1 && NF >= 5 { printf "%s{\"Node\":\"%s\",\"Voter\":%s}", (n++ ? "," : "{\"Servers\":["), $1, ($5 == "true" ? "true" : "false") } END { if (n) print "]}"; else print "" }'"'"'
		wait; cat /tmp/.clusterctl-checks 2>/dev/null; echo' 'http://127.0.0.1:8500/v1/agent/checks' 2>/dev/null
}
consul_facts() { # $1: 0 when the agent's container is known to be absent
	# The local clusterctl Consul agent's view: raft's servers (-stale answers without a leader;
	# {"Servers":[{"Node":..,"Voter":..},..]}) and this agent's checks. A server that restarted on
	# its own is a non-voter until autopilot promotes it, and a replica that came back with its
	# host is critical until its check runs: `up` waits for both, never a no-op. An agent whose own
	# token Consul does not know (ACL not found) prints {"TokenMissing":true} first.
	if command -v bash >/dev/null 2>&1; then
		# It prints the keys itself; all of them, or none count.
		c_out=$(timeout 5 bash -c "$CONSUL_HTTP" sh "$SUDO" 8500 /etc/clusterctl/consul/agent.token "${1:-1}" 2>/dev/null) || c_out=""
		case "$c_out" in *',"consul_checks":'*) printf '%s' "$c_out" ;; *) printf ',"consul_raft_error":"its reads took over 5 s","consul_raft":null,"consul_checks":null' ;; esac
		return
	fi
	c_out=$(consul_in_container) || c_out=""
	# The agent's own token unknown to Consul: a line before raft's (see the parser).
	case "$c_out" in '{"TokenMissing":true}'*) printf ',"consul_token_missing":true'; c_out=$(printf '%s\n' "$c_out" | sed 1d) ;; esac
	for c_key in consul_raft consul_checks; do
		c_line=$(printf '%s\n' "$c_out" | sed -n 1p); c_out=$(printf '%s\n' "$c_out" | sed 1d)
		printf ',"%s":' "$c_key"
		case "$c_line" in '{'*'}') printf '%s' "$c_line" ;; *) printf 'null' ;; esac
	done
}
# Docker's facts come one of two ways, the same either way (the parser takes both shapes): from
# Docker's API on its socket, by curl (two processes in all, run from awk below), or from the docker
# CLI (about ten processes of 30-50 ms each on a busy host, most of the probe's time). The API only
# where the CLI would reach the same engine: the default socket, and no DOCKER_HOST, DOCKER_CONTEXT
# or DOCKER_CONFIG, nor a context chosen in the config of whoever runs docker here (root).
api_usable() {
	[ "$SUDO" != none ] && [ -S /var/run/docker.sock ] && [ -z "${DOCKER_HOST:-}${DOCKER_CONTEXT:-}${DOCKER_CONFIG:-}" ] &&
		command -v curl >/dev/null 2>&1 || return 1
	if [ -z "$SUDO" ]; then
		[ ! -f "${HOME:-/nonexistent}/.docker/config.json" ] || ! grep -qs '"currentContext"' "$HOME/.docker/config.json"
	else
		! $SUDO grep -qs '"currentContext"' ~root/.docker/config.json
	fi
}
# awk, with `get` the curl command line: Docker's answers as the probe's keys ("containers_api",
# "network_api": the API's shapes). curl prints a line "@clusterctl CODE" after each answer (one
# line of JSON, as Docker writes it); an answer other than 200 counts as not read. The first
# request lists, the second inspects what was listed (image layers, network endpoints). Exits 3,
# printing nothing, unless the engine answered.
DOCKER_API='function fetch(urls,    cmd, line, b) {
	n = 0; b = ""
	cmd = get " -w \047\n@clusterctl %{http_code}\n\047 " urls
	while ((cmd | getline line) > 0) {
		if (line ~ /^@clusterctl [0-9][0-9][0-9]$/) { n++; body[n] = b; code[n] = substr(line, 13); b = "" }
		else b = b line
	}
	close(cmd)
}
function ok(i) { return code[i] == "200" && body[i] ~ /^[[{]/ }
function urls(s, re, before, after,    out) { # a URL for each "Id" in s that re matches
	out = ""
	while (match(s, re)) { out = out " " D before substr(s, RSTART + 6, RLENGTH - 7) after; s = substr(s, RSTART + RLENGTH) }
	return out
}
function join(from, to,    i, out) { # the answers from..to that were read, as a JSON array
	out = ""
	for (i = from; i <= to; i++) if (ok(i)) out = out (out == "" ? "" : ",") body[i]
	return "[" out "]"
}
BEGIN {
	D = "http://docker"
	fetch(D "/info " D "/containers/json?all=1 " D "/images/json?filters=%7B%22label%22%3A%5B%22clusterctl.role%22%5D%7D " \
		D "/networks " D "/nodes " D "/images/json?filters=%7B%22reference%22%3A%5B%22weaveworks%2F%2A%22%5D%7D")
	if (n != 6 || !ok(1) || !ok(3) || !ok(4)) exit 3
	info = body[1]; containers = ok(2) ? body[2] : "null"; nodes = ok(5) ? body[5] : "null"; weave = ok(6) ? body[6] : "null"
	images = urls(body[3], "\"Id\":\"sha256:[0-9a-f]+\"", "/images/", "/json")
	networks = urls(body[4], "\"Id\":\"[0-9a-z]+\"", "/networks/", "")
	k = split(images, unused, " "); m = split(networks, unused, " ")
	if (k + m > 0) { fetch(images networks); if (n != k + m) exit 3 }
	printf ",\"info\":%s,\"containers_api\":%s,\"images\":%s", info, containers, join(1, k)
	printf ",\"network_api\":{\"networks\":%s,\"swarm_nodes\":%s,\"weave_images_api\":%s}", join(k + 1, k + m), nodes, weave
}'
api_out="" info=""
if api_usable; then
	api_out=$(awk -v get="$SUDO curl -gsS --max-time 10 --unix-socket /var/run/docker.sock" "$DOCKER_API" </dev/null 2>/dev/null) || api_out=""
fi
# By the CLI, the slowest reads (docker CLI calls, ~50 ms each, and the Consul agent's view) need
# nothing read below: they start now, in the background, and are printed at the end, once
# `docker info` has answered.
early=""
if [ -z "$api_out" ] && [ "$SUDO" != none ] && command -v docker >/dev/null 2>&1 && early=$(mktemp -d 2>/dev/null); then
	containers_facts >"$early/c" 2>/dev/null &
	images_facts >"$early/i" 2>/dev/null &
	consul_facts >"$early/r" 2>/dev/null &
fi
printf '{"probe":1'
host=""
{ read -r host; } 2>/dev/null </proc/sys/kernel/hostname || host=$(hostname 2>/dev/null || cat /etc/hostname)
printf ',"hostname":'; js "$host"
printf ',"uid":%s' "$uid"
printf ',"sudo":'; js "$SUDO"
printf ',"os":{"id":'; js "$os_id"; printf ',"version_id":'; js "$os_version"
printf ',"pretty":'; js "$os_pretty"; printf '}'
kernel=""
{ read -r kernel; } 2>/dev/null </proc/sys/kernel/osrelease || kernel=$(uname -r)
printf ',"arch":'; js "$(uname -m)"
printf ',"kernel":'; js "$kernel"
if [ -d /run/systemd/system ]; then init=systemd; else init=other; fi
printf ',"init":'; js "$init"
printf ',"apt":%s' "$(command -v apt-get >/dev/null && echo true || echo false)"
printf ',"ssh_connection":'; js "${SSH_CONNECTION:-}"
printf ',"nameservers":['
# Each value as a JSON string, whatever it holds (a quote in a garbage line stays data).
ns_sep=""
while read -r ns_key ns_value ns_rest || [ -n "$ns_key" ]; do
	[ "$ns_key" = nameserver ] || continue
	printf '%s{"ip":' "$ns_sep"; js "$ns_value"; printf '}'; ns_sep=","
done 2>/dev/null </etc/resolv.conf
printf ']'
# The directory may be root's alone (made by a write under umask 077). Its lines joined.
daemon_json=$(root_read awk "$AWK_STR"'{ out = out $0; n++ } END { if (n) printf "%s", str(out) }' /etc/docker/daemon.json 2>/dev/null)
printf ',"daemon_json":%s' "${daemon_json:-\"\"}"
# Whether the engine runs what daemon.json says (it reads it only when it starts): the file's
# mtime and the engine's start, in epoch seconds; a file newer than the engine is a change not
# applied yet (a restart that never came: an interrupted run).
num() { case "$1" in '' | *[!0-9]*) printf null ;; *) printf '%s' "$1" ;; esac; }
engine_started() {
	# dockerd's own pidfile (its default path), if it names a running dockerd; else a search.
	pid="" comm=""
	{ read -r pid; } 2>/dev/null </var/run/docker.pid
	case "$pid" in '' | *[!0-9]*) ;; *) { read -r comm; } 2>/dev/null <"/proc/$pid/comm" ;; esac
	if [ "$comm" != dockerd ]; then
		pid=$(pgrep -xo dockerd 2>/dev/null) || pid=$(pidof -s dockerd 2>/dev/null) || return 0
	fi
	[ -r "/proc/$pid/stat" ] || return 0
	hz=$(getconf CLK_TCK 2>/dev/null) || hz=100
	# Field 22 of /proc/PID/stat (start, in clock ticks after boot), counted after "(comm) ";
	# /proc/stat's btime, the boot in epoch seconds.
	awk -v hz="$hz" 'FNR == NR { sub(/.*\) /, ""); t = $20; next } /^btime / { if (t != "") print $2 + int(t / hz) }' "/proc/$pid/stat" /proc/stat 2>/dev/null
}
printf ',"daemon_json_mtime":%s' "$(num "$(root_read stat -c %Y /etc/docker/daemon.json 2>/dev/null)")"
printf ',"engine_started":%s' "$(num "$(engine_started)")"
# The host's size, for placement when Docker does not tell it (not installed or running yet).
printf ',"cpus":%s' "$(num "$(nproc 2>/dev/null)")"
m_key="" m_kb=""
{ read -r m_key m_kb m_rest; } 2>/dev/null </proc/meminfo
[ "$m_key" = MemTotal: ] || m_kb=""
printf ',"mem_kb":%s' "$(num "$m_kb")"
# TCP ports something listens on (state 0A), so a dynamic replica port never takes one.
printf ',"listening":'
tcp_files=""
for f in /proc/net/tcp /proc/net/tcp6; do [ -r "$f" ] && tcp_files="$tcp_files $f"; done
# shellcheck disable=SC2086
awk 'FNR > 1 && $4 == "0A" { n = split($2, a, ":"); if (!(a[n] in seen)) { seen[a[n]]; printf "%s\"%s\"", (k++ ? "," : "["), a[n] } }
	END { printf (k ? "]" : "[]") }' $tcp_files </dev/null
# Files clusterctl manages on the host, by content hash, so writes happen only when they differ.
printf ',"managed_files":'
root_read find /etc/clusterctl -type f -exec sha256sum {} + 2>/dev/null |
	awk '{ printf "%s{\"path\":\"%s\",\"sha256\":\"%s\"}", (n++ ? "," : "["), $2, $1 } END { printf (n ? "]" : "[]") }'
# Image archives received ahead of their load (shipping/stream.py: RECEIVE_WHILE), by file name:
# NAME.tar whole, NAME.tar.part one a stopped run left.
printf ',"spooled":'
root_read ls /var/lib/clusterctl/spool 2>/dev/null |
	awk '/^[0-9a-f]+[.]tar([.]part)?$/ { printf "%s\"%s\"", (n++ ? "," : "["), $0 } END { printf (n ? "]" : "[]") }'
printf ',"addresses":'
ip -o addr show 2>/dev/null |
	awk '{ printf "%s{\"ifname\":\"%s\",\"family\":\"%s\",\"cidr\":\"%s\"}", (n++ ? "," : "["), $2, $3, $4 } END { printf (n ? "]" : "[]") }'
printf ',"routes":'
ip -o -4 route show 2>/dev/null | awk "$AWK_STR"'{ printf "%s{\"route\":%s}", (n++ ? "," : "["), str($0) } END { printf (n ? "]" : "[]") }'
printf ',"docker":{"cli":'; js "$(command -v docker)"
if [ -n "$api_out" ]; then
	printf '%s' "$api_out"
elif command -v docker >/dev/null 2>&1 && [ "$SUDO" != none ]; then
	info=$($SUDO docker info --format '{{json .}}' 2>/dev/null) || info=""
	case "$info" in
	'{'*) printf ',"info":%s' "$info" ;;
	*) printf ',"info":null' ;;
	esac
else
	printf ',"info":null'
fi
# --- network facts ---------------------------------------------------------------------------
# Inside "docker": {"network": {...}}, read by clusterctl/network/facts.py (parse_network_probe).
# Docker networks, swarm nodes (on managers only; null when unreadable), the iptables rules the
# routed driver keeps, and Weave's state. Extra docker calls only where Docker answers.
nf_strings() { # JSON array of strings from the lines on stdin
	awk "$AWK_STR"'BEGIN { printf "[" } { printf "%s%s", (n++ ? "," : ""), str($0) } END { printf "]" }'
}
tf() { if "$@"; then printf true; else printf false; fi; }
# The wireguard driver's: what WireGuard the host can have, and each tunnel of ours (an interface
# with a key under /etc/clusterctl/wireguard): only public keys leave the host, never the key file.
wireguard_facts() {
printf ',"wireguard":{"kernel":%s' "$(tf eval '[ -d /sys/module/wireguard ] || modinfo wireguard >/dev/null 2>&1')"
printf ',"wg":%s,"go":%s' "$(tf eval 'command -v wg >/dev/null')" "$(tf eval 'command -v wireguard-go >/dev/null')"
printf ',"tun":%s,"now":%s,"tunnels":' "$(tf test -c /dev/net/tun)" "$(num "$(date +%s)")"
if [ "$SUDO" != none ] && command -v wg >/dev/null; then
	for wf_key in $($SUDO find /etc/clusterctl/wireguard -maxdepth 1 -name '*.key' 2>/dev/null); do
		wf_if=${wf_key##*/}; wf_if=${wf_if%.key}
		printf '{"name":'; js "$wf_if"
		printf ',"key_public":'; js "$($SUDO cat "$wf_key" 2>/dev/null | wg pubkey 2>/dev/null)"
		printf ',"conf":'; js "$($SUDO cat "/etc/clusterctl/wireguard/$wf_if.conf" 2>/dev/null | tr '\n' '\t')"
		if wf_pub=$($SUDO wg show "$wf_if" public-key 2>/dev/null); then
			printf ',"up":true,"public_key":'; js "$wf_pub"
			printf ',"listen_port":%s' "$(num "$($SUDO wg show "$wf_if" listen-port 2>/dev/null)")"
			printf ',"mtu":%s' "$(num "$(ip -o link show dev "$wf_if" 2>/dev/null | sed -n 's/.* mtu \([0-9]*\).*/\1/p')")"
			printf ',"allowed_ips":'; $SUDO wg show "$wf_if" allowed-ips 2>/dev/null | nf_strings
			printf ',"handshakes":'; $SUDO wg show "$wf_if" latest-handshakes 2>/dev/null | nf_strings
		else printf ',"up":false'; fi
		printf '}\n'
	done | jsonl
else printf '[]'; fi
printf '}'
}
# The overlay's encryption (IPsec ESP through xfrm): whether this kernel can do it.
xfrm_facts() {
printf ',"xfrm":{"state":%s' "$(tf test -e /proc/net/xfrm_stat)"
printf ',"esp":%s}' "$(tf eval '[ -d /sys/module/esp4 ] || grep -qw esp4 /proc/modules 2>/dev/null || modinfo esp4 >/dev/null 2>&1 || grep -q "/esp4.ko" "/lib/modules/$(uname -r)/modules.builtin" 2>/dev/null')"
}
network_facts() {
printf ',"network":{'
if [ "$SUDO" != none ] && nf_rules=$($SUDO iptables -w -S DOCKER-USER 2>/dev/null); then
	printf '"docker_user":'; printf '%s\n' "$nf_rules" | nf_strings
else printf '"docker_user":null'; fi
if [ "$SUDO" != none ] && nf_rules=$($SUDO iptables -w -t nat -S POSTROUTING 2>/dev/null); then
	printf ',"nat_postrouting":'; printf '%s\n' "$nf_rules" | nf_strings
else printf ',"nat_postrouting":null'; fi
wireguard_facts
xfrm_facts
case "${info:-}" in
'{'*)
	printf ',"networks":'
	nf_ids=$($SUDO docker network ls -q 2>/dev/null)
	# shellcheck disable=SC2086
	if [ -n "$nf_ids" ]; then $SUDO docker network inspect --format '{{json .}}' $nf_ids 2>/dev/null | jsonl; else printf '[]'; fi
	printf ',"swarm_nodes":'
	case "$info" in
	*'"ControlAvailable":true'*)
		# shellcheck disable=SC2086
		if nf_ids=$($SUDO docker node ls -q 2>/dev/null) && nf_nodes=$($SUDO docker node inspect --format '{{json .}}' $nf_ids 2>/dev/null); then
			printf '%s\n' "$nf_nodes" | jsonl
		else printf 'null'; fi ;;
	*) printf 'null' ;;
	esac
	printf ',"weave_images":'
	$SUDO docker images --filter 'reference=weaveworks/*' --format '{{.Repository}}:{{.Tag}}' 2>/dev/null | nf_strings
	if [ -x /usr/local/bin/weave ]; then
		printf ',"weave":{"script_version":'
		js "$(root_read sed -n 's/^SCRIPT_VERSION="\([^"]*\)".*/\1/p' /usr/local/bin/weave | head -n 1)"
		nf_router=$($SUDO docker inspect --format '{{.State.Status}} {{json .Args}}' weave 2>/dev/null) || nf_router="absent null"
		printf ',"router":'; js "${nf_router%% *}"; printf ',"args":%s' "${nf_router#* }"
		printf ',"targets":'
		if [ "${nf_router%% *}" = running ]; then $SUDO /usr/local/bin/weave status targets 2>/dev/null | nf_strings; else printf '[]'; fi
		printf '}'
	fi ;;
esac
printf '}'
}
# --- end of network facts ----------------------------------------------------------------------
if [ -n "$api_out" ]; then
	# Whether the agent's container is there (then an agent not listening may be restarting).
	case "$api_out" in *'"Names":["/clusterctl-consul"]'*) agent_here=1 ;; *) agent_here=0 ;; esac
	network_facts; consul_facts "$agent_here"
else case "${info:-}" in
'{'*)
	if [ -n "$early" ]; then
		network_facts >"$early/n"
		wait
		cat "$early/c" "$early/i" "$early/n" "$early/r"
	else
		containers_facts; images_facts; network_facts; consul_facts
	fi ;;
*) network_facts ;;
esac; fi
if [ -n "$early" ]; then wait; rm -rf "$early"; fi
printf '}}\n'
