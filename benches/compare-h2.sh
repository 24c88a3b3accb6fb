#!/usr/bin/env bash
# Durable 1 KiB send over HTTP/2 + TLS 1.3: the gateway versus a bare hyper + rustls server
# that answers 201 after reading the body, same TLS settings, same h2load load, same run.
#
#   benches/compare-h2.sh [DURATION_SECS] [CONNECTIONS] [STREAMS]   (defaults: 10 64 16)
#
# Needs h2load (Debian: nghttp2-client). Builds release binaries. Bounded: each run lasts
# DURATION_SECS after a 2 s warm-up, and every server it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
conns=${2:-64}
streams=${3:-16}
command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 1; }

# shellcheck source=benches/lib.sh
. benches/lib.sh
start_gateway
bare_port=$(port)

spawn "$bin/bare-h2" --listen "127.0.0.1:$bare_port" --data-dir "$tmp/data"
sleep 0.3

load() {
    h2load -c "$conns" -m "$streams" -D "$duration" --warm-up-time=2 -t 1 \
        -d "$tmp/body.bin" -H 'content-type: application/x-protobuf' -H "authorization: Bearer $credential" \
        "https://127.0.0.1:$1/v1/messages"
}
echo "== bare hyper + rustls (201 after reading the body)"
load "$bare_port" | tee "$tmp/bare.txt" | grep -E "finished in|requests:|status codes:|time for request:"
echo "== gateway (durable send, 1 KiB MLS message, 1 recipient)"
load "$gw_port" | tee "$tmp/gw.txt" | grep -E "finished in|requests:|status codes:|time for request:"

rps() { sed -n 's/.*finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$1"; }
bare=$(rps "$tmp/bare.txt"); gw=$(rps "$tmp/gw.txt")
python3 - "$bare" "$gw" <<'PY'
import sys
bare, gw = float(sys.argv[1]), float(sys.argv[2])
print(f"bare {bare:.0f} req/s, gateway {gw:.0f} req/s, ratio gateway/bare = {gw / bare:.2f}")
PY
echo "== journal groups (gateway /metrics)"
curl -s "http://127.0.0.1:$admin_port/metrics" | grep -E "^relay_journal_(group_records|fsync_seconds)_(sum|count)|^relay_storage_.*_(sum|count)" || true
