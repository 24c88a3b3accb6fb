#!/usr/bin/env bash
# MLS Delivery Service throughput: KeyPackage claims and commits against a release gateway.
#   benches/ds.sh [KEY_PACKAGES] [CLAIMERS] [GROUPS] [COMMITS_PER_GROUP]   (defaults: 2000 16 32 50)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
start_gateway
# Claims are rate limited per (requester, target) in production; lift it for the benchmark.
restart_gateway $'[mls]\nclaim_burst = 1000000\nclaim_refill_secs = 1\nmax_key_packages_per_device = 100000'
"$bin/ds-bench" --url "https://localhost:$gw_port" --data-dir "$tmp/data" \
    --key-packages "${1:-2000}" --claimers "${2:-16}" --groups "${3:-32}" --commits "${4:-50}"
