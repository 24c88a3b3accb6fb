# Shared set-up of the comparison scripts (sourced, not run). After `start_gateway`:
#   $bin          release binaries        $tmp         scratch directory (removed on exit)
#   $gw_port      gateway TCP+UDP port    $admin_port  gateway admin port
#   $credential   a registered sender     $tmp/body.bin protobuf SendRequest, 1 KiB MLS message
#   $tmp/data     gateway data dir (its dev certificate is reused by the baselines)
# `spawn CMD...` runs a background process that is stopped on exit; `port` prints a free port;
# `restart_gateway TOML` appends TOML to the gateway's config and restarts it ($gpid).
# Every limit is raised for load; RATE_LIMIT_TOML replaces the per-credential lines.

cargo build --release --locked -p gateway -p relay-client -p benches >&2
bin="${CARGO_TARGET_DIR:-target}/release"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
spawn() { "$@" & pids+=($!); }

start_gateway() {
    gw_port=$(port)
    admin_port=$(port)
    cat > "$tmp/gateway.toml" <<TOML
data_dir = "$tmp/data"
listen = "127.0.0.1:$gw_port"
admin_listen = "127.0.0.1:$admin_port"
[rate_limit]
${RATE_LIMIT_TOML:-requests_per_second = 1000000
burst = 1000000}
sender_recipient_burst = 1000000000
sender_recipient_per_second = 1000000
recipient_bytes_burst = 1000000000000
recipient_bytes_per_second = 1000000000
registration_burst = 1000000
sender_queue_share_percent = 0
[limits]
max_connections_per_address = 1000000
${EXTRA_TOML:-}
TOML
    spawn "$bin/gateway" --config "$tmp/gateway.toml" 2>"$tmp/gateway.log"
    gpid=${pids[-1]}
    wait_healthy
    local relay=("$bin/relay" --server "https://localhost:$gw_port" --ca "$tmp/data/tls/dev-ca.pem")
    "${relay[@]}" --profile "$tmp/sender.toml" register \
        --token "$("$bin/gateway" --config "$tmp/gateway.toml" provision tel:+15550900001)" >&2
    "${relay[@]}" --profile "$tmp/recipient.toml" register \
        --token "$("$bin/gateway" --config "$tmp/gateway.toml" provision tel:+15550900002)" >&2
    credential=$(sed -n 's/^credential = "\(.*\)"$/\1/p' "$tmp/sender.toml")
    "$bin/send-body" --to tel:+15550900002 --size 1024 > "$tmp/body.bin"
}

wait_healthy() {
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin_port/healthz" >/dev/null && return; sleep 0.1; done
    echo "gateway did not become healthy; see $tmp/gateway.log" >&2
    return 1
}

restart_gateway() {
    printf '%s\n' "$1" >> "$tmp/gateway.toml"
    kill "$gpid"; wait "$gpid" 2>/dev/null || true
    spawn "$bin/gateway" --config "$tmp/gateway.toml" 2>>"$tmp/gateway.log"
    gpid=${pids[-1]}
    wait_healthy
}
