#!/usr/bin/env bash
# Runs `weft-bench history` for every sequential trace, each against a
# fresh weft (release build) on a fresh data directory, and prints where
# the JSON went. Any further arguments are passed to `weft serve` (e.g.
# --snapshot-every 100).
#
#   tests/bench/history.sh
#   WEFT_BENCH_TRACES=automerge-paper tests/bench/history.sh --snapshot-every 100
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SCRATCH=${WEFT_BENCH_SCRATCH:-${TMPDIR:-/tmp}/weft-bench-history}
TRACES=${WEFT_BENCH_TRACES:-automerge-paper,seph-blog1,sveltecomponent,clownschool_flat}
PORT=${WEFT_BENCH_PORT:-18180}
OUT=$SCRATCH/results/$(date -u +%Y%m%dT%H%M%SZ)
PACE=(); [ -n "${WEFT_BENCH_ONE_BY_ONE:-}" ] && PACE=(--one-by-one)
KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

mkdir -p "$OUT"
cd "$ROOT"
cargo build --release --locked -p weft-server -p weft-bench
BENCH=$ROOT/target/release/weft-bench

SERVER_PID=
stop() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap stop EXIT

# start DATA_DIR ARGS...: weft on 127.0.0.1:$PORT, waiting until it listens.
start() {
  local data=$1; shift
  # No per-connection rate limit: the trace is sent as fast as weft takes it.
  "$ROOT/target/release/weft" serve --listen "127.0.0.1:$PORT" --data-dir "$data" \
    --admin-key "$KEY" --max-messages-per-sec 0 --log-format json "$@" >>"$data.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "weft did not start; see $data.log" >&2
  return 1
}

IFS=, read -ra LIST <<<"$TRACES"
for name in "${LIST[@]}"; do
  trace=$ROOT/../shared/traces/sequential/$name.json.gz
  data=$SCRATCH/data/$name
  rm -rf "$data" "$data.log"
  mkdir -p "$data"
  start "$data" "$@"
  echo "== $name"
  "$BENCH" history --ws "ws://127.0.0.1:$PORT/ws" --http "http://127.0.0.1:$PORT" \
    --admin-key "$KEY" --trace "$trace" --doc "history-$name" --data-dir "$data" \
    "${PACE[@]}" --json "$OUT/$name.json"
  # The same document after a restart: the first ?at= finds nothing in memory.
  stop
  start "$data" "$@"
  echo "== $name, after a restart"
  "$BENCH" history --ws "ws://127.0.0.1:$PORT/ws" --http "http://127.0.0.1:$PORT" \
    --admin-key "$KEY" --trace "$trace" --doc "history-$name" --no-ingest \
    --json "$OUT/$name-restarted.json"
  stop
done
echo "results: $OUT"
