// Package group runs calls that arrive together as one batch (a group
// commit): while a batch is under way, new calls queue, and the next batch
// takes them all. A mass reconnect's thousands of position reads, or a
// backend's concurrent publishes, then cost Redis a few round trips, not
// one each.
package group

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Commit batches calls of Run. Each call is in a batch begun after the
// call was made, so it sees what its caller did before it, as a call of
// its own would. Each caller runs at most one batch: the one that finds no
// batch under way runs its own; when a batch is over, the first caller
// queued meanwhile runs the next, for every caller queued by then. None is
// kept running batches for a stream of others.
type Commit[Req, Res any] struct {
	// Run runs one batch and returns a result for each request, in order.
	// Its ctx has the latest deadline of the batch's callers (none if one
	// has none), and does not end when the caller running it leaves: the
	// others' results are in it.
	Run func(ctx context.Context, reqs []Req) []Res
	// Max is the most requests in one batch; 0: no bound.
	Max int

	mu      sync.Mutex
	queued  []*call[Req, Res]
	running bool // a batch is under way, or handed on
}

type call[Req, Res any] struct {
	req      Req
	deadline time.Time // zero: none
	done     chan turn[Req, Res]
}

// A turn is a call's result, or, with batch set, its turn to run batch.
type turn[Req, Res any] struct {
	res   Res
	batch []*call[Req, Res]
}

// Do runs req in a batch and returns its result. A call that ctx ends
// while it is still queued leaves (ctx's error); once its batch has
// begun, it waits for it, bounded by the batch's latest deadline.
func (g *Commit[Req, Res]) Do(ctx context.Context, req Req) (Res, error) {
	c := &call[Req, Res]{req: req, done: make(chan turn[Req, Res], 1)}
	c.deadline, _ = ctx.Deadline()
	g.mu.Lock()
	if !g.running {
		g.running = true
		g.mu.Unlock()
		g.run(ctx, []*call[Req, Res]{c})
		return (<-c.done).res, nil
	}
	g.queued = append(g.queued, c)
	g.mu.Unlock()
	var t turn[Req, Res]
	select {
	case t = <-c.done:
	case <-ctx.Done():
		if g.leave(c) {
			var zero Res
			return zero, ctx.Err()
		}
		t = <-c.done // taken from the queue meanwhile: its turn is coming
	}
	if t.batch == nil {
		return t.res, nil
	}
	g.run(ctx, t.batch)
	return (<-c.done).res, nil
}

// leave takes c out of the queue, and reports whether it was there.
func (g *Commit[Req, Res]) leave(c *call[Req, Res]) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	i := slices.Index(g.queued, c)
	if i >= 0 {
		g.queued = slices.Delete(g.queued, i, i+1)
	}
	return i >= 0
}

// run runs batch, then hands the next batch to the first call queued.
func (g *Commit[Req, Res]) run(ctx context.Context, batch []*call[Req, Res]) {
	reqs := make([]Req, len(batch))
	for i, c := range batch {
		reqs[i] = c.req
	}
	// The batch's latest deadline: the oldest call, which runs it, is the
	// one with the least time left.
	bctx := context.WithoutCancel(ctx)
	last := batch[0].deadline
	for _, c := range batch {
		if c.deadline.IsZero() {
			last = time.Time{}
			break
		}
		last = latest(last, c.deadline)
	}
	if !last.IsZero() {
		var cancel context.CancelFunc
		bctx, cancel = context.WithDeadline(bctx, last)
		defer cancel()
	}
	for i, res := range g.Run(bctx, reqs) {
		batch[i].done <- turn[Req, Res]{res: res}
	}
	g.mu.Lock()
	n := len(g.queued)
	if g.Max > 0 {
		n = min(n, g.Max)
	}
	next := g.queued[:n:n]
	g.queued = g.queued[n:]
	g.running = n > 0
	g.mu.Unlock()
	if n > 0 {
		next[0].done <- turn[Req, Res]{batch: next}
	}
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
