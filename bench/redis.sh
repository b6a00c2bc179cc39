#!/usr/bin/env bash
# What Redis pub/sub costs Redis, for docs/SCALING.md (bench/redisfan does
# the measuring). On a fresh standalone redis-server: PUBLISH and SPUBLISH
# of MESSAGES messages to K subscriber connections (K in SUBSCRIBERS; a
# subscriber is an ssebridge instance), and Redis's memory per subscribed
# channel (SUB_CHANNELS channels on one connection). With CLUSTER=1, also a
# three-master cluster on loopback: the CPU of every node while one node
# takes PUBLISH, then SPUBLISH. JSON lines to bench/results/redis-<time>.jsonl.
#
#   bench/redis.sh
#   CLUSTER=1 SUBSCRIBERS="1 100" bench/redis.sh
#
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-500000}
DELIVERIES=${DELIVERIES:-20000000}
SUBSCRIBERS=${SUBSCRIBERS:-1 10 100 1000}
SUB_CHANNELS=${SUB_CHANNELS:-100000}
PORT=${PORT:-6398}
CLUSTER_PORTS=(7101 7102 7103)

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/redisfan" ./bench/redisfan
mkdir -p bench/results
out="bench/results/redis-$(date -u +%Y%m%dT%H%M%SZ).jsonl"

# serve PORT [redis-server flags]: a fresh Redis without persistence.
serve() {
  local port=$1; shift
  mkdir -p "$work/$port"
  (cd "$work/$port" && exec redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no "$@") >"$work/$port.log" 2>&1 &
  pids+=($!)
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
}

# fan LABEL FLAGS...: one redisfan run, its JSON line labelled.
fan() {
  local label=$1; shift
  echo "$label: loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  line=$("$work/redisfan" "$@" | tail -1)
  echo "{\"case\":\"$label\",\"loadavg\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"result\":$line}" >>"$out"
}

serve "$PORT"
for k in $SUBSCRIBERS; do
  m=$((DELIVERIES / k < MESSAGES ? DELIVERIES / k : MESSAGES))
  fan standalone -redis "127.0.0.1:$PORT" -subscribers "$k" -messages "$m"
  fan standalone -redis "127.0.0.1:$PORT" -subscribers "$k" -messages "$m" -sharded
done
fan channels -redis "127.0.0.1:$PORT" -subscribers 1 -channels "$SUB_CHANNELS" -messages "$SUB_CHANNELS"

if [ "${CLUSTER:-0}" = 1 ]; then
  for p in "${CLUSTER_PORTS[@]}"; do serve "$p" --cluster-enabled yes --cluster-config-file nodes.conf; done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") --cluster-yes >"$work/create.log"
  until redis-cli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q cluster_state:ok; do sleep 0.2; done
  # The node that owns the channel's slot takes both; its peers' CPU is the
  # cost of the cluster bus.
  owner=""
  for p in "${CLUSTER_PORTS[@]}"; do
    if ! redis-cli -p "$p" spublish fan:000000 x | grep -q MOVED; then owner=$p; fi
  done
  cpu() { redis-cli -p "$1" info cpu | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.3f", s}'; }
  for mode in plain sharded; do
    flags=(-redis "127.0.0.1:$owner" -subscribers 10 -messages "$MESSAGES")
    [ $mode = sharded ] && flags+=(-sharded)
    declare -A before
    for p in "${CLUSTER_PORTS[@]}"; do before[$p]=$(cpu "$p"); done
    fan "cluster-$mode" "${flags[@]}"
    peers="" sep=""
    for p in "${CLUSTER_PORTS[@]}"; do
      [ "$p" = "$owner" ] && continue
      peers+="$sep$(awk -v a="$(cpu "$p")" -v b="${before[$p]}" 'BEGIN {printf "%.3f", a - b}')"; sep=,
    done
    echo "{\"case\":\"cluster-$mode-peers\",\"peer_cpu_seconds\":[$peers]}" >>"$out"
  done
fi
echo "results: $out" >&2
cat "$out"
