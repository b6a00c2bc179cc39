package main

import (
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"
)

// configHelp says in one line what each environment variable of Config
// does. The help text lists Config's fields by reflection, with their
// defaults from the envDefault tags; TestHelp fails when a field has no line
// here. (A map beside Config rather than a tag on each field: Config's lines
// stay as they are for the branches that add fields.)
var configHelp = map[string]string{
	"LISTEN_ADDR":              "HTTP listen address",
	"REDIS_URL":                "redis://[user:pass@]host:port/db; unset: an embedded Redis on loopback, for trying out",
	"LOG_LEVEL":                "debug, info, warn or error",
	"SESSION_COOKIE":           "cookie holding the session token",
	"SESSION_PREFIX":           "Redis key prefix of sessions",
	"CHANNEL_PREFIX":           "Redis channel prefix",
	"ALLOWED_ORIGINS":          "comma-separated origins allowed besides the service's own",
	"HEARTBEAT_INTERVAL":       "a \": ping\" comment every interval while a stream is silent",
	"SESSION_RECHECK_INTERVAL": "how often open streams' sessions are checked for deletion",
	"RETRY_INTERVAL":           "retry: sent to browsers; Retry-After on 429 and 503",
	"WRITE_TIMEOUT":            "deadline of one write to a stream",
	"SHUTDOWN_TIMEOUT":         "on SIGTERM, how long streams get to end",
	"REDIS_PING_INTERVAL":      "ping the pub/sub connection after this long without traffic",
	"REDIS_TIMEOUT":            "longest a request waits for Redis (session read, opening, publish); past it 503 with Retry-After",
	"PUBSUB_LAG_LIMIT":         "how far pub/sub may fall behind before /readyz is 503 and streams catch up from history",
	"IDEMPOTENCY_WINDOW":       "a publish repeating an Idempotency-Key seen this recently answers the first id, publishes nothing",
	"PUBLISH_TOKEN":            "bearer token of POST /publish; unset: no such route",
	"HISTORY_MAXLEN":           "durable events kept per channel",
	"HISTORY_TTL":              "a channel's history expires this long after its last publish",
	"REPLAY_MAX_BYTES":         "most a resuming stream replays; past it, event: reset",
	"REPLAY_INFLIGHT_BYTES":    "replayed bytes read from Redis and not yet written, all streams together (a mass reconnect waits past it)",
	"MAX_STREAMS_PER_USER":     "open streams per user on this instance (429 past it)",
	"MAX_STREAMS":              "open streams on this instance (429 past it)",
	"MAX_ROOMS":                "rooms of one stream (403 past it for a session, a join past it is refused and counted)",
	"MAX_EVENT_BYTES":          "largest published payload",
	"MAX_SESSION_BYTES":        "largest session value",
	"STREAM_QUEUE":             "events queued for one stream before it counts as slow",
	"STREAM_QUEUE_BYTES":       "bytes queued for one stream before it counts as slow",
	"REDIS_POOL_SIZE":          "connections for session lookups (plus one for pub/sub)",
	"EVENT_LOOPS":              "event-loop writers of live HTTP/1.1 streams (Linux): 0 one per core, -1 none",
	"REDIS_SENTINEL_ADDRS":     "comma-separated host:port of Redis Sentinels, instead of REDIS_URL (docs/SENTINEL.md)",
	"REDIS_SENTINEL_MASTER":    "with REDIS_SENTINEL_ADDRS: the name the sentinels monitor the primary under",
	"REDIS_SENTINEL_USERNAME":  "ACL user for the sentinels",
	"REDIS_SENTINEL_PASSWORD":  "password of the sentinels (their requirepass)",
	"REDIS_CLUSTER_ADDRS":      "comma-separated host:port of Redis Cluster nodes, instead of REDIS_URL (docs/CLUSTER.md)",
	"CLUSTER_PARTITIONS":       "with REDIS_CLUSTER_ADDRS: partitions channels are spread over, 1 to 256 (ids grow with it); the same everywhere",
	"REDIS_USERNAME":           "ACL user for the Redis data nodes (with REDIS_URL: instead of the URL's)",
	"REDIS_PASSWORD":           "password of the Redis data nodes (with REDIS_URL: instead of the URL's)",
	"DURABLE_WAIT_REPLICAS":    "POST /publish answers only once this many replicas have the event (WAIT), else 503; 0: no wait",
	"DURABLE_WAIT_TIMEOUT":     "how long POST /publish waits for DURABLE_WAIT_REPLICAS",
	"PPROF_ADDR":               "e.g. 127.0.0.1:6060: Go's profiling endpoints on their own listener; unset: none",
	"TLS_CERT_FILE":            "PEM certificate chain: with TLS_KEY_FILE, serve HTTPS and HTTP/2 (both or neither)",
	"TLS_KEY_FILE":             "PEM private key of TLS_CERT_FILE",

	"MAX_RESUMES_PER_USER_PER_MINUTE": "opens with a Last-Event-ID per user on this instance: a burst of that many, then one every minute/N (429 past it)",
}

// configVar is one environment variable of Config.
type configVar struct{ Name, Default, Help string }

// configVars lists Config's environment variables in the order of its fields.
func configVars() []configVar {
	t := reflect.TypeFor[Config]()
	vars := make([]configVar, 0, t.NumField())
	for f := range t.Fields() {
		name := f.Tag.Get("env")
		if name == "" {
			continue
		}
		vars = append(vars, configVar{Name: name, Default: f.Tag.Get("envDefault"), Help: configHelp[name]})
	}
	return vars
}

const helpHead = `ssebridge carries a backend's events from Redis to browsers over Server-Sent Events.

Usage:
  ssebridge                   serve: the server mode, configured by the environment below
  ssebridge publish [flags]   publish a durable event (ssebridge publish -h for the flags)
  ssebridge tail [flags]      print a stream's events, resuming after a drop (ssebridge tail -h)
  ssebridge version           the version, Go version and VCS revision of this build (also -version)
  ssebridge help              this text (also -h, --help)

Without REDIS_URL the server starts an embedded Redis for trying out, on
loopback only (REDIS_URL set but empty is an error), and publish and tail
on the same machine find it by themselves.

Environment (server mode; a bad value stops the start, naming the variable):
`

// writeHelp writes the help text.
func writeHelp(w io.Writer) {
	var b strings.Builder
	b.WriteString(helpHead)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, v := range configVars() {
		def := v.Default
		if def == "" {
			def = "(unset)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.Name, def, v.Help)
	}
	tw.Flush()
	b.WriteString("\nSee docs/protocol.md for the contract (sessions, channels, events, HTTP routes) and docs/configuration.md for these settings.\n")
	io.WriteString(w, b.String())
}
