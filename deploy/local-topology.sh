#!/usr/bin/env bash
# Starts a local three-tier topology from config/: an edge → a regional node →
# the global node, on loopback, with data under ./data. Ctrl-C stops all three
# gracefully (the edge first, so everything it has reaches the global tier).
#
#   deploy/local-topology.sh            # uses target/release/strata (builds it if missing)
#   STRATA=target/debug/strata deploy/local-topology.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STRATA=${STRATA:-target/release/strata}
if [ ! -x "$STRATA" ]; then
  cargo build --release
fi
for tier in global regional edge; do
  "$STRATA" check-config "config/$tier.toml"
done
pids=()
stop() {
  # Downstream first: each tier forwards what it has before its upstream stops.
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
}
trap stop EXIT INT TERM
for tier in global regional edge; do
  "$STRATA" run --config "config/$tier.toml" &
  pids+=($!)
  sleep 0.5
done
cat <<'MSG'
Running: edge (http 127.0.0.1:12800) → regional (12900) → global (13000).
Send a sample to the edge:
  curl -s -XPOST 'http://127.0.0.1:12800/api/v1/ingest?wait=commit' --data-binary \
    '{"metric":"http_latency_ms","kind":"histogram","labels":{"service":"checkout"},"value":12.5}'
Ask the global tier:
  strata query 'http_latency_ms' --group-by service --addr http://127.0.0.1:13000
Ctrl-C stops all three.
MSG
wait
