#!/usr/bin/env bash
# Starts a three-node Micro cluster on this machine, one node per loopback
# address (127.0.0.1, .2, .3; Linux routes all of 127/8 to lo), with data
# under ${MICRO_CLUSTER_DIR:-/tmp/micro-cluster}. Stop it with
# `deploy/local-cluster.sh stop`.
#
# Environments n1, n2 and n3 are added to the CLI, so:
#   micro -e n2 store write k v; micro -e n3 store read k
set -euo pipefail

dir=${MICRO_CLUSTER_DIR:-/tmp/micro-cluster}
micro=${MICRO_BIN:-micro}

if [[ "${1:-}" == "stop" ]]; then
  for i in 1 2 3; do
    [[ -f "$dir/n$i.pid" ]] && kill "$(cat "$dir/n$i.pid")" 2>/dev/null || true
  done
  exit 0
fi

mkdir -p "$dir"
start() {
  local i=$1; shift
  "$micro" server --data-dir "$dir/n$i" \
    --api-address "127.0.0.$i:8080" --proxy-address "127.0.0.$i:8081" \
    --web-address "127.0.0.$i:8082" --cluster-address "127.0.0.$i:8083" \
    "$@" >>"$dir/n$i.log" 2>&1 &
  echo $! >"$dir/n$i.pid"
  for _ in $(seq 1 300); do
    [[ -f "$dir/n$i/listen.json" ]] && return 0
    sleep 0.2
  done
  echo "node $i did not start; see $dir/n$i.log" >&2
  exit 1
}

start 1
for i in 1 2 3; do
  "$micro" env del "n$i" >/dev/null 2>&1 || true
  "$micro" env add "n$i" "127.0.0.$i:8081"
done
"$micro" -e n1 login --username admin --password "${MICRO_ADMIN_PASSWORD:-micro}" >/dev/null
token=$("$micro" -e n1 cluster token)
# A node that already joined ignores --join and rejoins by itself.
start 2 --join 127.0.0.1:8083 --token "$token"
start 3 --join 127.0.0.1:8083 --token "$token"
"$micro" -e n1 cluster members
