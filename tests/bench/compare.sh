#!/usr/bin/env bash
# Runs the weft-bench scenarios against weft, the reference
# @y/websocket-server, y-sweet and @hocuspocus/server on this machine, one server at a time with
# the same load generator, and prints one table with ratios (peer / weft).
#
# Peers are installed on demand into a scratch directory (npm, cargo
# install); every server binds to 127.0.0.1. Results are JSON files under
# $SCRATCH/results/<time>/<server>/<scenario>.json; a scenario a server
# cannot run leaves <scenario>.skip with the reason instead.
#
#   tests/bench/compare.sh                 # all servers, full ladder
#   WEFT_BENCH_QUICK=1 tests/bench/compare.sh   # smaller ladder, shorter runs
#   WEFT_BENCH_SERVERS=weft tests/bench/compare.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SCRATCH=${WEFT_BENCH_SCRATCH:-${TMPDIR:-/tmp}/weft-bench}
SERVERS=${WEFT_BENCH_SERVERS:-weft,y-websocket-server,y-sweet,hocuspocus}
TRACE=${WEFT_BENCH_TRACE:-$ROOT/../shared/traces/sequential/automerge-paper.json.gz}
PORT=${WEFT_BENCH_PORT:-18080}
OUT=$SCRATCH/results/$(date -u +%Y%m%dT%H%M%SZ)
if [ -n "${WEFT_BENCH_QUICK:-}" ]; then
  LADDER=1000 DURATION=5s IDLE=500 IDLE_MANY=2000 JOIN_MB=5
else
  LADDER=1000,5000 DURATION=10s IDLE=2000 IDLE_MANY=15000 JOIN_MB=20
fi
RATE=50                # changes per second in the fan-out ladder
YWS_VERSION=0.1.1     # the last release on yjs 13, the version editors run
YSWEET_VERSION=0.9.1
HOCUSPOCUS_VERSION=4.7.0

mkdir -p "$SCRATCH" "$OUT"
cd "$ROOT"
cargo build --release --locked -p weft-server -p weft-bench
BENCH=$ROOT/target/release/weft-bench
export RUST_BACKTRACE=0
[ -f "$TRACE" ] || { echo "trace not found: $TRACE (set WEFT_BENCH_TRACE)" >&2; exit 1; }

install_peers() {
  case ",$SERVERS," in *,y-websocket-server,*)
    if [ ! -f "$SCRATCH/ywss/node_modules/@y/websocket-server/src/server.js" ]; then
      mkdir -p "$SCRATCH/ywss"
      (cd "$SCRATCH/ywss" && [ -f package.json ] || echo '{"private":true}' > package.json)
      npm install --prefix "$SCRATCH/ywss" --no-audit --no-fund \
        "@y/websocket-server@$YWS_VERSION" yjs@13 y-leveldb >/dev/null
    fi ;;
  esac
  case ",$SERVERS," in *,y-sweet,*)
    if [ ! -x "$SCRATCH/y-sweet/bin/y-sweet" ]; then
      # --locked: its newest dependencies no longer build it.
      cargo install --locked --quiet y-sweet --version "$YSWEET_VERSION" --root "$SCRATCH/y-sweet"
    fi ;;
  esac
  case ",$SERVERS," in *,hocuspocus,*)
    if [ ! -d "$SCRATCH/hocuspocus/node_modules/@hocuspocus/server" ]; then
      mkdir -p "$SCRATCH/hocuspocus"
      (cd "$SCRATCH/hocuspocus" && [ -f package.json ] || echo '{"private":true,"type":"module"}' > package.json)
      npm install --prefix "$SCRATCH/hocuspocus" --no-audit --no-fund \
        "@hocuspocus/server@$HOCUSPOCUS_VERSION" "@hocuspocus/extension-database@$HOCUSPOCUS_VERSION" yjs@13 >/dev/null
    fi
    cp "$ROOT/tests/bench/hocuspocus-server.mjs" "$SCRATCH/hocuspocus/server.mjs" ;;
  esac
}

SERVER_PID=
start() {
  local name=$1 data=$SCRATCH/data/$1
  mkdir -p "$data"
  case $name in
    weft)
      # No per-connection rate limit: ingest sends as fast as it can; no
      # per-address limit: every client of the load generator is 127.0.0.1.
      "$ROOT/target/release/weft" serve --listen "127.0.0.1:$PORT" --data-dir "$data" \
        --max-messages-per-sec 0 --max-connections-per-client 0 --log-format json >"$OUT/$name.log" 2>&1 &
      WS=ws://127.0.0.1:$PORT/ws SSE=127.0.0.1:$PORT ;;
    y-websocket-server)
      # YPERSISTENCE: store documents in LevelDB, so they survive a restart.
      HOST=127.0.0.1 PORT=$PORT YPERSISTENCE=$data \
        node "$SCRATCH/ywss/node_modules/@y/websocket-server/src/server.js" >"$OUT/$name.log" 2>&1 &
      WS=ws://127.0.0.1:$PORT SSE= ;;
    y-sweet)
      # No --auth, like weft here: any document, no token.
      "$SCRATCH/y-sweet/bin/y-sweet" serve "$data" --host 127.0.0.1 --port "$PORT" >"$OUT/$name.log" 2>&1 &
      WS="ws://127.0.0.1:$PORT/d/{doc}/ws/{doc}" SSE= ;;
    hocuspocus)
      # Its own envelope (every message addressed to its document, auth
      # first), as HocuspocusProvider speaks it: see crates/bench/src/envelope.rs.
      HOST=127.0.0.1 PORT=$PORT DATA=$data node "$SCRATCH/hocuspocus/server.mjs" >"$OUT/$name.log" 2>&1 &
      WS=hocuspocus+ws://127.0.0.1:$PORT SSE= ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name did not start; see $OUT/$name.log" >&2
  return 1
}

stop() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap stop EXIT

# run NAME SCENARIO ARGS...: one scenario; a failure is recorded, not fatal.
run() {
  local name=$1 scenario=$2; shift 2
  local sub=$scenario
  [[ $scenario == fanout-* ]] && sub=fanout
  [[ $scenario == idle-* ]] && sub=idle
  [[ $scenario == ingest-* ]] && sub=ingest
  echo "== $name: $scenario"
  if ! "$BENCH" "$sub" "$@" --json "$OUT/$name/$scenario.json" 2>"$OUT/$name/$scenario.err"; then
    { grep -m1 '^Error: ' "$OUT/$name/$scenario.err" || tail -n 1 "$OUT/$name/$scenario.err"; } |
      cut -c1-120 | sed 's/^Error: /failed: /' >"$OUT/$name/$scenario.skip"
    echo "   $(cat "$OUT/$name/$scenario.skip")"
  fi
}

skip() { echo "$3" >"$OUT/$1/$2.skip"; echo "== $1: $2 (n/a: $3)"; }

install_peers
IFS=, read -ra LIST <<<"$SERVERS"
for name in "${LIST[@]}"; do
  mkdir -p "$OUT/$name"
  rm -rf "$SCRATCH/data/$name"
  # The disk's own durable-write tail, where this server keeps its data,
  # with nothing running: what storing before broadcasting may cost.
  mkdir -p "$SCRATCH/data/$name"
  run "$name" disk --dir "$SCRATCH/data/$name" --writes 2000
  # The machine's floor under fan-out, with nothing running: a thread that
  # only sends, to as many loopback connections as the ladder's first step.
  run "$name" sends --connections "${LADDER%%,*}" --rate "$RATE" --duration "$DURATION"
  # Idle memory first, on a fresh process: memory freed by earlier
  # scenarios stays resident and would hide what connections cost.
  start "$name"
  sse=(); [ -n "$SSE" ] && sse=(--sse "$SSE")
  run "$name" idle --ws "$WS" "${sse[@]}" --connections "$IDLE" --server-pid "$SERVER_PID"
  stop
  if [ -n "$SSE" ]; then
    # Many viewers alone, on a fresh process again.
    start "$name"
    run "$name" idle-$IDLE_MANY --ws "$WS" --sse "$SSE" --connections 0 --viewers "$IDLE_MANY" \
      --server-pid "$SERVER_PID"
    stop
  fi
  start "$name"
  run "$name" fanout --ws "$WS" --subscribers "$LADDER" --rate "$RATE" --duration "$DURATION" \
    --server-pid "$SERVER_PID"
  if [ -n "$SSE" ]; then
    zeros=${LADDER//[0-9]/}; zeros=0${zeros//,/,0}
    run "$name" fanout-sse --ws "$WS" --sse "$SSE" --doc bench-fanout-sse --subscribers "$zeros" \
      --viewers "$LADDER" --rate "$RATE" --duration "$DURATION" --server-pid "$SERVER_PID"
  fi
  run "$name" fanout-writers --ws "$WS" --doc bench-writers --writers 200 --subscribers 100 --rate 200 \
    --duration "$DURATION" --server-pid "$SERVER_PID"
  run "$name" join --ws "$WS" --trace "$TRACE" --clients 150 --large-mb "$JOIN_MB" --server-pid "$SERVER_PID"
  run "$name" transports --ws "$WS" "${sse[@]}" --text-from "$TRACE" --messages 100
  # Last before the restart: a peer's persistence may stay busy with the
  # 260k-change document for a while, which must not slow other scenarios.
  run "$name" ingest --ws "$WS" --trace "$TRACE" --timeout 120s --server-pid "$SERVER_PID"
  # Every other trace too, each into a document of its own (the concurrent
  # one from its three writers' points of view, in causal order).
  for t in "$ROOT"/../shared/traces/*/*.json.gz; do
    [ "$t" -ef "$TRACE" ] && continue
    tname=$(basename "$t" .json.gz)
    run "$name" "ingest-$tname" --ws "$WS" --trace "$t" --doc "bench-ingest-$tname" --timeout 120s \
      --server-pid "$SERVER_PID"
  done
  # Cold: a fresh process, the document only on disk.
  stop
  start "$name"
  run "$name" coldload --ws "$WS" --doc bench-ingest --trace "$TRACE"
  stop
done

# weft's cluster mode: the writer on one node, the subscribers on another,
# both on one Redis (fsync on every write, like weft's own store).
CLUSTER_PIDS=()
stop_cluster() { for p in "${CLUSTER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; CLUSTER_PIDS=(); }
trap 'stop; stop_cluster' EXIT
if [[ ",$SERVERS," == *,weft,* ]] && command -v redis-server >/dev/null; then
  mkdir -p "$OUT/weft-cluster" "$SCRATCH/data/redis"
  rm -rf "${SCRATCH:?}/data/redis/"*
  RPORT=$((PORT + 10))
  redis-server --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly yes --appendfsync always \
    --dir "$SCRATCH/data/redis" >"$OUT/redis.log" 2>&1 &
  CLUSTER_PIDS+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$RPORT") 2>/dev/null && break; sleep 0.1; done
  for n in 1 2; do
    "$ROOT/target/release/weft" serve --listen "127.0.0.1:$((PORT + n))" --redis "redis://127.0.0.1:$RPORT" \
      --max-messages-per-sec 0 --max-connections-per-client 0 --log-format json >"$OUT/weft-cluster-$n.log" 2>&1 &
    CLUSTER_PIDS+=($!)
  done
  for n in 1 2; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + n))") 2>/dev/null && break; sleep 0.1; done
  done
  run weft-cluster fanout --ws "ws://127.0.0.1:$((PORT + 2))/ws" --writer-ws "ws://127.0.0.1:$((PORT + 1))/ws" \
    --subscribers "$LADDER" --rate "$RATE" --duration "$DURATION" --server-pid "${CLUSTER_PIDS[2]}"
  stop_cluster
else
  mkdir -p "$OUT/weft-cluster"
  echo "needs redis-server" >"$OUT/weft-cluster/fanout.skip"
fi

echo
echo "results: $OUT"
"$BENCH" compare "$OUT" --servers "$SERVERS" | tee "$OUT/table.md"
if [ -d "$ROOT/tests/bench/baseline" ] && [[ ",$SERVERS," == *,weft,* ]]; then
  # The committed baseline (an earlier run of weft on the reference
  # machine): a ratio well above 1 in the last column is a regression.
  cp -r "$ROOT/tests/bench/baseline" "$OUT/baseline"
  echo
  echo "weft against the committed baseline (weft / baseline; above 1 is slower):"
  "$BENCH" compare "$OUT" --servers baseline,weft | tee "$OUT/baseline.md"
fi
echo
echo "cluster mode (writer on node 1, subscribers on node 2) against one weft process:"
"$BENCH" compare "$OUT" --servers weft,weft-cluster | grep -E '^\| (figure|fanout [0-9,]+ subs)|^\|--' | tee "$OUT/cluster.md"
