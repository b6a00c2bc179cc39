package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ssebridge/ssebridge/internal/ratelog"
)

// redisLogger carries go-redis's own log lines (dial errors, mostly) into
// slog, so that they come out structured like ssebridge's, at warn. A pool
// that cannot dial says so once per connection, eight at a time: each kind
// of line (its format) is let through once a minute, with the count held back.
// It implements go-redis's internal.Logging; redis.SetLogger is process-wide.
type redisLogger struct {
	log   *slog.Logger
	limit *ratelog.Limiter
}

func newRedisLogger(log *slog.Logger) redisLogger {
	return redisLogger{log: log, limit: ratelog.New(time.Minute, nil)}
}

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	ok, suppressed := r.limit.Allow(format)
	if !ok {
		return
	}
	if ctx == nil {
		ctx = context.Background()
	}
	msg := strings.TrimSpace(strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
	r.log.LogAttrs(ctx, slog.LevelWarn, msg, slog.String("source", "go-redis"), slog.Int("suppressed", suppressed))
}
