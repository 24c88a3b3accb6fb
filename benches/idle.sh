#!/usr/bin/env bash
# Memory per idle live receiver: N devices each hold a long-poll open on a release gateway;
# prints the gateway's RSS before and while they are held.
#   benches/idle.sh [RECEIVERS] [CONNECTIONS] [LOADTEST ARGS...]   (defaults: 10000 64)
# e.g. thousands of connections over HTTP/3 from four source addresses:
#   benches/idle.sh 10000 5000 --source-ips 4 --http3
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
conns=${2:-64}
shift $(( $# < 2 ? $# : 2 ))
cargo build --release --locked -p loadtest >&2
# shellcheck source=benches/lib.sh
. benches/lib.sh
start_gateway
# Refresh the relay_live_receivers gauge every second (the sweeper publishes it).
restart_gateway $'[storage]\nsweep_interval_secs = 1'
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$gpid/status"; }
echo "gateway RSS before: $(rss)"
spawn "$bin/loadtest" --server "https://localhost:$gw_port" --data-dir "$tmp/data" --scenario idle \
    --recipients "$n" --connections "$conns" --duration 60 --warmup 0 --report "$tmp/idle" "$@"
lt=${pids[-1]}
peak=0
for _ in $(seq 60); do
    sleep 1
    m=$(curl -s "http://127.0.0.1:$admin_port/metrics")
    live=$(awk '/^relay_live_receivers / {print $2}' <<<"$m")
    conns_open=$(awk '/^relay_connections_open/ {n += $2} END {print n + 0}' <<<"$m")
    kb=$(awk '/VmRSS/ {print $2}' "/proc/$gpid/status")
    [ "$kb" -gt "$peak" ] && peak=$kb
    echo "live_receivers=${live:-?} connections_open=${conns_open} rss=${kb} kB"
    kill -0 "$lt" 2>/dev/null || break
done
echo "gateway peak RSS with $n idle receivers: $((peak / 1024)) MiB"
