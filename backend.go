package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/handlers"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/stream"
)

// backend is what run needs of the Redis it runs on, one Redis (with
// Sentinel, or the try-out's embedded one) or Redis Cluster: the broker
// the hub runs on, and what the routes read besides.
type backend struct {
	broker   stream.Broker
	history  handlers.DurablePublisher
	sessions *store.Sessions
	probe    redis.Cmdable // /readyz's ping
	dev      *handlers.Dev // the try-out's routes; nil: none
	presence *store.Presence
	// hubOptions, if set, adds the backend's own to the hub's options.
	hubOptions func(*stream.Options)
	// start readies the backend and the hub before the first stream; an
	// error stops the start.
	start func(ctx context.Context, hub *stream.Hub) error
	close func()
}

// redisBackend is the backend on one Redis at redisURL, or on Sentinel
// (REDIS_SENTINEL_ADDRS); embedded adds the try-out's /dev routes.
func redisBackend(cfg Config, log *slog.Logger, reg *prometheus.Registry, redisURL string, embedded bool) (*backend, error) {
	rdb, err := redisClient(cfg, redisURL)
	if err != nil {
		return nil, err
	}
	probe, err := probeClient(cfg, redisURL)
	if err != nil {
		_ = rdb.Close()
		return nil, err
	}
	feed := store.NewFeed(rdb, cfg.ChannelPrefix, cfg.RedisPingInterval, log, store.NewFeedMetrics(reg))
	feed.SetLagLimit(cfg.PubSubLagLimit)
	history := store.NewHistory(rdb, cfg.ChannelPrefix, cfg.HistoryMaxLen, cfg.MaxEventBytes, cfg.HistoryTTL)
	history.IdempotencyWindow(cfg.IdempotencyWindow)
	if cfg.DurableWaitReplicas > 0 {
		history.WaitReplicas(cfg.DurableWaitReplicas, cfg.DurableWaitTimeout)
	}
	r := store.NewRedis(feed, history, cfg.RedisTimeout)
	b := &backend{
		broker:   r,
		history:  history,
		sessions: store.NewSessions(rdb, cfg.SessionPrefix, cfg.MaxSessionBytes),
		probe:    probe,
		presence: store.NewPresence(rdb, cfg.ChannelPrefix),
		start: func(ctx context.Context, hub *stream.Hub) error {
			startRedis(ctx, r, hub, log)
			return nil
		},
		close: func() {
			_ = probe.Close()
			_ = rdb.Close()
		},
	}
	if embedded {
		b.dev = &handlers.Dev{Publisher: store.NewPublisher(rdb, cfg.ChannelPrefix)}
	}
	return b, nil
}

// startRedis readies history, feed and hub before the first stream. Redis
// unreachable now, the feed does it once it connects (store.Redis.Run).
func startRedis(ctx context.Context, r *store.Redis, hub *stream.Hub, log *slog.Logger) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if err := r.Start(cctx); err == nil {
		if err := hub.Prime(cctx); err != nil {
			log.Warn("no position read before subscribing control messages", "err", err)
		}
	}
	cancel()
	if err := hub.SubscribeControl(); err != nil {
		log.Warn("control channel not subscribed yet; it will be once Redis is back", "err", err)
	}
}
