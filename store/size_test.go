package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// TestSize: History.Size counts what Read would return in a range, each
// event as its envelope plus the overhead, across script calls (room:a
// holds more than one call counts), and stops soon after passing the
// limit. (Cluster mode's Size: TestReplayTooLarge/cluster in e2e.)
func TestSize(t *testing.T) {
	ctx := context.Background()
	h := store.NewHistory(redistest.Start(t).Client(), "sse:", 1000, 1<<16, time.Hour)
	if _, err := h.Configure(ctx); err != nil {
		t.Fatal(err)
	}
	start, err := h.Position(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type event struct {
		channel string
		id      wire.Cursor
		size    int
	}
	var events []event
	publish := func(channel string, n, size int) {
		for i := range n {
			env := fmt.Sprintf(`{"event":"n","data":"%d %s"}`, i, strings.Repeat("x", size))
			id, err := h.Publish(ctx, channel, []byte(env))
			if err != nil {
				t.Fatal(err)
			}
			events = append(events, event{channel, id, len(env)})
		}
	}
	publish("room:a", 200, 8000) // 1.6 MB: two calls and more
	publish("room:b", 5, 10)
	publish("room:a", 3, 10)
	until, err := h.Position(ctx)
	if err != nil {
		t.Fatal(err)
	}
	publish("room:b", 2, 10) // past the bound: not counted
	const overhead = 40
	// want is the exact count of channels' events after after[i], up to to.
	want := func(channels []string, after []wire.Cursor, to wire.Cursor) int {
		n := 0
		for _, e := range events {
			for i, c := range channels {
				if e.channel == c && after[i].Before(e.id) && !to.Before(e.id) {
					n += e.size + overhead
				}
			}
		}
		return n
	}
	mid := events[150].id
	for _, tt := range []struct {
		name     string
		channels []string
		after    []wire.Cursor
		until    wire.Cursor
		limit    int
	}{
		{"everything", []string{"room:a", "room:b", "room:c"}, []wire.Cursor{start, start, start}, until, 1 << 30},
		{"one channel", []string{"room:b"}, []wire.Cursor{start}, until, 1 << 30},
		{"after its own cursor each", []string{"room:a", "room:b"}, []wire.Cursor{mid, start}, until, 1 << 30},
		{"up to a bound", []string{"room:a", "room:b"}, []wire.Cursor{start, start}, mid, 1 << 30},
		{"nothing in range", []string{"room:c"}, []wire.Cursor{start}, until, 1 << 30},
		{"past the limit", []string{"room:a", "room:b"}, []wire.Cursor{start, start}, until, 100_000},
		{"at the limit exactly", []string{"room:b"}, []wire.Cursor{start}, until, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			exact := want(tt.channels, tt.after, tt.until)
			if tt.limit == 0 {
				tt.limit = exact // not past it
			}
			got, err := h.Size(ctx, tt.channels, tt.after, tt.until, overhead, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if exact <= tt.limit {
				if got != exact {
					t.Fatalf("counted %d, want %d", got, exact)
				}
				return
			}
			// Past the limit: it stops within one XRANGE batch (16) of it.
			if got <= tt.limit || got > tt.limit+16*(8100+overhead) {
				t.Fatalf("counted %d with limit %d (all: %d): want past the limit by at most a batch", got, tt.limit, exact)
			}
		})
	}
}

// TestClusterSize: Cluster.Size counts each partition's channels in a call
// of its own (their keys share its slot), carries the budget from one
// partition to the next, and stops once past it.
func TestClusterSize(t *testing.T) {
	ctx := context.Background()
	const parts = 16
	c := newCluster(t, redistest.StartCluster(t, 3).Client(), parts, 1000)
	var channels []string
	inPart := map[int]bool{}
	for i := 0; len(channels) < 4; i++ { // four channels, each in a partition of its own
		ch := fmt.Sprintf("room:r%d", i)
		if k := wire.Partition(ch, parts); !inPart[k] {
			inPart[k] = true
			channels = append(channels, ch)
		}
	}
	const overhead, each = 40, 20 // each: an envelope's length
	for _, ch := range channels {
		for range 50 {
			if _, err := c.Publish(ctx, ch, fmt.Appendf(nil, `{"data":"%s"}`, strings.Repeat("x", each-11))); err != nil {
				t.Fatal(err)
			}
		}
	}
	vector := func(p uint64) wire.Cursor {
		pos := make([]uint64, parts)
		for k := range pos {
			pos[k] = p
		}
		return wire.VectorCursor(&wire.Vector{Tag: "t", Pos: pos, Own: -1})
	}
	start, until := vector(0), vector(1<<62)
	after := []wire.Cursor{start, start, start, start}
	all := 4 * 50 * (each + overhead)
	for _, tt := range []struct {
		name  string
		limit int
	}{
		{"everything", all},
		{"past the limit in the second partition", 70 * (each + overhead)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Size(ctx, channels, after, until, overhead, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if tt.limit >= all && got != all {
				t.Fatalf("counted %d, want %d", got, all)
			}
			// Past the limit: stopped within one XRANGE batch (16) of it.
			if tt.limit < all && (got <= tt.limit || got > tt.limit+16*(each+overhead)) {
				t.Fatalf("counted %d with limit %d (all: %d)", got, tt.limit, all)
			}
		})
	}
}
