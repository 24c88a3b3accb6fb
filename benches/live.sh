#!/usr/bin/env bash
# p99 send → live receive at half the peak rate, in one run: a closed-loop `send` run finds
# the peak 1:1 rate, then an open-loop `live` run at half of it measures the latency.
#   benches/live.sh [SECONDS] [CONCURRENCY] [LOADTEST ARGS...]   (defaults: 10 64)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conc=${2:-64}
shift $(( $# < 2 ? $# : 2 ))
cargo build --release --locked -p loadtest >&2
# shellcheck source=benches/lib.sh
. benches/lib.sh
start_gateway
lt() { "$bin/loadtest" --server "https://localhost:$gw_port" --data-dir "$tmp/data" --duration "$secs" "$@"; }
lt --scenario send --concurrency "$conc" --report "$tmp/peak" "$@" >/dev/null
peak=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["per_sec"])' "$tmp/peak/report.json")
half=$(python3 -c "print(round($peak / 2))")
lt --scenario live --rate "$half" --concurrency 1024 --report "$tmp/live" "$@" >/dev/null
curl -s "http://127.0.0.1:$admin_port/metrics" >"$tmp/live/metrics.txt"
[ -n "${KEEP:-}" ] && cp -r "$tmp/live" "$tmp/peak" "$KEEP"/
python3 - "$tmp/peak/report.json" "$tmp/live/report.json" <<'PY'
import json, sys
peak, live = (json.load(open(p)) for p in sys.argv[1:])
l = live["latency_ms"]
print(f"peak closed-loop 1:1 sends: {peak['per_sec']:.0f}/s")
print(f"open loop at {live['rate']:.0f}/s (half the peak): received {live['received']} of {live['sent']}, "
      f"errors {live['errors']}; send -> live receive p50 {l['p50']:.2f} ms, p99 {l['p99']:.2f} ms, "
      f"p99.9 {l['p999']:.2f} ms (goal: p99 <= 10 ms)")
PY
