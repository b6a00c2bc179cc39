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
