#!/usr/bin/env bash
# Side by side, in one run on one machine and one Redis: the single-writer
# limit (bench/limit), the bare net/http fan-out (bench/bare), ssebridge
# (published to through Redis, its durable script and POST /publish) and
# Centrifugo v6.9.1 (uni_sse, Redis engine, HTTP API; without and with
# history). Each server is started fresh for
# each measurement. Writes every result as a JSON line to
# bench/results/<time>.jsonl (not committed; bench/plot.py draws it) and a
# Markdown table to stdout and <time>.md. TLS and HTTP/2 against plain HTTP:
# bench/tls.sh; how cost grows with streams, rooms, room size and channels
# (-scenario rooms, -deliveries): bench/curves.sh.
#
#   bench/compare.sh                             # N=10000 streams, ROUNDS=1
#   N=15000 ROUNDS=3 bench/compare.sh
#   N="1000 5000 10000 15000" LOADS=moderate MODERATE_EVENTS=10 bench/compare.sh   # memory against streams
#   SYSTEMS=ssebridge-redis LOADS=storm bench/compare.sh                            # the reconnect storm
#   SYSTEMS="ssebridge-redis ssebridge-script ssebridge-http centrifugo centrifugo-history" LOADS=chat bench/compare.sh
#
# Systems: limit, bare, ssebridge-redis (published to with PUBLISH),
# ssebridge-script (its durable publish script, as the Django client does),
# ssebridge-http (POST /publish), centrifugo (no history: the peer of
# PUBLISH) and centrifugo-history (history_size 1000, history_ttl 24h on
# every channel: the peer of the durable script). SYSTEMS defaults to
# "limit bare ssebridge-redis ssebridge-http centrifugo".
#
# Loads: moderate (MODERATE_EVENTS at MODERATE_RATE/s), saturation
# (SATURATION_EVENTS at SATURATION_RATE/s), storm (ssebridge-redis only:
# durable events at STORM_RATE/s, every stream dropped halfway and back with
# Last-Event-ID within STORM_JITTER), chat (not limit or bare, which have no
# rooms: each stream holds its user channel, two rooms and the broadcast
# channel, as in bench/chat.go; for CHAT_SECONDS the backend sends
# CHAT_DIRECT_RATE direct, CHAT_ROOM_RATE room and CHAT_BROADCAST_RATE
# broadcast events a second, from CHAT_WORKERS concurrent publishers).
#
# Ports: Redis REDIS_PORT (6399), ssebridge SSEBRIDGE_PORT (8181),
# Centrifugo CENTRIFUGO_PORT (8200), limit 8170, bare 8190. After each
# run, the server's log is shown if it has anything in it (ssebridge logs
# warnings, Centrifugo errors).
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
CHAT_SECONDS=${CHAT_SECONDS:-30}
CHAT_DIRECT_RATE=${CHAT_DIRECT_RATE:-1000}
CHAT_ROOM_RATE=${CHAT_ROOM_RATE:-2000}
CHAT_BROADCAST_RATE=${CHAT_BROADCAST_RATE:-1}
CHAT_WORKERS=${CHAT_WORKERS:-16}
REDIS_PORT=${REDIS_PORT:-6399}
SSEBRIDGE_PORT=${SSEBRIDGE_PORT:-8181}
CENTRIFUGO_PORT=${CENTRIFUGO_PORT:-8200}
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ssebridge-bench}

. bench/lib.sh

echo "building into $work" >&2
go build -o "$work/ssebridge" .
go build -o "$work/bench" ./bench
go build -o "$work/bare" ./bench/bare
go build -o "$work/limit" ./bench/limit
CENTRIFUGO=${CENTRIFUGO:-$CACHE/centrifugo}
read -r -a systems <<<"${SYSTEMS:-limit bare ssebridge-redis ssebridge-http centrifugo}"
if [[ " ${systems[*]} " == *" centrifugo"* && ! -x "$CENTRIFUGO" ]]; then
  echo "installing Centrifugo v6.9.1 into $CACHE (a few minutes the first time)" >&2
  mkdir -p "$CACHE"
  GOBIN="$CACHE" go install github.com/centrifugal/centrifugo/v6@v6.9.1
  CENTRIFUGO="$CACHE/centrifugo"
fi

start_redis "$REDIS_PORT"
REDIS="redis://127.0.0.1:$REDIS_PORT"

# centrifugo_config FILE OPTIONS writes Centrifugo's configuration with
# OPTIONS (JSON members, or none) for every channel: those without a
# namespace (broadcast) and the namespaces user and room, which the chat's
# channels user:… and room:… are in (Centrifugo reads the part of a name
# before ':' as its namespace and refuses a connection token naming a
# channel of an unknown one).
centrifugo_config() {
  cat >"$1" <<JSON
{
  "http_server": {"address": "127.0.0.1", "port": $CENTRIFUGO_PORT},
  "client": {"token": {"hmac_secret_key": "bench-secret"}, "allowed_origins": ["*"]},
  "http_api": {"key": "bench-key"},
  "uni_sse": {"enabled": true},
  "engine": {"type": "redis", "redis": {"address": ["redis://127.0.0.1:$REDIS_PORT"]}},
  "channel": {
    "without_namespace": {$2},
    "namespaces": [{"name": "user"${2:+, $2}}, {"name": "room"${2:+, $2}}]
  },
  "log": {"level": "error"}
}
JSON
}
centrifugo_config "$work/centrifugo.json" ""
centrifugo_config "$work/centrifugo-history.json" '"history_size": 1000, "history_ttl": "24h"'

# start SYSTEM: runs the server under test, sets PID and the bench's flags.
start() {
  case $1 in
    limit)
      "$work/limit" -addr 127.0.0.1:8170 -redis "127.0.0.1:$REDIS_PORT" >"$work/server.log" 2>&1 &
      PID=$!; URL=http://127.0.0.1:8170; FLAGS=(-url "$URL/events" -publish redis) ;;
    bare)
      "$work/bare" -addr 127.0.0.1:8190 -redis "127.0.0.1:$REDIS_PORT" >"$work/server.log" 2>&1 &
      PID=$!; URL=http://127.0.0.1:8190; FLAGS=(-url "$URL/events" -publish redis) ;;
    ssebridge-redis|ssebridge-script|ssebridge-http)
      REDIS_URL=$REDIS LISTEN_ADDR=127.0.0.1:$SSEBRIDGE_PORT PUBLISH_TOKEN=bench-key LOG_LEVEL=warn MAX_STREAMS_PER_USER=100 \
        "$work/ssebridge" >"$work/server.log" 2>&1 &
      PID=$!; URL=http://127.0.0.1:$SSEBRIDGE_PORT; FLAGS=(-url "$URL/events" -sessions)
      case $1 in
        ssebridge-http) FLAGS+=(-publish http -http-url "$URL/publish" -http-key bench-key) ;;
        ssebridge-script) FLAGS+=(-publish script) ;;
        *) FLAGS+=(-publish redis) ;;
      esac ;;
    centrifugo|centrifugo-history)
      "$CENTRIFUGO" --config "$work/$1.json" >"$work/server.log" 2>&1 &
      PID=$!; URL=http://127.0.0.1:$CENTRIFUGO_PORT
      FLAGS=(-url "$URL/connection/uni_sse" -centrifugo-secret bench-secret -publish http -http-style centrifugo -http-url "$URL/api/publish" -http-key bench-key) ;;
    *) echo "unknown system $1" >&2; exit 2 ;;
  esac
  await_server "$1" "$PID" "$URL/"
}

mkdir -p bench/results
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ).jsonl"
commit=$(git rev-parse --short HEAD)
read -r -a loads <<<"${LOADS:-moderate saturation}"
read -r -a sizes <<<"$N"
for round in $(seq "$ROUNDS"); do
  for n in "${sizes[@]}"; do
    for sys in "${systems[@]}"; do
      for load in "${loads[@]}"; do
        case $load in
          moderate) rate=$MODERATE_RATE; extra=(-events "$MODERATE_EVENTS" -rate "$rate") ;;
          saturation) rate=$SATURATION_RATE; extra=(-events "$SATURATION_EVENTS" -rate "$rate") ;;
          storm)
            [ "$sys" = ssebridge-redis ] || { echo "storm: only for ssebridge-redis, skipping $sys" >&2; continue; }
            rate=$STORM_RATE; extra=(-events "$STORM_EVENTS" -rate "$rate" -publish script -storm -jitter "$STORM_JITTER") ;;
          chat)
            case $sys in limit|bare) echo "chat: $sys has no rooms or user channels, skipping it" >&2; continue ;; esac
            rate="$CHAT_DIRECT_RATE direct + $CHAT_ROOM_RATE room + $CHAT_BROADCAST_RATE broadcast"
            extra=(-scenario chat -seconds "$CHAT_SECONDS" -direct-rate "$CHAT_DIRECT_RATE" -room-rate "$CHAT_ROOM_RATE"
              -broadcast-rate "$CHAT_BROADCAST_RATE" -workers "$CHAT_WORKERS") ;;
          *) echo "unknown load $load" >&2; exit 2 ;;
        esac
        start "$sys"
        loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
        echo "round $round: $sys, $load ($n streams, $rate events/s; load average $loadavg)" >&2
        line=$("$work/bench" "${FLAGS[@]}" "${extra[@]}" -redis "$REDIS" -n "$n" -pid "$PID" -drain 20s 2>"$work/run.log" | tail -1) || true
        cat "$work/run.log" >>"$work/bench.log"
        stop_server "$PID"
        if [ -s "$work/server.log" ]; then
          echo "$sys's log ($(wc -l <"$work/server.log") lines), the last:" >&2
          tail -5 "$work/server.log" >&2
        fi
        [ -n "$line" ] || line=null
        echo "{\"commit\":\"$commit\",\"round\":$round,\"system\":\"$sys\",\"load\":\"$load\",\"loadavg\":\"$loadavg\",\"result\":$line}" >>"$out"
        grep -E '^(connected|deliveries|latency|CPU|Redis|chat|storm)' "$work/run.log" >&2 || true
      done
    done
  done
done

bench/table.py "$out" | tee "${out%.jsonl}.md"
echo "results: $out" >&2
