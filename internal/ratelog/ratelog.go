// Package ratelog keeps a log line that may repeat many times a second (a
// refusal, a dial error) to one per key per interval, and counts the ones it
// held back so that the next line can say how many there were.
package ratelog

import (
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
