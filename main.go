// Command ssebridge carries a backend's events from Redis to browsers over
// Server-Sent Events. See README.md.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/caarlos0/env/v11"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/handlers"
	"github.com/ssebridge/ssebridge/internal/version"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/stream"
	"github.com/ssebridge/ssebridge/wire"
)

// Config is read from the environment only. docs/configuration.md lists every variable.
type Config struct {
	ListenAddr     string     `env:"LISTEN_ADDR" envDefault:":8080"`
	RedisURL       string     `env:"REDIS_URL"`
	LogLevel       slog.Level `env:"LOG_LEVEL" envDefault:"info"`
	SessionCookie  string     `env:"SESSION_COOKIE" envDefault:"sse_session"`
	SessionPrefix  string     `env:"SESSION_PREFIX" envDefault:"session:"`
	ChannelPrefix  string     `env:"CHANNEL_PREFIX" envDefault:"sse:"`
	AllowedOrigins []string   `env:"ALLOWED_ORIGINS" envSeparator:","`

	HeartbeatInterval      time.Duration `env:"HEARTBEAT_INTERVAL" envDefault:"15s"`
	SessionRecheckInterval time.Duration `env:"SESSION_RECHECK_INTERVAL" envDefault:"30s"`
	RetryInterval          time.Duration `env:"RETRY_INTERVAL" envDefault:"2s"`
	WriteTimeout           time.Duration `env:"WRITE_TIMEOUT" envDefault:"10s"`
	ShutdownTimeout        time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"10s"`
	RedisPingInterval      time.Duration `env:"REDIS_PING_INTERVAL" envDefault:"5s"`
	// The longest a request waits for Redis (a session read, a stream's
	// opening, POST /publish, a wait for a pool connection): past it, 503
	// with Retry-After.
	RedisTimeout time.Duration `env:"REDIS_TIMEOUT" envDefault:"2s"`
	// How far the pub/sub feed may fall behind Redis (a PING's time through
	// it) before the instance reports not ready and catches its streams
	// up from history instead of draining the backlog.
	PubSubLagLimit time.Duration `env:"PUBSUB_LAG_LIMIT" envDefault:"5s"`

	PublishToken   string        `env:"PUBLISH_TOKEN"`
	HistoryMaxLen  int           `env:"HISTORY_MAXLEN" envDefault:"1000"`
	HistoryTTL     time.Duration `env:"HISTORY_TTL" envDefault:"24h"`
	ReplayMaxBytes int           `env:"REPLAY_MAX_BYTES" envDefault:"16777216"`
	// Replayed bytes read from Redis and not yet written, all streams
	// together: what a mass reconnect may hold in memory for replay.
	ReplayInflightBytes int `env:"REPLAY_INFLIGHT_BYTES" envDefault:"67108864"`
	// Opens with a Last-Event-ID per user per minute, each a replay of up
	// to REPLAY_MAX_BYTES. 60: the 16 streams MAX_STREAMS_PER_USER allows
	// all resuming at once, three times in a minute, or one stream every
	// second, when a browser waits retry: (1 to 3 s) to reconnect.
	MaxResumesPerUserPerMinute int `env:"MAX_RESUMES_PER_USER_PER_MINUTE" envDefault:"60"`

	MaxStreamsPerUser int `env:"MAX_STREAMS_PER_USER" envDefault:"16"`
	MaxStreams        int `env:"MAX_STREAMS" envDefault:"100000"`
	MaxRooms          int `env:"MAX_ROOMS" envDefault:"256"`
	MaxEventBytes     int `env:"MAX_EVENT_BYTES" envDefault:"65536"`
	MaxSessionBytes   int `env:"MAX_SESSION_BYTES" envDefault:"16384"`
	StreamQueue       int `env:"STREAM_QUEUE" envDefault:"256"`
	StreamQueueBytes  int `env:"STREAM_QUEUE_BYTES" envDefault:"1048576"`
	RedisPoolSize     int `env:"REDIS_POOL_SIZE" envDefault:"8"`
	// Event-loop writers of live HTTP/1.1 streams (Linux): 0 is one per
	// core, -1 none (a goroutine per stream, as over TLS and HTTP/2).
	EventLoops int `env:"EVENT_LOOPS" envDefault:"0"`

	// Redis Sentinel (docs/SENTINEL.md), instead of REDIS_URL: go-redis's
	// failover client asks the sentinels where the primary is, and follows
	// it when they fail over.
	RedisSentinelAddrs    []string `env:"REDIS_SENTINEL_ADDRS" envSeparator:","`
	RedisSentinelMaster   string   `env:"REDIS_SENTINEL_MASTER"`
	RedisSentinelUsername string   `env:"REDIS_SENTINEL_USERNAME"`
	RedisSentinelPassword string   `env:"REDIS_SENTINEL_PASSWORD"`
	// Redis Cluster (docs/CLUSTER.md), instead of REDIS_URL: go-redis's
	// cluster client, sharded pub/sub, channels spread over
	// CLUSTER_PARTITIONS partitions (the same on every instance and backend).
	RedisClusterAddrs []string `env:"REDIS_CLUSTER_ADDRS" envSeparator:","`
	ClusterPartitions int      `env:"CLUSTER_PARTITIONS" envDefault:"16"`
	RedisUsername     string   `env:"REDIS_USERNAME"`
	RedisPassword     string   `env:"REDIS_PASSWORD"`
	// A durable publish through ssebridge (POST /publish) is acknowledged
	// only once this many replicas have it (WAIT), else 503.
	DurableWaitReplicas int           `env:"DURABLE_WAIT_REPLICAS" envDefault:"0"`
	DurableWaitTimeout  time.Duration `env:"DURABLE_WAIT_TIMEOUT" envDefault:"1s"`
	// A publish with an Idempotency-Key seen within this window answers
	// the first one's id and publishes nothing.
	IdempotencyWindow time.Duration `env:"IDEMPOTENCY_WINDOW" envDefault:"5m"`

	PprofAddr string `env:"PPROF_ADDR"` // e.g. 127.0.0.1:6060; unset: no profiling endpoint

	// Both set: serve HTTPS (and HTTP/2) with this PEM certificate chain
	// and key. Both unset: plain HTTP (TLS ends at a proxy, or nowhere).
	TLSCertFile string `env:"TLS_CERT_FILE"`
	TLSKeyFile  string `env:"TLS_KEY_FILE"`
}

func main() {
	if len(os.Args) > 1 {
		redis.SetLogger(newRedisLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
		os.Exit(command(os.Args[1], os.Args[2:], os.Stdout, os.Stderr))
	}
	cfg, err := loadConfig(env.ToMap(os.Environ()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "ssebridge: configuration:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	// go-redis logs by itself (dial errors); its logger is process-wide.
	redis.SetLogger(newRedisLogger(log))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("ssebridge stopped", "err", err)
		os.Exit(1)
	}
}

// command runs a subcommand, publish or tail, or prints the help or the
// version, and
// returns the exit code: 0, 1 when the command failed, 2 for a usage error.
func command(name string, args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch name {
	case "help", "-h", "-help", "--help":
		writeHelp(stdout)
		return 0
	case "version", "-version", "--version":
		version.Get().Write(stdout)
		return 0
	case "publish":
		err = publishCommand(ctx, args, stdout, stderr)
	case "tail":
		err = tailCommand(ctx, args, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "ssebridge: unknown command %q\n\n", name)
		writeHelp(stderr)
		return 2
	}
	var usage usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0 // the flag package printed the flags
	case errors.As(err, &usage):
		if !usage.printed {
			fmt.Fprintln(stderr, "ssebridge "+name+":", err)
		}
		return 2
	}
	fmt.Fprintln(stderr, "ssebridge "+name+":", err)
	return 1
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
	}
	for name, v := range positive {
		if v <= 0 {
			return cfg, fmt.Errorf("%s must be greater than zero", name)
		}
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

// checkTopology checks the variables that choose the Redis deployment:
// REDIS_URL (one Redis), the REDIS_SENTINEL_ ones (Sentinel), or neither
// (the embedded try-out server), and the durable WAIT option.
func checkTopology(cfg *Config) error {
	var addrs []string
	for _, a := range cfg.RedisSentinelAddrs {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return fmt.Errorf("REDIS_SENTINEL_ADDRS: %q is not host:port", a)
		}
		addrs = append(addrs, a)
	}
	cfg.RedisSentinelAddrs = addrs
	sentinel := len(addrs) > 0
	var clusterAddrs []string
	for _, a := range cfg.RedisClusterAddrs {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return fmt.Errorf("REDIS_CLUSTER_ADDRS: %q is not host:port", a)
		}
		clusterAddrs = append(clusterAddrs, a)
	}
	cfg.RedisClusterAddrs = clusterAddrs
	if len(clusterAddrs) > 0 {
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

// run serves until ctx ends, then shuts down within cfg.ShutdownTimeout.
// listening, if set, is told the address once the listener is up.
func run(ctx context.Context, cfg Config, log *slog.Logger, listening func(addr string)) error {
	tlsConfig, err := loadTLS(cfg)
	if err != nil {
		return err
	}
	var dev *handlers.Dev
	redisURL := cfg.RedisURL
	if len(cfg.RedisClusterAddrs) > 0 {
		return runCluster(ctx, cfg, log, listening, tlsConfig)
	}
	embedded := redisURL == "" && len(cfg.RedisSentinelAddrs) == 0
	if embedded {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("starting embedded redis: %w", err)
		}
		defer mr.Close()
		mr.ClockTTL(true) // let session TTLs run down as they would in Redis
		redisURL = "redis://" + mr.Addr()
		// loadConfig made sure LISTEN_ADDR is a loopback address.
		log.Warn("REDIS_URL is not set: started an embedded Redis-compatible server, FOR TRYING OUT ONLY; the /dev routes are on",
			"addr", mr.Addr(), "try", "redis-cli -p "+mr.Port())
		// Once listening, leave the addresses where `ssebridge publish` and
		// `ssebridge tail` on this machine find them; remove them at the end.
		var endTryOut func()
		listening, endTryOut = announceTryOut(cfg, redisURL, log, listening)
		defer endTryOut()
	}
	rdb, err := redisClient(cfg, redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	probe, err := probeClient(cfg, redisURL)
	if err != nil {
		return err
	}
	defer probe.Close()

	reg := newRegistry()

	feed := store.NewFeed(rdb, cfg.ChannelPrefix, cfg.RedisPingInterval, log, store.NewFeedMetrics(reg))
	feed.SetLagLimit(cfg.PubSubLagLimit)
	sessions := store.NewSessions(rdb, cfg.SessionPrefix, cfg.MaxSessionBytes)
	history := store.NewHistory(rdb, cfg.ChannelPrefix, cfg.HistoryMaxLen, cfg.MaxEventBytes, cfg.HistoryTTL)
	history.IdempotencyWindow(cfg.IdempotencyWindow)
	if cfg.DurableWaitReplicas > 0 {
		history.WaitReplicas(cfg.DurableWaitReplicas, cfg.DurableWaitTimeout)
	}
	opts := hubOptions(cfg)
	opts.FeedLag = feed.Lag
	hub := stream.NewHub(feed, history, opts, log, stream.NewMetrics(reg))
	if embedded {
		dev = &handlers.Dev{Publisher: store.NewPublisher(rdb, cfg.ChannelPrefix)}
	}

	routes := routeOptions(cfg, hub, sessions, reg, log)
	routes.History = history
	routes.Ready = readiness(probe, feed, cfg.PubSubLagLimit)
	routes.Dev = dev
	e := handlers.New(routes)

	connected := func(ctx context.Context) {
		// Redis may have restarted without its data: write the history
		// settings (and the durable marker) again, fetch what was published
		// during the gap, and hold every stream to its session as it is now,
		// since control messages sent meanwhile were lost.
		if marker, err := history.ConfigureWithin(ctx, 30*time.Second); err == nil {
			feed.SetMarker(marker)
		} else if ctx.Err() == nil {
			log.Warn("history settings not written", "err", err)
		}
		hub.Recover(ctx)
		hub.RecheckSoon()
	}
	// Before the first stream: the publish script needs the marker, and the
	// feed must know it. (Redis unreachable now: done once it connects.)
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if marker, err := history.Configure(cctx); err == nil {
		feed.SetMarker(marker)
		if err := hub.Prime(cctx); err != nil {
			log.Warn("no position read before subscribing control messages", "err", err)
		}
	}
	cancel()
	if err := hub.SubscribeControl(); err != nil {
		log.Warn("control channel not subscribed yet; it will be once Redis is back", "err", err)
	}
	stop := startWorkers(
		func(ctx context.Context) { feed.Run(ctx, hub.Publish, connected) },
		hub.Run,
		func(ctx context.Context) { hub.Recheck(ctx, sessions, cfg.SessionRecheckInterval) },
	)
	defer stop()
	return serve(ctx, cfg, log, listening, tlsConfig, e, hub, stop)
}

// hubOptions are the hub's settings, whatever Redis it runs on.
func hubOptions(cfg Config) stream.Options {
	return stream.Options{
		MaxStreams:          cfg.MaxStreams,
		MaxStreamsPerUser:   cfg.MaxStreamsPerUser,
		MaxRooms:            cfg.MaxRooms,
		QueueEvents:         cfg.StreamQueue,
		QueueBytes:          cfg.StreamQueueBytes,
		MaxEventBytes:       cfg.MaxEventBytes,
		ReplayMaxBytes:      cfg.ReplayMaxBytes,
		ReplayInflightBytes: cfg.ReplayInflightBytes,
		MaxResumesPerUser:   cfg.MaxResumesPerUserPerMinute,
		// Well within HISTORY_TTL, so that a connected stream's id is never
		// too old to resume from.
		MarkInterval: cfg.HistoryTTL / 4,
		Retry:        cfg.RetryInterval,
		Loops:        cfg.EventLoops,
		RedisTimeout: cfg.RedisTimeout,
		// Late: halfway to the limit past which the connection is dropped
		// (a loaded machine's feed is a second behind with no fault).
		LateLag: cfg.PubSubLagLimit / 2,
	}
}

// routeOptions are the routes' settings, but for what depends on the
// Redis they run on (History, Ready, Dev), which the caller sets.
func routeOptions(cfg Config, hub *stream.Hub, sessions *store.Sessions, reg *prometheus.Registry, log *slog.Logger) handlers.Options {
	return handlers.Options{
		Hub:            hub,
		Sessions:       sessions,
		PublishToken:   cfg.PublishToken,
		MaxEventBytes:  cfg.MaxEventBytes,
		MaxRooms:       cfg.MaxRooms,
		SessionCookie:  cfg.SessionCookie,
		AllowedOrigins: cfg.AllowedOrigins,
		Write:          stream.WriteOptions{Heartbeat: cfg.HeartbeatInterval, WriteTimeout: cfg.WriteTimeout},
		Retry:          cfg.RetryInterval,
		RedisTimeout:   cfg.RedisTimeout,
		PublishTimeout: publishTimeout(cfg),
		Registry:       reg,
		Log:            log,
		Version:        version.Version,
	}
}

// publishTimeout bounds POST /publish: REDIS_TIMEOUT, and the WAIT for
// replicas on top when there is one.
func publishTimeout(cfg Config) time.Duration {
	if cfg.DurableWaitReplicas > 0 {
		return cfg.RedisTimeout + cfg.DurableWaitTimeout
	}
	return cfg.RedisTimeout
}

// newRegistry is the registry /metrics serves, with the Go runtime's and
// the process's own metrics, and ssebridge_build_info: which build this is.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := version.Get()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ssebridge_build_info",
		Help: "Always 1: the version, Go version and VCS revision of this build as labels.",
	}, []string{"version", "goversion", "revision"})
	build.WithLabelValues(info.Version, info.GoVersion, info.Revision).Set(1)
	reg.MustRegister(build)
	return reg
}

// readiness is /readyz's check: Redis answers, and the feed is subscribed
// and no further behind than PUBSUB_LAG_LIMIT.
// probeClient is /readyz's own connection to Redis: a pool that every
// stream and publish share can be saturated while Redis answers, and a
// probe waiting its turn there would call Redis unreachable. Its waits
// end with the probe's context.
func probeClient(cfg Config, url string) (*redis.Client, error) {
	cfg.RedisPoolSize = 1
	c, err := redisClient(cfg, url)
	if err != nil {
		return nil, err
	}
	c.Options().ContextTimeoutEnabled = true
	return c, nil
}

// feedState is what readiness asks the feed (a store.Feed or Cluster).
type feedState interface {
	Connected() bool
	Lag() time.Duration
}

func readiness(rdb redis.Cmdable, feed feedState, lagLimit time.Duration) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := rdb.Ping(ctx).Err(); err != nil {
			// Connected but not answered in time is slow, not unreachable.
			if store.Cause(err) == store.CauseTimeout {
				return fmt.Errorf("%w: %w", handlers.ErrRedisSlow, err)
			}
			return fmt.Errorf("redis: %w", err)
		}
		// Before Connected: a late connection is dropped and made again,
		// and while the link stays bad the lag (still counting) says why.
		if lag := feed.Lag(); lag > lagLimit {
			return &handlers.LagError{Lag: lag, Limit: lagLimit}
		}
		if !feed.Connected() {
			return handlers.ErrNotSubscribed
		}
		return nil
	}
}

// startWorkers runs each worker on a goroutine until stop, which waits for
// them all. Their context is not the server's: they outlive ctx while the
// streams shut down, and serve stops them after.
func startWorkers(workers ...func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { w(ctx) })
	}
	return sync.OnceFunc(func() {
		cancel()
		wg.Wait()
	})
}

// serve listens on LISTEN_ADDR and serves e until ctx ends, then shuts
// down within cfg.ShutdownTimeout; stop stops the workers (feed, marks,
// rechecks) once the streams are gone.
func serve(ctx context.Context, cfg Config, log *slog.Logger, listening func(addr string), tlsConfig *tls.Config, e http.Handler, hub *stream.Hub, stop func()) error {
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		stop()
		return fmt.Errorf("LISTEN_ADDR: %w", err)
	}
	srv := &http.Server{
		Handler:           e,
		TLSConfig:         tlsConfig, // nil: plain HTTP
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		// No WriteTimeout: it would cut every stream. Each write of a stream
		// has its own deadline instead (WRITE_TIMEOUT).
		// net/http's own complaints (TLS handshakes that fail, …) go to the
		// same structured log, at debug and once a minute per kind: scanners
		// make plenty of them.
		ErrorLog: newHTTPLogger(log),
	}

	if cfg.PprofAddr != "" {
		// On its own listener, never on the public one.
		go func() { log.Warn("pprof stopped", "err", http.ListenAndServe(cfg.PprofAddr, pprofMux())) }()
	}

	serveErr := make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			// ServeTLS adds "h2" to the protocols offered: HTTP/2 with no
			// more set-up. Streams on it use net/http's writer (Stream.Serve).
			serveErr <- srv.ServeTLS(ln, "", "")
			return
		}
		serveErr <- srv.Serve(ln)
	}()
	log.Info("ssebridge listening", "addr", ln.Addr().String(), "tls", tlsConfig != nil, "session_cookie", cfg.SessionCookie)
	if listening != nil {
		listening(ln.Addr().String())
	}

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: streams are told to reconnect", "streams", hub.Len(), "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	hub.Shutdown()
	// Shutdown closes the listener and waits for the requests in flight;
	// streams on connections ssebridge took over are waited for by the hub.
	// At the deadline, both cut what is still open: net/http its own
	// connections, the hub the ones it took over.
	if err := errors.Join(srv.Shutdown(sctx), hub.Wait(sctx)); err != nil {
		_ = srv.Close()
		log.Warn("streams still open at the shutdown deadline were cut", "err", err)
	}
	stop()
	return nil
}

// loadTLS reads TLS_CERT_FILE and TLS_KEY_FILE, naming the one at fault;
// nil when neither is set.
func loadTLS(cfg Config) (*tls.Config, error) {
	if cfg.TLSCertFile == "" {
		return nil, nil
	}
	certPEM, err := os.ReadFile(cfg.TLSCertFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_CERT_FILE: %w", err)
	}
	keyPEM, err := os.ReadFile(cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_KEY_FILE: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("TLS_CERT_FILE %s and TLS_KEY_FILE %s: %w", cfg.TLSCertFile, cfg.TLSKeyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// redisClient returns the client for sessions, pub/sub and the durable
// script: for the Redis at url, or, with REDIS_SENTINEL_ADDRS, go-redis's
// failover client, which asks the sentinels where the primary is at every
// dial and drops its connections to the old one when they announce a new
// one. Both are a *redis.Client, so nothing else knows which it is.
func redisClient(cfg Config, url string) (*redis.Client, error) {
	// A pool held open at its full size: an instance holds the same Redis
	// connections with ten streams or a hundred thousand.
	size := cfg.RedisPoolSize
	if len(cfg.RedisSentinelAddrs) > 0 {
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:       cfg.RedisSentinelMaster,
			SentinelAddrs:    cfg.RedisSentinelAddrs,
			SentinelUsername: cfg.RedisSentinelUsername,
			SentinelPassword: cfg.RedisSentinelPassword,
			Username:         cfg.RedisUsername,
			Password:         cfg.RedisPassword,
			PoolSize:         size, MinIdleConns: size, MaxActiveConns: size,
			DialTimeout:           2 * time.Second,
			ReadTimeout:           waitReadTimeout(cfg),
			ClientName:            "ssebridge",
			ContextTimeoutEnabled: true,
			PoolTimeout:           cfg.RedisTimeout,
		}), nil
	}
	ropts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	ropts.PoolSize, ropts.MinIdleConns, ropts.MaxActiveConns = size, size, size
	ropts.DialTimeout = 2 * time.Second
	ropts.ClientName = "ssebridge" // so that CLIENT LIST shows what is ours
	// Bounded waits: a request's deadline (REDIS_TIMEOUT) bounds its reads
	// and writes on the socket too (go-redis otherwise waits its own read
	// timeout, and again for each retry), and the wait for a free
	// connection is no longer than a request may wait in all.
	ropts.ContextTimeoutEnabled = true
	ropts.PoolTimeout = cfg.RedisTimeout
	if cfg.RedisUsername != "" {
		ropts.Username = cfg.RedisUsername
	}
	if cfg.RedisPassword != "" {
		ropts.Password = cfg.RedisPassword
	}
	if t := waitReadTimeout(cfg); t != 0 {
		ropts.ReadTimeout = t
	}
	return redis.NewClient(ropts), nil
}

// waitReadTimeout is the client's read timeout: go-redis's default (0: 3 s),
// unless DURABLE_WAIT_TIMEOUT needs longer. The durable publish and its WAIT
// go in one pipeline, and a pipeline's replies are read within the client's
// read timeout, not the WAIT's own.
func waitReadTimeout(cfg Config) time.Duration {
	if t := cfg.DurableWaitTimeout + time.Second; cfg.DurableWaitReplicas > 0 && t > 3*time.Second {
		return t
	}
	return 0
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
