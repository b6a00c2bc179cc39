package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ssebridge/ssebridge/internal/ratelog"
)

// Errors Options.Ready wraps to say why the instance is not ready, besides
// Redis unreachable.
var (
	// ErrNotSubscribed: Redis answers but the pub/sub connection is not
	// subscribed.
	ErrNotSubscribed = errors.New("redis pub/sub not subscribed")
	// ErrRedisSlow: Redis took the connection but did not answer in time.
	ErrRedisSlow = errors.New("redis slow")
	// ErrPubSubLag: the pub/sub feed is further behind Redis than
	// PUBSUB_LAG_LIMIT; a LagError says by how much.
	ErrPubSubLag = errors.New("redis pub/sub lags behind")
)

// LagError is ErrPubSubLag with its figures, which /readyz answers: they
// tell an operator how bad it is, and hold nothing private.
type LagError struct{ Lag, Limit time.Duration }

func (e *LagError) Error() string {
	return fmt.Sprintf("redis pub/sub lags %.1fs behind (PUBSUB_LAG_LIMIT %v)", e.Lag.Seconds(), e.Limit)
}

func (e *LagError) Is(target error) bool { return target == ErrPubSubLag }

// readiness serves GET /readyz. Anyone may ask it, so it answers a plain
// reason; the detail (Redis's address, the dial error) is for the log.
type readiness struct {
	ready func(context.Context) error
	log   *slog.Logger
	limit *ratelog.Limiter
}

func (r *readiness) serve(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	err := r.ready(ctx)
	if err == nil {
		return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
	}
	reason := "redis unreachable"
	for _, known := range []error{ErrNotSubscribed, ErrRedisSlow, ErrPubSubLag} {
		if errors.Is(err, known) {
			reason = known.Error()
		}
	}
	kind := reason // the log's rate limit is per kind, whatever the figures
	if lag, ok := errors.AsType[*LagError](err); ok {
		reason = lag.Error()
	}
	if ok, suppressed := r.limit.Allow(kind); ok {
		r.log.Warn("not ready: "+reason, "err", err, "suppressed", suppressed)
	}
	return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": reason})
}
