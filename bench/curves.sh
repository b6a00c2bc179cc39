#!/usr/bin/env bash
# How cost grows: ssebridge (published to through Redis PUBLISH) measured
# along four curves, each point a fresh server on one redis-server. Each
# curve should be flat or explained:
#
#   streams    server CPU per delivery and RSS per idle stream against the
#              streams open: N in STREAMS_N (1000 5000 10000 15000), broadcast,
#              MODERATE_EVENTS (20) at MODERATE_RATE (5) a second.
#   rooms      server CPU per published event as the rooms multiply, the
#              deliveries the same: ROOMS_N (10000) streams, each in one of R
#              rooms for R in ROOMS (10 100 1000 10000), events round-robin
#              over the rooms (-scenario rooms), as many as make
#              ROOMS_DELIVERIES (200000) deliveries (D×R/N events), evenly
#              over ROOMS_SECONDS (10).
#   room-size  the cost of a room event as its room grows: one room of M
#              members, M in ROOM_SIZES (1 10 100 1000 10000) (-scenario room
#              -n M), as many events as make ROOM_DELIVERIES (100000)
#              deliveries but ROOM_MAX_EVENTS (20000) at most, evenly over
#              ROOM_SECONDS (10).
#   channels   the channels the instance subscribes in Redis (PUBSUB CHANNELS,
#              read with the streams open and idle) against the distinct
#              channels its streams hold (users, rooms, broadcast): the chat's
#              layout (bench/chat.go) at N in CHANNELS_N (1000 5000 10000),
#              with a handful of events (one direct, one room and one
#              broadcast a second for CHANNELS_SECONDS, 5).
#
# Writes every result as a JSON line with its "curve" and "x" (the streams,
# rooms or members varied) to bench/results/<time>-curves.jsonl (not
# committed; bench/plot.py --curves draws it) and a Markdown table
# (bench/table.py) to stdout and <time>-curves.md.
#
#   bench/curves.sh                                      # every curve, ROUNDS=1
#   CURVES="rooms room-size" ROUNDS=3 bench/curves.sh
#   CURVES=streams STREAMS_N="1000 2000" REDIS_PORT=6397 SSEBRIDGE_PORT=8381 bench/curves.sh
#
# Ports: Redis REDIS_PORT (6399), ssebridge SSEBRIDGE_PORT (8181); DRAIN
# (20s) is how long a run waits for late deliveries. Everything listens on
# 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a curves <<<"${CURVES:-streams rooms room-size channels}"
ROUNDS=${ROUNDS:-1}
STREAMS_N=${STREAMS_N:-1000 5000 10000 15000}
MODERATE_EVENTS=${MODERATE_EVENTS:-20}
MODERATE_RATE=${MODERATE_RATE:-5}
ROOMS_N=${ROOMS_N:-10000}
ROOMS=${ROOMS:-10 100 1000 10000}
ROOMS_DELIVERIES=${ROOMS_DELIVERIES:-200000}
ROOMS_SECONDS=${ROOMS_SECONDS:-10}
ROOM_SIZES=${ROOM_SIZES:-1 10 100 1000 10000}
ROOM_DELIVERIES=${ROOM_DELIVERIES:-100000}
ROOM_MAX_EVENTS=${ROOM_MAX_EVENTS:-20000}
ROOM_SECONDS=${ROOM_SECONDS:-10}
CHANNELS_N=${CHANNELS_N:-1000 5000 10000}
CHANNELS_SECONDS=${CHANNELS_SECONDS:-5}
REDIS_PORT=${REDIS_PORT:-6399}
SSEBRIDGE_PORT=${SSEBRIDGE_PORT:-8181}
DRAIN=${DRAIN:-20s}
REDIS="redis://127.0.0.1:$REDIS_PORT"
URL="http://127.0.0.1:$SSEBRIDGE_PORT"

. bench/lib.sh

echo "building into $work" >&2
go build -o "$work/ssebridge" .
go build -o "$work/bench" ./bench

start_redis "$REDIS_PORT"
sleep 0.2

# start: runs a fresh ssebridge, sets PID.
start() {
  REDIS_URL=$REDIS LISTEN_ADDR=127.0.0.1:$SSEBRIDGE_PORT PUBLISH_TOKEN=bench-key LOG_LEVEL=warn MAX_STREAMS_PER_USER=100 \
    "$work/ssebridge" >"$work/server.log" 2>&1 &
  PID=$!
  await_server ssebridge "$PID" "$URL/"
}

mkdir -p bench/results
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-curves.jsonl"
commit=$(git rev-parse --short HEAD)

# measure CURVE X WHAT FLAGS...: one point of CURVE at X, a fresh server.
measure() {
  local curve=$1 x=$2 what=$3; shift 3
  start
  loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "round $round: $curve, $what (load average $loadavg)" >&2
  line=$("$work/bench" -url "$URL/events" -sessions -publish redis -redis "$REDIS" -pid "$PID" -drain "$DRAIN" "$@" 2>"$work/run.log" | tail -1) || true
  cat "$work/run.log" >>"$work/bench.log"
  stop_server "$PID"
  if [ -s "$work/server.log" ]; then
    echo "ssebridge's log ($(wc -l <"$work/server.log") lines), the last:" >&2
    tail -5 "$work/server.log" >&2
  fi
  [ -n "$line" ] || line=null
  echo "{\"commit\":\"$commit\",\"round\":$round,\"curve\":\"$curve\",\"x\":$x,\"system\":\"ssebridge-redis\",\"load\":\"$curve\",\"loadavg\":\"$loadavg\",\"result\":$line}" >>"$out"
  grep -E '^(connected|deliveries|latency|server RSS|CPU|channels|rooms|planned|chat)' "$work/run.log" >&2 || true
}

for round in $(seq "$ROUNDS"); do
  for curve in "${curves[@]}"; do
    case $curve in
      streams)
        for n in $STREAMS_N; do
          measure streams "$n" "$n streams, broadcast, $MODERATE_EVENTS events at $MODERATE_RATE/s" \
            -n "$n" -events "$MODERATE_EVENTS" -rate "$MODERATE_RATE"
        done ;;
      rooms)
        for r in $ROOMS; do
          measure rooms "$r" "$ROOMS_N streams in $r rooms, $ROOMS_DELIVERIES deliveries over ${ROOMS_SECONDS}s" \
            -n "$ROOMS_N" -scenario rooms -rooms "$r" -deliveries "$ROOMS_DELIVERIES" -seconds "$ROOMS_SECONDS"
        done ;;
      room-size)
        for m in $ROOM_SIZES; do
          d=$((ROOM_MAX_EVENTS * m < ROOM_DELIVERIES ? ROOM_MAX_EVENTS * m : ROOM_DELIVERIES))
          measure room-size "$m" "a room of $m members, $d deliveries over ${ROOM_SECONDS}s" \
            -n "$m" -scenario room -deliveries "$d" -seconds "$ROOM_SECONDS"
        done ;;
      channels)
        for n in $CHANNELS_N; do
          measure channels "$n" "$n streams in the chat's layout, nearly idle" \
            -n "$n" -scenario chat -seconds "$CHANNELS_SECONDS" -direct-rate 1 -room-rate 1 -broadcast-rate 1 -workers 1
        done ;;
      *) echo "unknown curve $curve (streams, rooms, room-size or channels)" >&2; exit 2 ;;
    esac
  done
done

bench/table.py "$out" | tee "${out%.jsonl}.md"
echo "results: $out (plot: /usr/bin/python3 bench/plot.py -o DIR --curves $out)" >&2
