#!/usr/bin/env bash
# A durable send to 1,000 recipients against a send to 1, end to end through the gateway, in
# one run: closed loop with one sender (latency per send, nothing queued), 1 KiB messages.
#   benches/fanout.sh [SECONDS] [RECIPIENTS]   (defaults: 10 1000; goal: ratio <= 5)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
n=${2:-1000}
cargo build --release --locked -p loadtest >&2
# shellcheck source=benches/lib.sh
. benches/lib.sh
start_gateway
lt() { "$bin/loadtest" --server "https://localhost:$gw_port" --data-dir "$tmp/data" --duration "$secs" --concurrency 1 --connections 1 "$@"; }
lt --scenario send --report "$tmp/one" >/dev/null
lt --scenario fanout --recipients "$n" --report "$tmp/many" >/dev/null
python3 - "$tmp/one/report.json" "$tmp/many/report.json" "$n" <<'PY'
import json, sys
one, many = (json.load(open(p)) for p in sys.argv[1:3])
n = sys.argv[3]
a, b = one["latency_ms"], many["latency_ms"]
print(f"send to 1: p50 {a['p50']:.3f} ms, p99 {a['p99']:.3f} ms ({one['per_sec']:.0f}/s)")
print(f"send to {n}: p50 {b['p50']:.3f} ms, p99 {b['p99']:.3f} ms ({many['per_sec']:.0f}/s)")
print(f"ratio {n}:1 at p50 = {b['p50'] / a['p50']:.2f} (goal <= 5)")
PY
