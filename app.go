package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/handlers"
	"github.com/ssebridge/ssebridge/internal/version"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/stream"
)

// run serves until ctx ends, then shuts down within cfg.ShutdownTimeout.
// listening, if set, is told the address once the listener is up.
func run(ctx context.Context, cfg Config, log *slog.Logger, listening func(addr string)) error {
	tlsConfig, err := loadTLS(cfg)
	if err != nil {
		return err
	}
	if len(cfg.RedisClusterAddrs) > 0 {
		return runCluster(ctx, cfg, log, listening, tlsConfig)
	}
	redisURL := cfg.RedisURL
	embedded := redisURL == "" && len(cfg.RedisSentinelAddrs) == 0
	if embedded {
		var end func()
		redisURL, listening, end, err = startEmbedded(cfg, log, listening)
		if err != nil {
			return err
		}
		defer end()
	}
	return runRedis(ctx, cfg, log, listening, tlsConfig, redisURL, embedded)
}

// startEmbedded starts the try-out's embedded Redis (no Redis named) and
// returns its URL, listening wrapped to write the try-out file, and end,
// which removes the file and stops the Redis.
func startEmbedded(cfg Config, log *slog.Logger, listening func(string)) (redisURL string, wrapped func(string), end func(), err error) {
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return "", nil, nil, fmt.Errorf("starting embedded redis: %w", err)
	}
	mr.ClockTTL(true) // let session TTLs run down as they would in Redis
	redisURL = "redis://" + mr.Addr()
	// loadConfig made sure LISTEN_ADDR is a loopback address.
	log.Warn("REDIS_URL is not set: started an embedded Redis-compatible server, FOR TRYING OUT ONLY; the /dev routes are on",
		"addr", mr.Addr(), "try", "redis-cli -p "+mr.Port())
	// Once listening, leave the addresses where `ssebridge publish` and
	// `ssebridge tail` on this machine find them; remove them at the end.
	wrapped, endTryOut := announceTryOut(cfg, redisURL, log, listening)
	return redisURL, wrapped, func() {
		endTryOut()
		mr.Close()
	}, nil
}

// runRedis is run on one Redis at redisURL, or on Sentinel
// (REDIS_SENTINEL_ADDRS); embedded adds the try-out's /dev routes.
func runRedis(ctx context.Context, cfg Config, log *slog.Logger, listening func(string), tlsConfig *tls.Config, redisURL string, embedded bool) error {
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

	routes := routeOptions(cfg, hub, sessions, reg, log)
	routes.History = history
	routes.Ready = readiness(probe, feed, cfg.PubSubLagLimit)
	if embedded {
		routes.Dev = &handlers.Dev{Publisher: store.NewPublisher(rdb, cfg.ChannelPrefix)}
	}
	e := handlers.New(routes)

	connected := prepare(ctx, history, feed, hub, log)
	stop := startWorkers(
		func(ctx context.Context) { feed.Run(ctx, hub.Publish, connected) },
		hub.Run,
		func(ctx context.Context) { hub.Recheck(ctx, sessions, cfg.SessionRecheckInterval) },
	)
	defer stop()
	return serve(ctx, cfg, log, listening, tlsConfig, e, hub, stop)
}

// prepare readies history, feed and hub before the first stream, and
// returns the feed's hook for each (re)connection to Redis.
func prepare(ctx context.Context, history *store.History, feed *store.Feed, hub *stream.Hub, log *slog.Logger) (connected func(context.Context)) {
	connected = func(ctx context.Context) {
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
	return connected
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

// feedState is what readiness asks the feed (a store.Feed or Cluster).
type feedState interface {
	Connected() bool
	Lag() time.Duration
}

// readiness is /readyz's check: Redis answers, and the feed is subscribed
// and no further behind than PUBSUB_LAG_LIMIT.
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
