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

cargo build --release --locked -p gateway -p relay-client -p benches >&2
bin="${CARGO_TARGET_DIR:-target}/release"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw_port=$(port); admin_port=$(port); bare_port=$(port)
cat > "$tmp/gateway.toml" <<TOML
data_dir = "$tmp/data"
listen = "127.0.0.1:$gw_port"
admin_listen = "127.0.0.1:$admin_port"
[rate_limit]
requests_per_second = 1000000
burst = 1000000
[log]
json = true
TOML
"$bin/gateway" --config "$tmp/gateway.toml" 2>"$tmp/gateway.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin_port/healthz" >/dev/null && break; sleep 0.1; done

relay() { "$bin/relay" --server "https://localhost:$gw_port" --ca "$tmp/data/tls/dev-ca.pem" "$@"; }
relay --profile "$tmp/sender.toml" register --token "$("$bin/gateway" --config "$tmp/gateway.toml" provision tel:+15550900001)" >&2
relay --profile "$tmp/recipient.toml" register --token "$("$bin/gateway" --config "$tmp/gateway.toml" provision tel:+15550900002)" >&2
credential=$(sed -n 's/^credential = "\(.*\)"$/\1/p' "$tmp/sender.toml")
"$bin/send-body" --to tel:+15550900002 --size 1024 > "$tmp/body.bin"

"$bin/bare-h2" --listen "127.0.0.1:$bare_port" --data-dir "$tmp/data" &
pids+=($!)
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
echo "== flush batches (gateway /metrics)"
curl -s "http://127.0.0.1:$admin_port/metrics" | grep -E "^relay_flush_batch_size_(sum|count)|^relay_flushes_total|^relay_storage_.*_(sum|count)" || true
