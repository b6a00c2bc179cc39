package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/stream"
)

// clusterBackend is the backend on Redis Cluster (REDIS_CLUSTER_ADDRS):
// store.Cluster is the broker and the history (docs/CLUSTER.md).
func clusterBackend(cfg Config, log *slog.Logger, reg *prometheus.Registry) *backend {
	cc := clusterClient(cfg)
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
	if cfg.DurableWaitReplicas > 0 {
		cl.WaitReplicas(cfg.DurableWaitReplicas, cfg.DurableWaitTimeout)
	}
	return &backend{
		broker:   cl,
		history:  cl,
		sessions: store.NewSessions(cc, cfg.SessionPrefix, cfg.MaxSessionBytes),
		probe:    cc,
		presence: cl.Presence(),
		hubOptions: func(o *stream.Options) {
			o.ParseCursor = cl.ParseCursor
			o.AfterGrant = cl.AfterGrant
		},
		start: func(ctx context.Context, hub *stream.Hub) error {
			return startCluster(ctx, cl, hub, log)
		},
		close: func() { _ = cc.Close() },
	}
}

// startCluster readies the cluster and the hub before the first stream:
// every partition's config (the publish script needs its marker), and
// where each partition is. A deployment of another partition count stops
// the start.
func startCluster(ctx context.Context, cl *store.Cluster, hub *stream.Hub, log *slog.Logger) error {
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
	return nil
}
