package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/handlers"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/stream"
)

// runCluster is run on Redis Cluster (REDIS_CLUSTER_ADDRS): the same hub
// and routes, with store.Cluster as the feed and the history
// (docs/CLUSTER.md).
func runCluster(ctx context.Context, cfg Config, log *slog.Logger, listening func(addr string), tlsConfig *tls.Config) error {
	cc := clusterClient(cfg)
	defer cc.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	cl := store.NewCluster(cc, cfg.ChannelPrefix, cfg.ClusterPartitions, cfg.HistoryMaxLen, cfg.MaxEventBytes, cfg.HistoryTTL,
		cfg.RedisPingInterval, log, store.NewFeedMetrics(reg))
	sessions := store.NewSessions(cc, cfg.SessionPrefix, cfg.MaxSessionBytes)
	hub := stream.NewHub(cl, cl, stream.Options{
		MaxStreams:          cfg.MaxStreams,
		MaxStreamsPerUser:   cfg.MaxStreamsPerUser,
		MaxRooms:            cfg.MaxRooms,
		QueueEvents:         cfg.StreamQueue,
		QueueBytes:          cfg.StreamQueueBytes,
		MaxEventBytes:       cfg.MaxEventBytes,
		ReplayMaxBytes:      cfg.ReplayMaxBytes,
		ReplayInflightBytes: cfg.ReplayInflightBytes,
		MarkInterval:        cfg.HistoryTTL / 4,
		Retry:               cfg.RetryInterval,
		ParseCursor:         cl.ParseCursor,
	}, log, stream.NewMetrics(reg))

	e := handlers.New(handlers.Options{
		Hub:            hub,
		Sessions:       sessions,
		History:        cl,
		PublishToken:   cfg.PublishToken,
		MaxEventBytes:  cfg.MaxEventBytes,
		MaxRooms:       cfg.MaxRooms,
		SessionCookie:  cfg.SessionCookie,
		AllowedOrigins: cfg.AllowedOrigins,
		Write:          stream.WriteOptions{Heartbeat: cfg.HeartbeatInterval, WriteTimeout: cfg.WriteTimeout},
		Retry:          cfg.RetryInterval,
		Ready: func(ctx context.Context) error {
			if err := cc.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("redis: %w", err)
			}
			if !cl.Connected() {
				return handlers.ErrNotSubscribed
			}
			return nil
		},
		Registry: reg,
		Log:      log,
	})

	// Before the first stream: every partition's config (the publish
	// script needs its marker), and where each partition is. A deployment
	// of another partition count stops the start.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := cl.Configure(cctx)
	cancel()
	if errors.Is(err, store.ErrPartitions) {
		return err
	} else if err != nil {
		log.Warn("cluster not configured yet; it will be once it answers", "err", err)
	}
	if err := hub.SubscribeControl(); err != nil {
		log.Warn("control channel not subscribed yet; it will be once Redis is back", "err", err)
	}
	workers, cancelWorkers := context.WithCancel(context.Background())
	defer cancelWorkers()
	done := make(chan struct{}, 3)
	// A partition's connection came back: its gap was recovered by the
	// cluster; control messages sent meanwhile were lost, so hold every
	// stream to its session as it is now.
	connected := func(context.Context) { hub.RecheckSoon() }
	go func() { cl.Run(workers, hub.Publish, connected, hub.RetryAll); done <- struct{}{} }()
	go func() { hub.Run(workers); done <- struct{}{} }()
	go func() { hub.Recheck(workers, sessions, cfg.SessionRecheckInterval); done <- struct{}{} }()
	stop := func() {
		cancelWorkers()
		for range 3 {
			<-done
		}
	}
	return serve(ctx, cfg, log, listening, tlsConfig, e, hub, stop)
}

// clusterClient is go-redis's cluster client over REDIS_CLUSTER_ADDRS: a
// pool per node held at its full size, so an instance holds the same
// connections whatever its number of streams.
func clusterClient(cfg Config) *redis.ClusterClient {
	size := cfg.RedisPoolSize
	return redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:    cfg.RedisClusterAddrs,
		Username: cfg.RedisUsername,
		Password: cfg.RedisPassword,
		PoolSize: size, MinIdleConns: size, MaxActiveConns: size,
		DialTimeout: 2 * time.Second,
		ClientName:  "ssebridge",
		// go-redis reads the slot map again on MOVED, and otherwise once a
		// minute by default: after a failover the dead master answers
		// nothing, so no MOVED comes, and commands for its slots would fail
		// for up to a minute. One CLUSTER SLOTS every 2 s bounds that.
		ClusterStateReloadInterval: 2 * time.Second,
	})
}
