package main

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"time"

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

	reg := newRegistry()

	cl := store.NewCluster(cc, store.ClusterOptions{
		Prefix:        cfg.ChannelPrefix,
		Partitions:    cfg.ClusterPartitions,
		MaxLen:        cfg.HistoryMaxLen,
		MaxEventBytes: cfg.MaxEventBytes,
		TTL:           cfg.HistoryTTL,
		PingEvery:     cfg.RedisPingInterval,
		Log:           log,
		Metrics:       store.NewFeedMetrics(reg),
	})
	cl.IdempotencyWindow(cfg.IdempotencyWindow)
	cl.SetLagLimit(cfg.PubSubLagLimit)
	sessions := store.NewSessions(cc, cfg.SessionPrefix, cfg.MaxSessionBytes)
	opts := hubOptions(cfg)
	opts.ParseCursor = cl.ParseCursor
	opts.AfterGrant = cl.AfterGrant
	opts.FeedLag = cl.Lag
	if cfg.DurableWaitReplicas > 0 {
		cl.WaitReplicas(cfg.DurableWaitReplicas, cfg.DurableWaitTimeout)
	}
	hub := stream.NewHub(cl, cl, opts, log, stream.NewMetrics(reg))

	routes := routeOptions(cfg, hub, sessions, reg, log)
	routes.History = cl
	routes.Ready = readiness(cc, cl, cfg.PubSubLagLimit)
	e := handlers.New(routes)

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
	// Not primed (Hub.Prime): a Cluster position is confirmed through the
	// partitions' feeds, which are not running yet, and no one partition's
	// order says where a join on another begins.
	if err := hub.SubscribeControl(); err != nil {
		log.Warn("control channel not subscribed yet; it will be once Redis is back", "err", err)
	}
	// A partition's connection came back: its gap was recovered by the
	// cluster; control messages sent meanwhile were lost, so hold every
	// stream to its session as it is now.
	connected := func(_ context.Context, recovered int) {
		hub.CountRecovered(recovered)
		hub.RecheckSoon()
	}
	stop := startWorkers(
		func(ctx context.Context) { cl.Run(ctx, hub.Publish, connected, hub.RetryAll) },
		hub.Run,
		func(ctx context.Context) { hub.Recheck(ctx, sessions, cfg.SessionRecheckInterval) },
	)
	defer stop()
	return serve(ctx, cfg, log, listening, tlsConfig, e, hub, stop)
}
