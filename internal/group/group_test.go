package group

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCommitBatches: calls made while a batch is under way share the
// next, never the one begun before them, and a batch holds at most Max.
func TestCommitBatches(t *testing.T) {
	tests := []struct {
		name    string
		max     int
		waiting int
		batches int64 // after the first
	}{
		{"one batch for the queue", 0, 5, 1},
		{"batches of two", 2, 5, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var began atomic.Int64
			let := make(chan struct{})
			g := &Commit[int, int64]{Max: tt.max, Run: func(_ context.Context, reqs []int) []int64 {
				n := began.Add(1)
				if n == 1 {
					<-let
				}
				out := make([]int64, len(reqs))
				for i := range out {
					out[i] = n
				}
				return out
			}}
			got := make([]int64, tt.waiting+1)
			var calls sync.WaitGroup
			calls.Go(func() { got[0], _ = g.Do(context.Background(), 0) })
			for began.Load() != 1 {
				time.Sleep(time.Millisecond)
			}
			for i := 1; i <= tt.waiting; i++ {
				calls.Go(func() { got[i], _ = g.Do(context.Background(), i) })
			}
			for queued := 0; queued < tt.waiting; time.Sleep(time.Millisecond) {
				g.mu.Lock()
				queued = len(g.queued)
				g.mu.Unlock()
			}
			close(let)
			calls.Wait()
			if got[0] != 1 {
				t.Errorf("the first call got batch %d, want 1", got[0])
			}
			for i := 1; i <= tt.waiting; i++ {
				if got[i] == 1 {
					t.Errorf("call %d, made during the first batch, got its result", i)
				}
			}
			if n := began.Load() - 1; n != tt.batches {
				t.Errorf("%d batches after the first, want %d", n, tt.batches)
			}
		})
	}
}

// TestCommitLeaveQueued: a call whose ctx ends while it is queued leaves
// with ctx's error, and the batches go on without it.
func TestCommitLeaveQueued(t *testing.T) {
	let := make(chan struct{})
	var runs atomic.Int64
	g := &Commit[int, int]{Run: func(_ context.Context, reqs []int) []int {
		if runs.Add(1) == 1 {
			<-let
		}
		return reqs
	}}
	first := make(chan int)
	go func() { v, _ := g.Do(context.Background(), 1); first <- v }()
	for runs.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := g.Do(ctx, 2); err != context.DeadlineExceeded {
		t.Fatalf("a queued call past its deadline: %v, want DeadlineExceeded", err)
	}
	close(let)
	if v := <-first; v != 1 {
		t.Fatalf("the first call got %d", v)
	}
	if v, err := g.Do(context.Background(), 3); v != 3 || err != nil {
		t.Fatalf("a call after: %d, %v", v, err)
	}
}

// TestCommitLatestDeadline: a batch is run by its call with the latest
// deadline, not by the oldest, which has the least time left, and a call
// waits no longer than its own deadline. (Found by review: a call with
// 10 s to go failed on its leader's 50 ms.)
func TestCommitLatestDeadline(t *testing.T) {
	let := make(chan struct{})
	var runs atomic.Int64
	g := &Commit[int, error]{Run: func(ctx context.Context, reqs []int) []error {
		if runs.Add(1) == 1 {
			<-let
		} else {
			select { // the second batch takes 100 ms
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
			}
		}
		out := make([]error, len(reqs))
		for i := range out {
			out[i] = ctx.Err()
		}
		return out
	}}
	go func() { _, _ = g.Do(context.Background(), 0) }()
	for runs.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	long, cancelLong := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelLong()
	var calls sync.WaitGroup
	var longErr, shortLeft error
	var shortTook time.Duration
	calls.Go(func() { // queued first
		start := time.Now()
		_, shortLeft = g.Do(short, 1)
		shortTook = time.Since(start)
	})
	for n := 0; n < 1; time.Sleep(time.Millisecond) {
		g.mu.Lock()
		n = len(g.queued)
		g.mu.Unlock()
	}
	calls.Go(func() { longErr, _ = g.Do(long, 2) })
	for n := 0; n < 2; time.Sleep(time.Millisecond) {
		g.mu.Lock()
		n = len(g.queued)
		g.mu.Unlock()
	}
	close(let)
	calls.Wait()
	if longErr != nil {
		t.Fatalf("a call with 10 s to go, in a batch of 100 ms: %v", longErr)
	}
	if shortLeft == nil || shortTook > 5*time.Second {
		t.Fatalf("a call with 50 ms to go, in a batch of 100 ms: %v after %v, want its deadline's error", shortLeft, shortTook)
	}
}
