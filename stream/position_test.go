package stream

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// gatedReads is a History whose reads of the position return 1, 2, …, in
// the order they began, each once the test lets it end.
type gatedReads struct {
	noHistory
	began atomic.Int64
	let   chan struct{}
}

func (g *gatedReads) Read(ctx context.Context, _ []string, _ []wire.Cursor, _ wire.Cursor, _ int) (wire.Page, error) {
	n := g.began.Add(1)
	select {
	case <-g.let:
	case <-ctx.Done():
		return wire.Page{}, ctx.Err()
	}
	return wire.Page{Position: wire.Cursor{Epoch: "e", MS: uint64(n)}}, nil
}

// TestPositionReadsShared: callers that ask while a read is under way
// share the next read, never the one begun before they asked.
func TestPositionReadsShared(t *testing.T) {
	g := &gatedReads{let: make(chan struct{})}
	r := &positionReads{history: g, timeout: 10 * time.Second}
	got := make([]uint64, 4)
	var callers sync.WaitGroup
	ask := func(i int) {
		callers.Go(func() {
			pos, err := r.read(context.Background())
			if err != nil {
				t.Error(err)
			}
			got[i] = pos.MS
		})
	}
	ask(0)
	for g.began.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	for i := 1; i < 4; i++ {
		ask(i)
	}
	for queued := 0; queued < 3; time.Sleep(time.Millisecond) {
		r.mu.Lock()
		queued = len(r.queued)
		r.mu.Unlock()
	}
	close(g.let)
	callers.Wait()
	if want := []uint64{1, 2, 2, 2}; got[0] != want[0] || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Fatalf("positions %v, want %v: the callers after the first share the second read", got, want)
	}
	if n := g.began.Load(); n != 2 {
		t.Fatalf("%d reads for 4 callers, want 2", n)
	}
}
