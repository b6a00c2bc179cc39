package store

import (
	"context"
	"time"

	"github.com/ssebridge/ssebridge/stream"
)

// Redis is the broker (stream.Broker) on one Redis, or on Sentinel's
// primary: the feed and the history, whose durable ids are in one order,
// so that a gap is one range of that order (stream.RecoverLog).
type Redis struct {
	*Feed
	*History
	timeout time.Duration
}

// NewRedis returns the broker of feed and history; timeout bounds each
// read of a gap recovery (REDIS_TIMEOUT; 0: 10 s, as the hub's waits).
func NewRedis(feed *Feed, history *History, timeout time.Duration) *Redis {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &Redis{Feed: feed, History: history, timeout: timeout}
}

// Run reads the feed until ctx ends (Feed.Run). Each time its connection
// is up, the first time and after every loss, before any message that
// follows: the history settings are written again (Redis may have
// restarted without its data), the gap is recovered, and ev is told.
func (r *Redis) Run(ctx context.Context, ev stream.Events) {
	r.Feed.Run(ctx, ev.Publish, func(ctx context.Context) {
		if marker, err := r.ConfigureWithin(ctx, 30*time.Second); err == nil {
			r.SetMarker(marker)
		} else if ctx.Err() == nil {
			r.Feed.log.Warn("history settings not written", "err", err)
		}
		upTo, recovered := stream.RecoverLog(ctx, r.History, ev, r.timeout, r.Feed.log)
		ev.Reconnected(ctx, upTo, recovered)
	})
}

// Start readies the history before the first stream: the publish script
// needs the marker, and the feed must know it. Redis unreachable now, it
// is done once the feed connects.
func (r *Redis) Start(ctx context.Context) error {
	marker, err := r.History.Configure(ctx)
	if err != nil {
		return err
	}
	r.SetMarker(marker)
	return nil
}

var _ stream.Broker = (*Redis)(nil)
