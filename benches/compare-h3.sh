#!/usr/bin/env bash
# Durable 1 KiB send over HTTP/3: the gateway versus a bare quinn + h3 server that answers
# 201 after reading the body, same QUIC/TLS settings, same load client, same run. The
# gateway is also measured over HTTP/2 with the same client for reference.
#
#   benches/compare-h3.sh [DURATION_SECS] [CONNECTIONS] [STREAMS]   (defaults: 10 4 16)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
conns=${2:-4}
streams=${3:-16}

# shellcheck source=benches/lib.sh
. benches/lib.sh
start_gateway
bare_port=$(port)

spawn "$bin/bare-h3" --listen "127.0.0.1:$bare_port" --data-dir "$tmp/data"
sleep 0.3

load() {
    "$bin/bench-client" --url "https://localhost:$1" --ca "$tmp/data/tls/dev-ca.pem" --protocol "$2" \
        --connections "$conns" --streams "$streams" --duration "$duration" --body "$tmp/body.bin" \
        --credential "$credential"
}
echo "== bare quinn + h3 (201 after reading the body)"
bare=$(load "$bare_port" h3); echo "$bare"
echo "== gateway over HTTP/3 (durable send, 1 KiB MLS message, 1 recipient)"
gw=$(load "$gw_port" h3); echo "$gw"
echo "== gateway over HTTP/2, same client"
gw2=$(load "$gw_port" h2); echo "$gw2"
python3 - "$bare" "$gw" <<'PY'
import json, sys
bare, gw = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"HTTP/3: bare {bare['requests_per_sec']:.0f} req/s, gateway {gw['requests_per_sec']:.0f} req/s, "
      f"ratio gateway/bare = {gw['requests_per_sec'] / bare['requests_per_sec']:.2f}; "
      f"p99 bare {bare['p99_ms']} ms, gateway {gw['p99_ms']} ms")
PY
