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
// batch under way runs its own; when a batch is over, the next, every
// call queued by then, is run by the one of them with the latest deadline,
// under that deadline. No caller waits past its own deadline, nor is kept
// running batches for a stream of others.
type Commit[Req, Res any] struct {
	// Run runs one batch and returns a result for each request, in order.
	// Its ctx has the deadline of the call running it, the batch's latest,
	// and does not end when that call's caller leaves: the others' results
	// are in it.
	Run func(ctx context.Context, reqs []Req) []Res
	// Max is the most requests in one batch; 0: no bound.
	Max int

	mu      sync.Mutex
	queued  []*call[Req, Res]
	running bool // a batch is under way, or handed on
}

type call[Req, Res any] struct {
	req      Req
	deadline time.Time // zero: none, the latest of all
	done     chan turn[Req, Res]
	runs     bool // guarded by mu: the next batch is handed to this call
}

// A turn is a call's result, or, with batch set, its turn to run batch.
type turn[Req, Res any] struct {
	res   Res
	batch []*call[Req, Res]
}

// Do runs req in a batch and returns its result, or ctx's error if ctx
// ends first. A call so left may still be in a batch under way: as with
// a call of its own that timed out, its outcome is unknown.
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
		if !g.mustRun(c) {
			var zero Res
			return zero, ctx.Err()
		}
		// Handed the next batch: the others' results are in it. Its
		// deadline is the batch's latest, so theirs have passed too.
		t = <-c.done
	}
	if t.batch == nil {
		return t.res, nil
	}
	g.run(ctx, t.batch)
	return (<-c.done).res, nil
}

// mustRun takes c, whose ctx ended, out of the queue if it is still there,
// and reports whether c was handed the next batch, which it must run.
func (g *Commit[Req, Res]) mustRun(c *call[Req, Res]) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if i := slices.Index(g.queued, c); i >= 0 {
		g.queued = slices.Delete(g.queued, i, i+1)
	}
	return c.runs
}

// run runs batch, then hands the next batch to its call with the latest
// deadline.
func (g *Commit[Req, Res]) run(ctx context.Context, batch []*call[Req, Res]) {
	reqs := make([]Req, len(batch))
	for i, c := range batch {
		reqs[i] = c.req
	}
	bctx := context.WithoutCancel(ctx)
	if d, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		bctx, cancel = context.WithDeadline(bctx, d)
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
	var runner *call[Req, Res]
	for _, c := range next {
		if runner == nil || later(c.deadline, runner.deadline) {
			runner = c
		}
	}
	if runner != nil {
		runner.runs = true
	}
	g.mu.Unlock()
	if runner != nil {
		runner.done <- turn[Req, Res]{batch: next}
	}
}

// later reports whether deadline a is later than b (zero: none, the
// latest).
func later(a, b time.Time) bool {
	return !b.IsZero() && (a.IsZero() || a.After(b))
}
