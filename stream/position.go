package stream

import (
	"context"
	"sync"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// positionReads shares reads of the history's position among the streams
// that ask for one at the same time (a group commit): a caller that asks
// while a read is under way waits for the next, which begins after it
// asked and ends before it returns, so it gets the position at a moment
// within its call, as its own read would have. A mass reconnect's
// thousands of openings then cost Redis a few position reads, not one
// round trip each on the shared pool.
type positionReads struct {
	history History
	timeout time.Duration

	mu      sync.Mutex
	queued  []chan positionRead // for the next read, not begun yet
	reading bool                // a caller is reading for queued
}

type positionRead struct {
	pos wire.Cursor
	err error
}

// read returns the position now (currentPosition), from a read begun after
// the call. If no other caller is reading, this one reads, for every caller
// queued by then, until none is queued; those reads are bounded by timeout,
// not by ctx (the others' answers are in them).
func (r *positionReads) read(ctx context.Context) (wire.Cursor, error) {
	done := make(chan positionRead, 1)
	r.mu.Lock()
	r.queued = append(r.queued, done)
	if !r.reading {
		r.reading = true
		for len(r.queued) > 0 {
			batch := r.queued
			r.queued = nil
			r.mu.Unlock()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
			pos, err := currentPosition(rctx, r.history)
			cancel()
			for _, ch := range batch {
				ch <- positionRead{pos, err}
			}
			r.mu.Lock()
		}
		r.reading = false
	}
	r.mu.Unlock()
	select {
	case res := <-done:
		return res.pos, res.err
	case <-ctx.Done():
		return wire.Cursor{}, ctx.Err()
	}
}
