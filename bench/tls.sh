#!/usr/bin/env bash
# What TLS served by ssebridge itself costs against plain HTTP, in one run on
# one machine and one Redis: ssebridge three ways, each started fresh for
# each measurement and given the same load (broadcast, published through
# Redis):
#
#   ssebridge-plain   plain HTTP/1.1, a connection per stream (event-loop writers)
#   ssebridge-tls-h1  TLS_CERT_FILE/TLS_KEY_FILE, HTTP/1.1 over TLS, a connection per stream
#   ssebridge-tls-h2  the same, HTTP/2: the streams spread over H2_CONNS connections,
#                     as browsers with many tabs open share one per server
#
# and, if SYSTEMS names it, ssebridge-plain-goroutines: plain HTTP with
# EVENT_LOOPS=-1, a goroutine writing each stream as over TLS, to tell the
# cost of TLS from that of the writers.
#
# The certificate is a self-signed ECDSA P-256 one made with openssl for the
# run (the bench does not verify it). Writes every result as a JSON line to
# bench/results/<time>.jsonl (not committed) and a Markdown table
# (bench/table.py) to stdout and <time>.md: RSS per idle stream and server
# CPU per delivery, the figures to compare.
#
#   bench/tls.sh                                # N=10000 streams, 50 events at 5/s, H2_CONNS=300
#   N=1000 H2_CONNS=30 bench/tls.sh
#   SYSTEMS="ssebridge-tls-h1 ssebridge-tls-h2" ROUNDS=3 bench/tls.sh
#
# Everything listens on 127.0.0.1 (PORT, REDIS_PORT) and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
ROUNDS=${ROUNDS:-1}
EVENTS=${EVENTS:-50}
RATE=${RATE:-5}
H2_CONNS=${H2_CONNS:-300} # Go's server allows 250 streams per connection: at least N/250
REDIS_PORT=${REDIS_PORT:-6399}
PORT=${PORT:-8181}
REDIS="redis://127.0.0.1:$REDIS_PORT"

. bench/lib.sh

echo "building into $work" >&2
go build -o "$work/ssebridge" .
go build -o "$work/bench" ./bench
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>"$work/openssl.log"

start_redis "$REDIS_PORT"

# start SYSTEM: runs ssebridge as SYSTEM asks, sets PID and the bench's flags.
start() {
  local envs=() tls=(TLS_CERT_FILE="$work/cert.pem" TLS_KEY_FILE="$work/key.pem")
  case $1 in
    ssebridge-plain) URL=http://127.0.0.1:$PORT; FLAGS=() ;;
    ssebridge-plain-goroutines) URL=http://127.0.0.1:$PORT; FLAGS=(); envs=(EVENT_LOOPS=-1) ;;
    ssebridge-tls-h1) URL=https://127.0.0.1:$PORT; FLAGS=(); envs=("${tls[@]}") ;;
    ssebridge-tls-h2) URL=https://127.0.0.1:$PORT; FLAGS=(-h2 "$H2_CONNS"); envs=("${tls[@]}") ;;
    *) echo "unknown system $1" >&2; exit 2 ;;
  esac
  env "${envs[@]}" REDIS_URL="$REDIS" LISTEN_ADDR="127.0.0.1:$PORT" PUBLISH_TOKEN=bench-key LOG_LEVEL=warn MAX_STREAMS_PER_USER=100 \
    "$work/ssebridge" >"$work/server.log" 2>&1 &
  PID=$!
  FLAGS+=(-url "$URL/events" -sessions -publish redis)
  await_server "$1" "$PID" "$URL/" -k
}

mkdir -p bench/results
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-tls.jsonl"
commit=$(git rev-parse --short HEAD)
read -r -a systems <<<"${SYSTEMS:-ssebridge-plain ssebridge-tls-h1 ssebridge-tls-h2}"
for round in $(seq "$ROUNDS"); do
  for sys in "${systems[@]}"; do
    start "$sys"
    loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "round $round: $sys ($N streams, $EVENTS events at $RATE/s; load average $loadavg)" >&2
    line=$("$work/bench" "${FLAGS[@]}" -redis "$REDIS" -n "$N" -events "$EVENTS" -rate "$RATE" -pid "$PID" -drain 20s 2>"$work/run.log" | tail -1) || true
    cat "$work/run.log" >>"$work/bench.log"
    stop_server "$PID"
    [ -n "$line" ] || line=null
    h2=0
    [ "$sys" != ssebridge-tls-h2 ] || h2=$H2_CONNS
    echo "{\"commit\":\"$commit\",\"round\":$round,\"system\":\"$sys\",\"h2_connections\":$h2,\"load\":\"moderate\",\"loadavg\":\"$loadavg\",\"result\":$line}" >>"$out"
    grep -E '^(connected|deliveries|latency|server RSS|CPU)' "$work/run.log" >&2 || true
    grep -v '^$' "$work/server.log" | head -5 | sed 's/^/  ssebridge: /' >&2 || true
  done
done

bench/table.py "$out" | tee "${out%.jsonl}.md"
echo "results: $out" >&2
