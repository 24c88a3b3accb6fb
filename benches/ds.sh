#!/usr/bin/env bash
# MLS Delivery Service throughput: KeyPackage claims and commits against a release gateway.
#   benches/ds.sh [KEY_PACKAGES] [CLAIMERS] [GROUPS] [COMMITS_PER_GROUP]   (defaults: 2000 16 32 50)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
start_gateway
# Claims are rate limited per (requester, target) in production; lift it for the benchmark.
cat >> "$tmp/gateway.toml" <<TOML
[mls]
claim_burst = 1000000
claim_refill_secs = 1
max_key_packages_per_device = 100000
TOML
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
spawn "$bin/gateway" --config "$tmp/gateway.toml" 2>>"$tmp/gateway.log"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin_port/healthz" >/dev/null && break; sleep 0.1; done
"$bin/ds-bench" --url "https://localhost:$gw_port" --data-dir "$tmp/data" \
    --key-packages "${1:-2000}" --claimers "${2:-16}" --groups "${3:-32}" --commits "${4:-50}"
