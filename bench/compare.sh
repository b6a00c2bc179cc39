#!/usr/bin/env bash
# Side by side, in one run on one machine and one Redis: the bare net/http
# fan-out (bench/bare), ssebridge (published to through Redis and through
# POST /publish) and Centrifugo v6.9.1 (uni_sse, Redis engine, HTTP API).
# Writes a Markdown table to stdout and bench/results/ (not committed).
#
#   bench/compare.sh                     # N=10000 streams, ROUNDS=1
#   N=15000 ROUNDS=3 bench/compare.sh
#   SYSTEMS="bare ssebridge-redis" LOADS=moderate MODERATE_RATE=2 bench/compare.sh
#
# Centrifugo is installed into a temporary directory with `go install`
# (never committed); CENTRIFUGO=/path/to/centrifugo reuses a binary.
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
ROUNDS=${ROUNDS:-1}
MODERATE_RATE=${MODERATE_RATE:-5}
MODERATE_EVENTS=${MODERATE_EVENTS:-50}
SATURATION_RATE=${SATURATION_RATE:-20}
SATURATION_EVENTS=${SATURATION_EVENTS:-200}
REDIS_PORT=${REDIS_PORT:-6399}

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "building into $work" >&2
go build -o "$work/ssebridge" .
go build -o "$work/bench" ./bench
go build -o "$work/bare" ./bench/bare
CENTRIFUGO=${CENTRIFUGO:-}
if [ -z "$CENTRIFUGO" ]; then
  echo "installing Centrifugo v6.9.1 (a few minutes the first time)" >&2
  GOBIN="$work" go install github.com/centrifugal/centrifugo/v6@v6.9.1
  CENTRIFUGO="$work/centrifugo"
fi

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --maxclients 1000 >"$work/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
REDIS="redis://127.0.0.1:$REDIS_PORT"

cat >"$work/centrifugo.json" <<JSON
{
  "http_server": {"address": "127.0.0.1", "port": 8200},
  "client": {"token": {"hmac_secret_key": "bench-secret"}, "allowed_origins": ["*"]},
  "http_api": {"key": "bench-key"},
  "uni_sse": {"enabled": true},
  "engine": {"type": "redis", "redis": {"address": ["redis://127.0.0.1:$REDIS_PORT"]}},
  "log": {"level": "error"}
}
JSON

# start SYSTEM: runs the server under test, sets PID and the bench's flags.
start() {
  case $1 in
    bare)
      "$work/bare" -addr 127.0.0.1:8190 -redis "127.0.0.1:$REDIS_PORT" >"$work/bare.log" 2>&1 &
      PID=$!; URL=http://127.0.0.1:8190; FLAGS=(-url "$URL/events" -publish redis) ;;
    ssebridge-redis|ssebridge-http)
      REDIS_URL=$REDIS LISTEN_ADDR=127.0.0.1:8181 PUBLISH_TOKEN=bench-key LOG_LEVEL=warn MAX_STREAMS_PER_USER=100 \
        "$work/ssebridge" >"$work/ssebridge.log" 2>&1 &
      PID=$!; URL=http://127.0.0.1:8181; FLAGS=(-url "$URL/events" -sessions)
      if [ "$1" = ssebridge-http ]; then FLAGS+=(-publish http -http-url "$URL/publish" -http-key bench-key); else FLAGS+=(-publish redis); fi ;;
    centrifugo)
      "$CENTRIFUGO" --config "$work/centrifugo.json" >"$work/centrifugo.log" 2>&1 &
      PID=$!; URL=http://127.0.0.1:8200
      FLAGS=(-url "$URL/connection/uni_sse" -centrifugo-secret bench-secret -publish http -http-style centrifugo -http-url "$URL/api/publish" -http-key bench-key) ;;
  esac
  pids+=("$PID")
  until curl -s -o /dev/null "$URL/"; do sleep 0.1; done
}

stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; redis-cli -p "$REDIS_PORT" flushall >/dev/null; }

mkdir -p bench/results
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ).jsonl"
read -r -a systems <<<"${SYSTEMS:-bare ssebridge-redis ssebridge-http centrifugo}"
read -r -a loads <<<"${LOADS:-moderate saturation}"
for round in $(seq "$ROUNDS"); do
  for sys in "${systems[@]}"; do
    for load in "${loads[@]}"; do
      if [ $load = moderate ]; then rate=$MODERATE_RATE; events=$MODERATE_EVENTS; else rate=$SATURATION_RATE; events=$SATURATION_EVENTS; fi
      start "$sys"
      echo "round $round: $sys, $load ($N streams, $rate events/s)" >&2
      line=$("$work/bench" "${FLAGS[@]}" -redis "$REDIS" -n "$N" -events "$events" -rate "$rate" -pid "$PID" -drain 20s 2>>"$work/bench.log" | tail -1) || true
      stop
      echo "{\"round\":$round,\"system\":\"$sys\",\"load\":\"$load\",\"result\":$line}" | tee -a "$out" >&2
    done
  done
done

# The table: medians over rounds would need more than bash; each round is a row.
{
  echo "| round | system | load | streams | RSS/stream KiB | deliveries/s | p50 ms | p99 ms | lost | dup |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  python3 - "$out" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line); x = r["result"]
    print(f'| {r["round"]} | {r["system"]} | {r["load"]} | {x["connected"]} | {x.get("rss_per_stream_kib", 0):.1f} | {x["deliveries_per_s"]:.0f} | {x["p50_ms"]:.0f} | {x["p99_ms"]:.0f} | {x["lost"]} | {x["duplicated"]} |')
PY
} | tee "${out%.jsonl}.md"
