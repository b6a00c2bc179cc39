package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
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
// listening, if set, is told the address once the listener is up. It runs
// on one Redis, Sentinel, Redis Cluster or, with no Redis named, the
// try-out's embedded one: each is a backend, with its own stream.Broker.
func run(ctx context.Context, cfg Config, log *slog.Logger, listening func(addr string)) error {
	tlsConfig, err := loadTLS(cfg)
	if err != nil {
		return err
	}
	reg := newRegistry()
	var b *backend
	if len(cfg.RedisClusterAddrs) > 0 {
		b = clusterBackend(cfg, log, reg)
	} else {
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
		if b, err = redisBackend(cfg, log, reg, redisURL, embedded); err != nil {
			return err
		}
	}
	defer b.close()

	opts := hubOptions(cfg)
	opts.FeedLag = b.broker.Lag
	if b.hubOptions != nil {
		b.hubOptions(&opts)
	}
	workers := []func(context.Context){}
	if cfg.Presence {
		p := stream.NewPresence(b.presence, presenceOptions(cfg), log, stream.NewPresenceMetrics(reg))
		opts.Presence = p
		workers = append(workers, p.Run)
	}
	opts.Openings = stream.NewOpenings(cfg.OpenConcurrency, reg)
	hub := stream.NewHub(b.broker, opts, log, stream.NewMetrics(reg))

	routes := routeOptions(cfg, hub, b.sessions, reg, log)
	routes.History = b.history
	if cfg.Presence {
		routes.Presence = b.presence
	}
	routes.Ready = readiness(b.probe, b.broker, cfg.PubSubLagLimit)
	routes.Dev = b.dev
	e := handlers.New(routes)

	if err := b.start(ctx, hub); err != nil {
		return err
	}
	stop := startWorkers(append(workers,
		func(ctx context.Context) { b.broker.Run(ctx, hub) },
		hub.Run,
		func(ctx context.Context) { hub.Recheck(ctx, b.sessions, cfg.SessionRecheckInterval) },
	)...)
	defer stop()
	return serve(ctx, cfg, log, listening, tlsConfig, e, hub, opts.Openings, stop)
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
		MarkInterval:     cfg.HistoryTTL / 4,
		Retry:            cfg.RetryInterval,
		Loops:            cfg.EventLoops,
		UnsubscribeDelay: cfg.UnsubscribeDelay,
		RedisTimeout:     cfg.RedisTimeout,
		// Late: halfway to the limit past which the connection is dropped
		// (a loaded machine's feed is a second behind with no fault).
		LateLag: cfg.PubSubLagLimit / 2,
	}
}

// presenceOptions are presence's settings (docs/presence.md).
func presenceOptions(cfg Config) stream.PresenceOptions {
	var events []string
	for _, e := range cfg.PresenceEvents {
		if e = strings.TrimSpace(e); e != "" {
			events = append(events, e)
		}
	}
	return stream.PresenceOptions{
		Events:       events,
		Grace:        cfg.PresenceGrace,
		TTL:          cfg.PresenceTTL,
		Flush:        cfg.PresenceFlush,
		RoomInterval: cfg.PresenceRoomInterval,
	}
}

// routeOptions are the routes' settings, but for what depends on the
// Redis they run on (History, Ready, Dev), which the caller sets.
func routeOptions(cfg Config, hub *stream.Hub, sessions *store.Sessions, reg *prometheus.Registry, log *slog.Logger) handlers.Options {
	return handlers.Options{
		Hub:             hub,
		Sessions:        sessions,
		PublishToken:    cfg.PublishToken,
		MaxEventBytes:   cfg.MaxEventBytes,
		MaxRooms:        cfg.MaxRooms,
		SessionCookie:   cfg.SessionCookie,
		AllowedOrigins:  cfg.AllowedOrigins,
		Write:           stream.WriteOptions{Heartbeat: cfg.HeartbeatInterval, WriteTimeout: cfg.WriteTimeout},
		Retry:           cfg.RetryInterval,
		RedisTimeout:    cfg.RedisTimeout,
		PublishTimeout:  publishTimeout(cfg),
		PresencePageMax: cfg.PresencePageMax,
		Registry:        reg,
		Log:             log,
		Version:         version.Version,
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

// feedState is what readiness asks the broker (stream.Broker).
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
