#!/usr/bin/env bash
# Side by side, in one run on one machine and one Redis: the single-writer
# limit (bench/limit), the bare net/http fan-out (bench/bare), ssebridge
# (published to through Redis and through POST /publish) and Centrifugo
# v6.9.1 (uni_sse, Redis engine, HTTP API). Each server is started fresh for
# each measurement. Writes every result as a JSON line to
# bench/results/<time>.jsonl (not committed; bench/plot.py draws it) and a
# Markdown table to stdout and <time>.md. TLS and HTTP/2 against plain HTTP:
# bench/tls.sh.
#
#   bench/compare.sh                             # N=10000 streams, ROUNDS=1
#   N=15000 ROUNDS=3 bench/compare.sh
#   N="1000 5000 10000 15000" LOADS=moderate MODERATE_EVENTS=10 bench/compare.sh   # memory against streams
#   SYSTEMS=ssebridge-redis LOADS=storm bench/compare.sh                            # the reconnect storm
#
# Loads: moderate (MODERATE_EVENTS at MODERATE_RATE/s), saturation
# (SATURATION_EVENTS at SATURATION_RATE/s), storm (ssebridge only: durable
# events at STORM_RATE/s, every stream dropped halfway and back with
# Last-Event-ID within STORM_JITTER).
#
# Centrifugo is installed once with `go install` into $CACHE (never
# committed); CENTRIFUGO=/path/to/centrifugo uses another binary.
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
ROUNDS=${ROUNDS:-1}
MODERATE_RATE=${MODERATE_RATE:-5}
MODERATE_EVENTS=${MODERATE_EVENTS:-50}
SATURATION_RATE=${SATURATION_RATE:-20}
SATURATION_EVENTS=${SATURATION_EVENTS:-200}
STORM_RATE=${STORM_RATE:-10}
STORM_EVENTS=${STORM_EVENTS:-100}
STORM_JITTER=${STORM_JITTER:-1s}
REDIS_PORT=${REDIS_PORT:-6399}
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ssebridge-bench}

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "building into $work" >&2
go build -o "$work/ssebridge" .
go build -o "$work/bench" ./bench
go build -o "$work/bare" ./bench/bare
go build -o "$work/limit" ./bench/limit
CENTRIFUGO=${CENTRIFUGO:-$CACHE/centrifugo}
read -r -a systems <<<"${SYSTEMS:-limit bare ssebridge-redis ssebridge-http centrifugo}"
if [[ " ${systems[*]} " == *" centrifugo "* && ! -x "$CENTRIFUGO" ]]; then
  echo "installing Centrifugo v6.9.1 into $CACHE (a few minutes the first time)" >&2
  mkdir -p "$CACHE"
  GOBIN="$CACHE" go install github.com/centrifugal/centrifugo/v6@v6.9.1
  CENTRIFUGO="$CACHE/centrifugo"
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
    limit)
      "$work/limit" -addr 127.0.0.1:8170 -redis "127.0.0.1:$REDIS_PORT" >"$work/limit.log" 2>&1 &
      PID=$!; URL=http://127.0.0.1:8170; FLAGS=(-url "$URL/events" -publish redis) ;;
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
    *) echo "unknown system $1" >&2; exit 2 ;;
  esac
  pids+=("$PID")
  until curl -s -o /dev/null "$URL/"; do sleep 0.1; done
}

stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; redis-cli -p "$REDIS_PORT" flushall >/dev/null; }

mkdir -p bench/results
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ).jsonl"
commit=$(git rev-parse --short HEAD)
read -r -a loads <<<"${LOADS:-moderate saturation}"
read -r -a sizes <<<"$N"
for round in $(seq "$ROUNDS"); do
  for n in "${sizes[@]}"; do
    for sys in "${systems[@]}"; do
      for load in "${loads[@]}"; do
        extra=()
        case $load in
          moderate) rate=$MODERATE_RATE; events=$MODERATE_EVENTS ;;
          saturation) rate=$SATURATION_RATE; events=$SATURATION_EVENTS ;;
          storm)
            [ "$sys" = ssebridge-redis ] || { echo "storm: only for ssebridge-redis, skipping $sys" >&2; continue; }
            rate=$STORM_RATE; events=$STORM_EVENTS; extra=(-publish script -storm -jitter "$STORM_JITTER") ;;
          *) echo "unknown load $load" >&2; exit 2 ;;
        esac
        start "$sys"
        loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
        echo "round $round: $sys, $load ($n streams, $rate events/s; load average $loadavg)" >&2
        line=$("$work/bench" "${FLAGS[@]}" "${extra[@]}" -redis "$REDIS" -n "$n" -events "$events" -rate "$rate" -pid "$PID" -drain 20s 2>"$work/run.log" | tail -1) || true
        cat "$work/run.log" >>"$work/bench.log"
        stop
        [ -n "$line" ] || line=null
        echo "{\"commit\":\"$commit\",\"round\":$round,\"system\":\"$sys\",\"load\":\"$load\",\"loadavg\":\"$loadavg\",\"result\":$line}" >>"$out"
        grep -E '^(connected|deliveries|latency|CPU|storm)' "$work/run.log" >&2 || true
      done
    done
  done
done

bench/table.py "$out" | tee "${out%.jsonl}.md"
echo "results: $out" >&2
