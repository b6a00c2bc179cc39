package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/ssebridge/ssebridge/handlers"
	"github.com/ssebridge/ssebridge/wire"
)

// Config is read from the environment only. Each field's tags are the one
// place for its variable: env names it, envDefault is its default, help is
// its line in `ssebridge help` (help.go). docs/configuration.md lists every
// variable, and TestDocsConfiguration holds it to these tags.
type Config struct {
	ListenAddr     string     `env:"LISTEN_ADDR" envDefault:":8080" help:"HTTP listen address"`
	RedisURL       string     `env:"REDIS_URL" help:"redis://[user:pass@]host:port/db; unset: an embedded Redis on loopback, for trying out"`
	LogLevel       slog.Level `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	SessionCookie  string     `env:"SESSION_COOKIE" envDefault:"sse_session" help:"cookie holding the session token"`
	SessionPrefix  string     `env:"SESSION_PREFIX" envDefault:"session:" help:"Redis key prefix of sessions"`
	ChannelPrefix  string     `env:"CHANNEL_PREFIX" envDefault:"sse:" help:"Redis channel prefix"`
	AllowedOrigins []string   `env:"ALLOWED_ORIGINS" envSeparator:"," help:"comma-separated origins allowed besides the service's own"`

	HeartbeatInterval      time.Duration `env:"HEARTBEAT_INTERVAL" envDefault:"15s" help:"a \": ping\" comment every interval while a stream is silent"`
	SessionRecheckInterval time.Duration `env:"SESSION_RECHECK_INTERVAL" envDefault:"30s" help:"how often open streams' sessions are checked for deletion"`
	RetryInterval          time.Duration `env:"RETRY_INTERVAL" envDefault:"2s" help:"retry: sent to browsers; Retry-After on 429 and 503"`
	WriteTimeout           time.Duration `env:"WRITE_TIMEOUT" envDefault:"10s" help:"deadline of one write to a stream"`
	ShutdownTimeout        time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"10s" help:"on SIGTERM, how long streams get to end"`
	RedisPingInterval      time.Duration `env:"REDIS_PING_INTERVAL" envDefault:"5s" help:"ping the pub/sub connection after this long without traffic"`
	// The longest a request waits for Redis (a session read, a stream's
	// opening, POST /publish, a wait for a pool connection): past it, 503
	// with Retry-After.
	RedisTimeout time.Duration `env:"REDIS_TIMEOUT" envDefault:"2s" help:"longest a request waits for Redis (session read, opening, publish); past it 503 with Retry-After"`
	// How far the pub/sub feed may fall behind Redis (a PING's time through
	// it) before the instance reports not ready and catches its streams
	// up from history instead of draining the backlog.
	PubSubLagLimit time.Duration `env:"PUBSUB_LAG_LIMIT" envDefault:"5s" help:"how far pub/sub may fall behind before /readyz is 503 and streams catch up from history"`

	PublishToken   string        `env:"PUBLISH_TOKEN" help:"bearer token of POST /publish; unset: no such route"`
	HistoryMaxLen  int           `env:"HISTORY_MAXLEN" envDefault:"1000" help:"durable events kept per channel"`
	HistoryTTL     time.Duration `env:"HISTORY_TTL" envDefault:"24h" help:"a channel's history expires this long after its last publish"`
	ReplayMaxBytes int           `env:"REPLAY_MAX_BYTES" envDefault:"16777216" help:"most a resuming stream replays; past it, event: reset"`
	// Replayed bytes read from Redis and not yet written, all streams
	// together: what a mass reconnect may hold in memory for replay.
	ReplayInflightBytes int `env:"REPLAY_INFLIGHT_BYTES" envDefault:"67108864" help:"replayed bytes read from Redis and not yet written, all streams together (a mass reconnect waits past it)"`
	// Opens with a Last-Event-ID per user per minute, each a replay of up
	// to REPLAY_MAX_BYTES. 60: the 16 streams MAX_STREAMS_PER_USER allows
	// all resuming at once, three times in a minute, or one stream every
	// second, when a browser waits retry: (1 to 3 s) to reconnect.
	MaxResumesPerUserPerMinute int `env:"MAX_RESUMES_PER_USER_PER_MINUTE" envDefault:"60" help:"opens with a Last-Event-ID per user on this instance: a burst of that many, then one every minute/N (429 past it)"`

	MaxStreamsPerUser int `env:"MAX_STREAMS_PER_USER" envDefault:"16" help:"open streams per user on this instance (429 past it)"`
	MaxStreams        int `env:"MAX_STREAMS" envDefault:"100000" help:"open streams on this instance (429 past it)"`
	// A channel's last stream gone, its subscription is kept this long:
	// a stream back within it (a reload, a mass reconnect) costs Redis
	// no UNSUBSCRIBE and SUBSCRIBE.
	UnsubscribeDelay time.Duration `env:"UNSUBSCRIBE_DELAY" envDefault:"5s" help:"how long a channel left without streams stays subscribed (0: unsubscribed at once)"`
	// A mass reconnect opens its streams at this pace, not all at once:
	// what opening costs (a goroutine, net/http's buffers, the Redis
	// reads and the replay) is then bounded by it (docs/SCALING.md).
	OpenConcurrency  int `env:"OPEN_CONCURRENCY" envDefault:"256" help:"new connections and streams being opened at once; the rest wait, accepted (0: no bound)"`
	MaxRooms         int `env:"MAX_ROOMS" envDefault:"256" help:"rooms of one stream (403 past it for a session, a join past it is refused and counted)"`
	MaxEventBytes    int `env:"MAX_EVENT_BYTES" envDefault:"65536" help:"largest published payload"`
	MaxSessionBytes  int `env:"MAX_SESSION_BYTES" envDefault:"16384" help:"largest session value"`
	StreamQueue      int `env:"STREAM_QUEUE" envDefault:"256" help:"events queued for one stream before it counts as slow"`
	StreamQueueBytes int `env:"STREAM_QUEUE_BYTES" envDefault:"1048576" help:"bytes queued for one stream before it counts as slow"`
	RedisPoolSize    int `env:"REDIS_POOL_SIZE" envDefault:"8" help:"connections for session lookups (plus one for pub/sub)"`
	// Event-loop writers of live HTTP/1.1 streams (Linux): 0 is one per
	// core, -1 none (a goroutine per stream, as over TLS and HTTP/2).
	EventLoops int `env:"EVENT_LOOPS" envDefault:"0" help:"event-loop writers of live HTTP/1.1 streams (Linux): 0 one per core, -1 none"`

	// Redis Sentinel (docs/SENTINEL.md), instead of REDIS_URL: go-redis's
	// failover client asks the sentinels where the primary is, and follows
	// it when they fail over.
	RedisSentinelAddrs    []string `env:"REDIS_SENTINEL_ADDRS" envSeparator:"," help:"comma-separated host:port of Redis Sentinels, instead of REDIS_URL (docs/SENTINEL.md)"`
	RedisSentinelMaster   string   `env:"REDIS_SENTINEL_MASTER" help:"with REDIS_SENTINEL_ADDRS: the name the sentinels monitor the primary under"`
	RedisSentinelUsername string   `env:"REDIS_SENTINEL_USERNAME" help:"ACL user for the sentinels"`
	RedisSentinelPassword string   `env:"REDIS_SENTINEL_PASSWORD" help:"password of the sentinels (their requirepass)"`
	// Redis Cluster (docs/CLUSTER.md), instead of REDIS_URL: go-redis's
	// cluster client, sharded pub/sub, channels spread over
	// CLUSTER_PARTITIONS partitions (the same on every instance and backend).
	RedisClusterAddrs []string `env:"REDIS_CLUSTER_ADDRS" envSeparator:"," help:"comma-separated host:port of Redis Cluster nodes, instead of REDIS_URL (docs/CLUSTER.md)"`
	ClusterPartitions int      `env:"CLUSTER_PARTITIONS" envDefault:"16" help:"with REDIS_CLUSTER_ADDRS: partitions channels are spread over, 1 to 256 (ids grow with it); the same everywhere"`
	RedisUsername     string   `env:"REDIS_USERNAME" help:"ACL user for the Redis data nodes (with REDIS_URL: instead of the URL's)"`
	RedisPassword     string   `env:"REDIS_PASSWORD" help:"password of the Redis data nodes (with REDIS_URL: instead of the URL's)"`
	// A durable publish through ssebridge (POST /publish) is acknowledged
	// only once this many replicas have it (WAIT), else 503.
	DurableWaitReplicas int           `env:"DURABLE_WAIT_REPLICAS" envDefault:"0" help:"POST /publish answers only once this many replicas have the event (WAIT), else 503; 0: no wait"`
	DurableWaitTimeout  time.Duration `env:"DURABLE_WAIT_TIMEOUT" envDefault:"1s" help:"how long POST /publish waits for DURABLE_WAIT_REPLICAS"`
	// A publish with an Idempotency-Key seen within this window answers
	// the first one's id and publishes nothing.
	IdempotencyWindow time.Duration `env:"IDEMPOTENCY_WINDOW" envDefault:"5m" help:"a publish repeating an Idempotency-Key seen this recently answers the first id, publishes nothing"`

	// Room presence (docs/presence.md): who is in a room now, over every
	// instance, kept in Redis at a write per change of membership.
	Presence             bool          `env:"PRESENCE" envDefault:"true" help:"count each user's streams per room in Redis, for GET /presence and presence events; false: neither"`
	PresenceEvents       []string      `env:"PRESENCE_EVENTS" envSeparator:"," help:"comma-separated room-name prefixes whose rooms get event: presence (join, leave); *: every room; empty: none"`
	PresenceGrace        time.Duration `env:"PRESENCE_GRACE" envDefault:"5s" help:"a user whose stream comes back within this long (a reload, a blip, a restart) never left"`
	PresenceTTL          time.Duration `env:"PRESENCE_TTL" envDefault:"15s" help:"a crashed instance's streams leave every presence answer within this long (after PRESENCE_GRACE)"`
	PresenceFlush        time.Duration `env:"PRESENCE_FLUSH" envDefault:"100ms" help:"presence changes gather this long before one batched write"`
	PresenceRoomInterval time.Duration `env:"PRESENCE_ROOM_INTERVAL" envDefault:"250ms" help:"least time between two writes of one room's presence by an instance (a flapping room is written at this pace)"`
	PresencePageMax      int           `env:"PRESENCE_PAGE_MAX" envDefault:"1000" help:"most users one GET /presence answer lists (limit=)"`

	PprofAddr string `env:"PPROF_ADDR" help:"e.g. 127.0.0.1:6060: Go's profiling endpoints on their own listener; unset: none"`

	// Both set: serve HTTPS (and HTTP/2) with this PEM certificate chain
	// and key. Both unset: plain HTTP (TLS ends at a proxy, or nowhere).
	TLSCertFile string `env:"TLS_CERT_FILE" help:"PEM certificate chain: with TLS_KEY_FILE, serve HTTPS and HTTP/2 (both or neither)"`
	TLSKeyFile  string `env:"TLS_KEY_FILE" help:"PEM private key of TLS_CERT_FILE"`
}

// loadConfig reads Config from environ and checks it, naming the variable at fault.
func loadConfig(environ map[string]string) (Config, error) {
	cfg, err := env.ParseAsWithOptions[Config](env.Options{Environment: environ})
	if err != nil {
		return cfg, namedEnvError(err)
	}
	positive := map[string]int64{
		"HEARTBEAT_INTERVAL": int64(cfg.HeartbeatInterval), "SESSION_RECHECK_INTERVAL": int64(cfg.SessionRecheckInterval),
		"RETRY_INTERVAL": int64(cfg.RetryInterval), "WRITE_TIMEOUT": int64(cfg.WriteTimeout),
		"SHUTDOWN_TIMEOUT": int64(cfg.ShutdownTimeout), "REDIS_PING_INTERVAL": int64(cfg.RedisPingInterval),
		"REDIS_TIMEOUT": int64(cfg.RedisTimeout), "PUBSUB_LAG_LIMIT": int64(cfg.PubSubLagLimit),
		"IDEMPOTENCY_WINDOW":   int64(cfg.IdempotencyWindow),
		"MAX_STREAMS_PER_USER": int64(cfg.MaxStreamsPerUser), "MAX_STREAMS": int64(cfg.MaxStreams),
		"MAX_EVENT_BYTES": int64(cfg.MaxEventBytes), "MAX_SESSION_BYTES": int64(cfg.MaxSessionBytes),
		"STREAM_QUEUE": int64(cfg.StreamQueue), "STREAM_QUEUE_BYTES": int64(cfg.StreamQueueBytes),
		"REDIS_POOL_SIZE": int64(cfg.RedisPoolSize), "HISTORY_MAXLEN": int64(cfg.HistoryMaxLen),
		"HISTORY_TTL": int64(cfg.HistoryTTL), "REPLAY_MAX_BYTES": int64(cfg.ReplayMaxBytes),
		"REPLAY_INFLIGHT_BYTES": int64(cfg.ReplayInflightBytes), "MAX_ROOMS": int64(cfg.MaxRooms),
		"MAX_RESUMES_PER_USER_PER_MINUTE": int64(cfg.MaxResumesPerUserPerMinute),
		"PRESENCE_TTL":                    int64(cfg.PresenceTTL), "PRESENCE_FLUSH": int64(cfg.PresenceFlush),
		"PRESENCE_PAGE_MAX": int64(cfg.PresencePageMax),
	}
	for name, v := range positive {
		if v <= 0 {
			return cfg, fmt.Errorf("%s must be greater than zero", name)
		}
	}
	switch {
	case cfg.PresenceGrace < 0:
		return cfg, errors.New("PRESENCE_GRACE must not be negative")
	case cfg.PresenceRoomInterval < 0:
		return cfg, errors.New("PRESENCE_ROOM_INTERVAL must not be negative")
	case cfg.PresenceTTL < 3*cfg.PresenceFlush:
		return cfg, fmt.Errorf("PRESENCE_TTL (%v) must be at least three PRESENCE_FLUSH (%v): an instance beats every PRESENCE_TTL/3", cfg.PresenceTTL, cfg.PresenceFlush)
	}
	if cfg.SessionCookie == "" {
		return cfg, errors.New("SESSION_COOKIE must not be empty")
	}
	for _, o := range cfg.AllowedOrigins {
		if o = strings.TrimSpace(o); o != "" && !strings.Contains(o, "://") {
			return cfg, fmt.Errorf("ALLOWED_ORIGINS: %q is not an origin such as https://app.example.com", o)
		}
	}
	switch {
	case cfg.TLSCertFile != "" && cfg.TLSKeyFile == "":
		return cfg, errors.New("TLS_KEY_FILE must be set too: TLS_CERT_FILE is set (both or neither)")
	case cfg.TLSKeyFile != "" && cfg.TLSCertFile == "":
		return cfg, errors.New("TLS_CERT_FILE must be set too: TLS_KEY_FILE is set (both or neither)")
	}
	if err := checkTopology(&cfg); err != nil {
		return cfg, err
	}
	if err := checkTryOut(&cfg, environ); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// checkTryOut checks the try-out mode (no Redis named, after checkTopology
// trimmed the lists), whose /dev routes log anyone in and publish anything:
// it starts only on purpose, and answers only this machine. A Redis variable
// set but empty, as a template whose secret is missing leaves it, is an
// error, not a try-out. LISTEN_ADDR defaults to 127.0.0.1:8080, and must be
// a loopback address.
func checkTryOut(cfg *Config, environ map[string]string) error {
	if strings.TrimSpace(cfg.RedisURL) == "" {
		cfg.RedisURL = ""
	}
	if cfg.RedisURL != "" || len(cfg.RedisSentinelAddrs) > 0 || len(cfg.RedisClusterAddrs) > 0 {
		return nil
	}
	// The variables that name a Redis, and what a value looks like.
	for _, v := range []struct{ name, example string }{
		{"REDIS_URL", "redis://host:6379/0"},
		{"REDIS_SENTINEL_ADDRS", "host:26379,host2:26379"},
		{"REDIS_CLUSTER_ADDRS", "host:7000,host2:7000"},
	} {
		if _, set := environ[v.name]; set {
			return fmt.Errorf("%s is set but empty: set it (%s), or unset it (unset %s) for the embedded try-out server", v.name, v.example, v.name)
		}
	}
	if _, set := environ["LISTEN_ADDR"]; !set {
		cfg.ListenAddr = "127.0.0.1:8080"
		return nil
	}
	if !handlers.LoopbackHost(cfg.ListenAddr) {
		return fmt.Errorf("LISTEN_ADDR %q is not a loopback address, and without REDIS_URL the try-out's /dev routes log anyone in: listen on 127.0.0.1:PORT, localhost:PORT or [::1]:PORT, or set REDIS_URL", cfg.ListenAddr)
	}
	return nil
}

// parseAddrs is the one reading of an address list (REDIS_SENTINEL_ADDRS,
// REDIS_CLUSTER_ADDRS): entries trimmed, empty ones dropped (a trailing
// comma), each host:port; name is the variable an error names.
func parseAddrs(name string, list []string) ([]string, error) {
	var addrs []string
	for _, a := range list {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return nil, fmt.Errorf("%s: %q is not host:port", name, a)
		}
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// checkTopology checks the variables that choose the Redis deployment:
// REDIS_URL (one Redis), the REDIS_SENTINEL_ ones (Sentinel), or neither
// (the embedded try-out server), and the durable WAIT option.
func checkTopology(cfg *Config) error {
	addrs, err := parseAddrs("REDIS_SENTINEL_ADDRS", cfg.RedisSentinelAddrs)
	if err != nil {
		return err
	}
	cfg.RedisSentinelAddrs = addrs
	sentinel := len(addrs) > 0
	if addrs, err = parseAddrs("REDIS_CLUSTER_ADDRS", cfg.RedisClusterAddrs); err != nil {
		return err
	}
	cfg.RedisClusterAddrs = addrs
	if len(cfg.RedisClusterAddrs) > 0 {
		switch {
		case sentinel || cfg.RedisURL != "":
			return errors.New("REDIS_CLUSTER_ADDRS is exclusive with REDIS_URL and REDIS_SENTINEL_ADDRS: set one of them")
		case cfg.ClusterPartitions < 1 || cfg.ClusterPartitions > wire.MaxPartitions:
			return fmt.Errorf("CLUSTER_PARTITIONS must be between 1 and %d (an id holds a number per partition: docs/CLUSTER.md)", wire.MaxPartitions)
		}
		return checkWait(cfg)
	}
	switch {
	case sentinel && cfg.RedisURL != "":
		return errors.New("REDIS_URL and REDIS_SENTINEL_ADDRS are exclusive: set REDIS_URL for one Redis, or REDIS_SENTINEL_ADDRS and REDIS_SENTINEL_MASTER for Sentinel")
	case sentinel && cfg.RedisSentinelMaster == "":
		return errors.New("REDIS_SENTINEL_MASTER must be set with REDIS_SENTINEL_ADDRS: the name the sentinels monitor the primary under")
	case !sentinel && (cfg.RedisSentinelMaster != "" || cfg.RedisSentinelUsername != "" || cfg.RedisSentinelPassword != ""):
		return errors.New("REDIS_SENTINEL_MASTER, REDIS_SENTINEL_USERNAME and REDIS_SENTINEL_PASSWORD need REDIS_SENTINEL_ADDRS")
	case !sentinel && cfg.RedisURL == "" && (cfg.RedisUsername != "" || cfg.RedisPassword != ""):
		return errors.New("REDIS_USERNAME and REDIS_PASSWORD need REDIS_URL or REDIS_SENTINEL_ADDRS: the embedded try-out server has no password")
	}
	if cfg.DurableWaitReplicas > 0 && !sentinel && cfg.RedisURL == "" {
		return errors.New("DURABLE_WAIT_REPLICAS needs REDIS_URL, REDIS_SENTINEL_ADDRS or REDIS_CLUSTER_ADDRS: the embedded try-out server has no replicas")
	}
	return checkWait(cfg)
}

// checkWait checks DURABLE_WAIT_REPLICAS and DURABLE_WAIT_TIMEOUT.
func checkWait(cfg *Config) error {
	switch {
	case cfg.DurableWaitReplicas < 0:
		return errors.New("DURABLE_WAIT_REPLICAS must not be negative")
	case cfg.DurableWaitReplicas > 0 && cfg.DurableWaitTimeout < time.Millisecond:
		// WAIT takes milliseconds, and 0 would mean forever.
		return errors.New("DURABLE_WAIT_TIMEOUT must be at least 1ms")
	}
	return nil
}

// namedEnvError rewrites the env package's errors, which name struct
// fields, to name the environment variable instead.
func namedEnvError(err error) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return err
	}
	t := reflect.TypeFor[Config]()
	var msgs []string
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			if f, ok := t.FieldByName(pe.Name); ok {
				msgs = append(msgs, fmt.Sprintf("%s: %v", f.Tag.Get("env"), pe.Err))
				continue
			}
		}
		msgs = append(msgs, e.Error())
	}
	return errors.New(strings.Join(msgs, "; "))
}
