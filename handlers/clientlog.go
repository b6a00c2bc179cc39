package handlers

import (
	"context"
	"errors"
	"log/slog"

	"github.com/ssebridge/ssebridge/internal/ratelog"
)

// errClientGone ends a request whose client left while it was served
// (closed its connection, or reset its HTTP/2 stream): it is counted, and
// nothing is answered, since nobody is left to read it.
var errClientGone = errors.New("client gone")

// clientLog writes the lines that a client, hostile or not, can cause with
// a request: each kind (its key) at most once a minute, whatever the level,
// with the count of the lines held back since, so that a flood of requests
// never floods the log.
type clientLog struct {
	log   *slog.Logger
	limit *ratelog.Limiter
}

func (l clientLog) write(level slog.Level, key, msg string, args ...any) {
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return // not even the limiter's lock for a line nobody reads
	}
	if ok, suppressed := l.limit.Allow(key); ok {
		l.log.Log(ctx, level, msg, append(args, "suppressed", suppressed)...)
	}
}
