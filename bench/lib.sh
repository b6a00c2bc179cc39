# Sourced by the bench scripts (compare.sh, tls.sh, curves.sh, presence.sh):
# a work directory, removed at exit with every process in pids stopped;
# await; and start_redis.

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# await SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds;
# gives up after SECONDS.
await() {
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then echo "gave up waiting for $what after ${limit}s" >&2; exit 1; fi
    sleep 0.1
  done
}

# start_redis PORT: a throwaway redis-server on 127.0.0.1:PORT, no
# persistence, its files in the work directory; stops the script if it does
# not answer (a port taken, say).
start_redis() {
  (cd "$work" && exec redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --maxclients 1000) >"$work/redis.log" 2>&1 &
  pids+=($!)
  await 10 redis-server redis-cli -p "$1" ping
  sleep 0.2 # a server already on the port answered that ping: ours exits
  kill -0 "${pids[-1]}" 2>/dev/null || { echo "redis-server did not start (is port $1 taken?): $(tail -1 "$work/redis.log")" >&2; exit 1; }
}

# await_server NAME PID URL [CURL_FLAGS...]: waits until URL answers, then
# stops the script if PID exited meanwhile (another server on its port
# answered); the server logs to $work/server.log.
await_server() {
  local name=$1 pid=$2 url=$3; shift 3
  pids+=("$pid")
  await 10 "$name" curl -s "$@" -o /dev/null "$url"
  sleep 0.2
  kill -0 "$pid" 2>/dev/null || { echo "$name did not start (is its port taken?): $(tail -1 "$work/server.log")" >&2; exit 1; }
}

# stop_server PID: stops the server under test and empties Redis for the next.
stop_server() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; redis-cli -p "$REDIS_PORT" flushall >/dev/null; }
