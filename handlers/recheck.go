package handlers

import (
	"context"
	"log/slog"
	"time"

	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/stream"
)

// RecheckSessions ends, every interval, the streams whose session key is gone
// (a logout done by deleting the key). One pipelined round trip checks all of
// the instance's sessions. While Redis is unreachable nothing is ended.
func RecheckSessions(ctx context.Context, hub *stream.Hub, sessions *store.Sessions, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		gone, err := sessions.Missing(ctx, hub.Sessions())
		if err != nil {
			log.Warn("session recheck skipped", "err", err)
			continue
		}
		for _, token := range gone {
			hub.EndSession(token)
		}
	}
}
