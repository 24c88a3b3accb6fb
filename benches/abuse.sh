#!/usr/bin/env bash
# Issue 17's goal: a client at 10x its per-credential limit gets 429s while the p99 of
# well-behaved senders stays within 2x of their p99 without it. One gateway with the
# default per-credential limit (100/s, burst 200; the other limits raised so the
# well-behaved load itself is not limited), one `loadtest --scenario
# abuse` run: RATE/s well-behaved over 8 credentials alone, then beside an attacker at
# 1,000/s on one credential.
#   benches/abuse.sh [SECONDS] [RATE]   (defaults: 10 400)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rate=${2:-400}
cargo build --release --locked -p loadtest >&2
# shellcheck source=benches/lib.sh
. benches/lib.sh
# The per-credential limit at its default; everything else raised (lib.sh).
RATE_LIMIT_TOML=$'requests_per_second = 100\nburst = 200' start_gateway
"$bin/loadtest" --server "https://localhost:$gw_port" --data-dir "$tmp/data" --scenario abuse \
    --rate "$rate" --attacker-rate 1000 --connections 8 --duration "$secs" --report "$tmp/abuse" >/dev/null
[ -n "${KEEP:-}" ] && cp -r "$tmp/abuse" "$KEEP"/
python3 - "$tmp/abuse/report.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))["abuse"]
print(f"well-behaved p99 alone {a['baseline_p99_ms']:.2f} ms, beside the attacker {a['attacked_p99_ms']:.2f} ms: "
      f"ratio {a['p99_ratio']:.2f} (goal <= 2); well-behaved errors {a['well_behaved_errors']}")
print(f"attacker at {a['attacker_rate']:.0f}/s: sent {a['attacker_sent']}, accepted {a['attacker_accepted']}, "
      f"429 {a['attacker_429']}, other errors {a['attacker_other_errors']}")
PY
