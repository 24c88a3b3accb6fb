#!/usr/bin/env bash
# Restart after a crash with a large unapplied journal: no checkpoint is taken while about
# JOURNAL_MIB of 1 KiB sends are written, the gateway is killed with SIGKILL, and the restart
# is timed until /healthz answers (the log line "storage recovered from the journal" has the
# replay alone).
#   benches/recovery.sh [JOURNAL_MIB]   (default: 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 1; }
export EXTRA_TOML=$'[storage]\ncheckpoint_mb = 1000000\ncheckpoint_secs = 1000000\ncache_capacity_mb = 1024'
# shellcheck source=benches/lib.sh
. benches/lib.sh
start_gateway
# One journal record per send: about 1.25 KiB for a 1 KiB message.
requests=$(( mib * 1024 * 1024 / 1280 ))
echo "== writing about $mib MiB of journal ($requests sends)"
h2load -c 64 -m 16 -n "$requests" -t 1 -d "$tmp/body.bin" -H 'content-type: application/x-protobuf' \
    -H "authorization: Bearer $credential" "https://127.0.0.1:$gw_port/v1/messages" | grep -E "finished in|status codes:"
du -sh "$tmp/data/journal" "$tmp/data/sled"
kill -9 "$gpid"; wait "$gpid" 2>/dev/null || true
echo "== restart after kill -9"
start=$(date +%s.%N)
spawn "$bin/gateway" --config "$tmp/gateway.toml" 2>>"$tmp/gateway.log"
gpid=${pids[-1]}
until curl -sf "http://127.0.0.1:$admin_port/healthz" >/dev/null; do sleep 0.1; done
end=$(date +%s.%N)
grep -E "recovered|replayed|index rebuilt" "$tmp/gateway.log" | tail -3 || true
python3 -c "print(f'restart to healthy: {$end - $start:.1f} s')"
