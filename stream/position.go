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
//
// Each caller reads at most once: the one that finds no read under way
// reads; when its read is over, the first of those that queued meanwhile
// reads for them all. No caller is kept reading for a stream of others.
type positionReads struct {
	history History
	timeout time.Duration

	mu      sync.Mutex
	queued  []chan positionRead // for the next read, not begun yet
	reading bool                // a read is under way, or handed on
}

// positionRead is a read's outcome, or, with batch set, the turn to read
// for batch.
type positionRead struct {
	pos   wire.Cursor
	err   error
	batch []chan positionRead
}

// read returns the position now (currentPosition), from a read begun after
// the call. Reads are bounded by timeout, not by ctx (the others' answers
// are in them), so a caller waits two reads at most: the one under way
// and its own.
func (r *positionReads) read(ctx context.Context) (wire.Cursor, error) {
	done := make(chan positionRead, 1)
	r.mu.Lock()
	if r.reading {
		r.queued = append(r.queued, done)
		r.mu.Unlock()
		res := <-done
		if res.batch == nil {
			return res.pos, res.err
		}
		r.readFor(ctx, res.batch)
	} else {
		r.reading = true
		r.mu.Unlock()
		r.readFor(ctx, []chan positionRead{done})
	}
	res := <-done
	return res.pos, res.err
}

// readFor reads the position for batch, then hands the next read to the
// first caller queued meanwhile, if any.
func (r *positionReads) readFor(ctx context.Context, batch []chan positionRead) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
	pos, err := currentPosition(rctx, r.history)
	cancel()
	for _, ch := range batch {
		ch <- positionRead{pos: pos, err: err}
	}
	r.mu.Lock()
	next := r.queued
	r.queued = nil
	r.reading = len(next) > 0
	r.mu.Unlock()
	if len(next) > 0 {
		next[0] <- positionRead{batch: next}
	}
}
