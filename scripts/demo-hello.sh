#!/usr/bin/env bash
# The article's example, end to end, on the local lab `default` (made when missing): the express
# hello app as 2 microcontainer replicas spread over the lab's hosts, registered in Consul, then
# fetched by name from a plain BusyBox container on a host that runs no replica.
# Run after scripts/setup.sh. Remove with: .venv/bin/clusterctl lab down --name default
set -euo pipefail
cd "$(dirname "$0")/.."
clusterctl=.venv/bin/clusterctl
lab_file=$($clusterctl lab up --name default --hosts 3 | tail -n 1)
demo_file="$(dirname "$lab_file")/hello-demo.yaml"
# The lab's own file plus node in the filebox and the hello service.
.venv/bin/python - "$lab_file" "$demo_file" "$PWD/examples/hello" <<'EOF'
import sys
import yaml

lab, out, app = sys.argv[1:]
doc = yaml.safe_load(open(lab))
doc["filebox"] = {"binaries": ["consul", "node"]}
doc["services"] = [{"name": "hello", "app": app, "replicas": 2, "check": {"http": "/"}}]
open(out, "w").write(yaml.safe_dump(doc, sort_keys=False))
EOF
echo "[demo] $demo_file"
$clusterctl up -f "$demo_file"
$clusterctl status -f "$demo_file"
echo "[demo] from a plain container on node3: wget http://hello.service.consul:3000/"
$clusterctl exec -f "$demo_file" --host node3 -- sh -c \
	'docker run --rm --entrypoint busybox "$(docker images clusterctl/base -q | head -n 1)" wget -qO- http://hello.service.consul:3000/'
