package main

import (
	"context"
	"fmt"
	stdlog "log"
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

// httpLogger carries net/http's own complaints (a TLS handshake that fails,
// an HTTP/2 preface that never comes, …) into slog at debug, with
// source=net/http. Any client causes them, so each kind of line is let
// through once a minute, with the count held back. A line's kind is its
// text up to the first digit or '[': the fixed words before an address
// ("http: TLS handshake error from "), never the client's part after it.
type httpLogger struct {
	log   *slog.Logger
	limit *ratelog.Limiter
}

func newHTTPLogger(log *slog.Logger) *stdlog.Logger {
	return stdlog.New(httpLogger{log: log, limit: ratelog.New(time.Minute, nil)}, "", 0)
}

func (h httpLogger) Write(p []byte) (int, error) {
	ctx := context.Background()
	if !h.log.Enabled(ctx, slog.LevelDebug) {
		return len(p), nil
	}
	msg := strings.TrimSpace(string(p))
	kind := msg
	if i := strings.IndexAny(kind, "0123456789["); i >= 0 {
		kind = kind[:i]
	}
	if len(kind) > 64 {
		kind = kind[:64]
	}
	if ok, suppressed := h.limit.Allow(kind); ok {
		h.log.LogAttrs(ctx, slog.LevelDebug, msg, slog.String("source", "net/http"), slog.Int("suppressed", suppressed))
	}
	return len(p), nil
}
