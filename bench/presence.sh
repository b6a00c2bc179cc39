#!/usr/bin/env bash
# What room presence costs Redis while the streams are idle
# (docs/presence.md): a fresh redis-server and ssebridge built from the
# tree, STREAMS idle streams opened by the bench tool (each its own user, all
# in the room "bench"), then Redis's commands per second, by command and in
# all, over WINDOW seconds once the streams' arrivals are written and
# nothing else happens (and ssebridge's RSS at its start and end); then the
# presence keys and the room's memory per member. The server inherits the
# environment: run it with PRESENCE=true and PRESENCE=false, the difference
# is presence's idle cost.
#
#   bench/presence.sh
#   PRESENCE=false bench/presence.sh
#   STREAMS=1000 WINDOW=15 bench/presence.sh
#
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

STREAMS=${STREAMS:-10000}
WINDOW=${WINDOW:-30}  # seconds between the two INFO commandstats
SETTLE=${SETTLE:-10}  # seconds after every stream connected, before the first
REDIS_PORT=${REDIS_PORT:-6397}
PORT=${PORT:-8183}
REDIS="redis://127.0.0.1:$REDIS_PORT"

. bench/lib.sh

go build -o "$work/ssebridge" .
go build -o "$work/bench" ./bench

start_redis "$REDIS_PORT"

REDIS_URL=$REDIS LISTEN_ADDR=127.0.0.1:$PORT PUBLISH_TOKEN=bench-key LOG_LEVEL=warn MAX_STREAMS_PER_USER=100 \
  "$work/ssebridge" >"$work/ssebridge.log" 2>&1 &
server=$!
pids+=("$server")
await 10 ssebridge curl -sf -o /dev/null "http://127.0.0.1:$PORT/"

# Two events, the second long after the measurement: the streams stay open
# and idle in between (the first event is published once every stream is
# connected, before the settling time).
hold=$((SETTLE + WINDOW + 60))
echo "presence: PRESENCE=${PRESENCE:-true (default)}, $STREAMS streams; load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$work/bench" -url "http://127.0.0.1:$PORT/events" -sessions -publish redis -redis "$REDIS" \
  -n "$STREAMS" -events 2 -rate "$(awk -v h="$hold" 'BEGIN {print 1 / h}')" -pid "$server" -drain 1s \
  >"$work/bench.out" 2>"$work/bench.log" &
pids+=($!)
await 120 "the streams to connect" grep -q '^connected' "$work/bench.log"
grep '^connected' "$work/bench.log"
sleep "$SETTLE"

stats() { redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\1 \2/p' | sort; }
rss() { awk '/^VmRSS:/ {printf "%.1f MiB", $2 / 1024}' "/proc/$server/status"; }
stats >"$work/before"
t0=$(date +%s.%N)
echo "idle window: ${WINDOW}s from $(date -u +%T); load average $(cut -d' ' -f1-3 /proc/loadavg); ssebridge RSS $(rss)"
sleep "$WINDOW"
stats >"$work/after"
t1=$(date +%s.%N)
echo "load average at its end $(cut -d' ' -f1-3 /proc/loadavg); ssebridge RSS $(rss)"

echo
echo "Redis commands per second while idle (the script's own INFO and the like included):"
join -a2 -e 0 -o 0,1.2,2.2 "$work/before" "$work/after" |
  awk -v s="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" '
    { d = $3 - $2; if (d > 0) { printf "  %-16s %8d calls %8.3f/s\n", $1, d, d / s; t += d } }
    END { printf "  %-16s %8d calls %8.3f/s (over %.1f s)\n", "total", t, t / s, s }'

echo
keys=$(redis-cli -p "$REDIS_PORT" --scan --pattern 'sse:presence:*' | wc -l)
users=$(redis-cli -p "$REDIS_PORT" --scan --pattern 'sse:presence:user:*' | wc -l)
echo "presence keys: $keys (of which $users sse:presence:user:*)"
total=0
for k in names counts by streams; do
  b=$(redis-cli -p "$REDIS_PORT" memory usage "sse:presence:$k:bench" samples 0)
  echo "  MEMORY USAGE sse:presence:$k:bench: ${b:-0} bytes"
  total=$((total + ${b:-0}))
done
echo "the room's keys: $total bytes, $(awk -v t="$total" -v n="$STREAMS" 'BEGIN {printf "%.1f", t / n}') bytes per member"
u=$(redis-cli -p "$REDIS_PORT" memory usage "sse:presence:user:u0" samples 0)
echo "  MEMORY USAGE sse:presence:user:u0: ${u:-0} bytes (each member has one)"
echo "  Redis used_memory: $(redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | sed -n 's/^used_memory://p') bytes"
echo
echo "ssebridge.log (warnings and errors):"
sed 's/^/  /' "$work/ssebridge.log" | head -20
