// Package ratelog keeps a log line that may repeat many times a second (a
// refusal, a dial error) to one per key per interval, and counts the ones it
// held back so that the next line can say how many there were.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// maxKeys bounds the memory of a limiter whose keys come from outside;
// past it, new keys are let through untracked.
const maxKeys = 1024

// Limiter lets one line per key through per interval.
type Limiter struct {
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	keys map[string]*entry
}

type entry struct {
	last       time.Time
	suppressed int
}

// New returns a limiter of one line per key per every, reading the time
// from now (time.Now when nil).
func New(every time.Duration, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{every: every, now: now, keys: map[string]*entry{}}
}

// Allow reports whether a line for key may be logged now and, if so, how
// many lines for key were held back since the last one let through.
func (l *Limiter) Allow(key string) (ok bool, suppressed int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.keys[key]
	if e == nil {
		if len(l.keys) < maxKeys {
			l.keys[key] = &entry{last: now}
		}
		return true, 0
	}
	if now.Sub(e.last) < l.every {
		e.suppressed++
		return false, 0
	}
	n := e.suppressed
	e.last, e.suppressed = now, 0
	return true, n
}

// Logger writes lines through a Limiter: each kind (its key) at most once
// per interval, whatever the level, with the count of the lines held back
// since. It is for lines that others can cause at will (a client's
// request, a publisher's payload), so that a flood of them never floods
// the log.
type Logger struct {
	Log   *slog.Logger
	Limit *Limiter
}

// Write logs msg at level, unless a line of key was let through less than
// an interval ago.
func (l Logger) Write(level slog.Level, key, msg string, args ...any) {
	ctx := context.Background()
	if !l.Log.Enabled(ctx, level) {
		return // not even the limiter's lock for a line nobody reads
	}
	if ok, suppressed := l.Limit.Allow(key); ok {
		l.Log.Log(ctx, level, msg, append(args, "suppressed", suppressed)...)
	}
}
