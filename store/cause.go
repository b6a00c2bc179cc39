package store

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// What went wrong with a call to Redis, as Cause tells it: a word for logs
// and answers, never free text.
const (
	CauseTimeout     = "timeout"      // no answer in time: a slow or stalled link, a busy Redis
	CausePoolTimeout = "pool_timeout" // no free connection in time: the pool is saturated
	CauseUnreachable = "unreachable"  // no connection could be made
	CauseLost        = "lost"         // the connection closed or was reset under the call
	CauseError       = "error"        // Redis answered with an error
)

// Cause says why a call to Redis failed. A deadline that passed is a
// timeout, whoever set it; the caller tells a client's leaving apart by
// its own context.
func Cause(err error) string {
	var op *net.OpError
	var ne net.Error
	switch {
	case errors.Is(err, redis.ErrPoolTimeout):
		return CausePoolTimeout
	case errors.As(err, &op) && op.Op == "dial":
		return CauseUnreachable
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return CauseTimeout
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, redis.ErrClosed) || errors.Is(err, ErrFeedLost):
		return CauseLost
	}
	return CauseError
}
