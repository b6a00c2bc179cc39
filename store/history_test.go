package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// maxlen is the history's length in these tests: small, to trim.
const maxlen = 10

// newHistory returns a configured history on a fresh Redis keeping maxlen
// events per channel, a position before any event, and a func that
// publishes n events on a channel.
func newHistory(t *testing.T) (*store.History, wire.Cursor, func(channel string, n int)) {
	t.Helper()
	ctx := context.Background()
	h := store.NewHistory(redistest.Start(t).Client(), "sse:", maxlen, 1<<16, time.Hour)
	if _, err := h.Configure(ctx); err != nil {
		t.Fatal(err)
	}
	start, err := h.Position(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return h, start, func(channel string, n int) {
		t.Helper()
		for i := range n {
			if _, err := h.Publish(ctx, channel, fmt.Appendf(nil, `{"event":"n","data":%d}`, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestReadResetsWhenTrimmedBetweenPages: a replay reads pages up to the
// bound its first page fixed. If the channel is trimmed past the cursor
// of the next page meanwhile, the events in between are gone: the next
// page says so (a reset), rather than carrying on without them.
func TestReadResetsWhenTrimmedBetweenPages(t *testing.T) {
	ctx := context.Background()
	h, start, publishOn := newHistory(t)
	publish := func(n int) { publishOn("room:a", n) }
	publish(maxlen)
	channels, after := []string{"room:a"}, []wire.Cursor{start}
	// A page of about one event: the first read fixes the bound.
	first, err := h.Read(ctx, channels, after, wire.Cursor{}, 1)
	if err != nil || first.Reset != "" || len(first.Events) != 1 || !first.More {
		t.Fatalf("first page: %d events, more %v, reset %q, err %v; want 1 event and more", len(first.Events), first.More, first.Reset, err)
	}
	after[0] = first.Events[0].Cursor
	// Busy meanwhile: the events after the first page are trimmed away.
	publish(maxlen)
	next, err := h.Read(ctx, channels, after, first.Position, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	if next.Reset != wire.ResetTrimmed {
		t.Fatalf("next page after a trim past its cursor: reset %q, %d events; want reset %q", next.Reset, len(next.Events), wire.ResetTrimmed)
	}
}

// TestReadNoResetWhenTrimmedOnlyPastTheBound: a replay's later page must
// not say reset because a busy channel was trimmed of events published
// after the bound (they arrive live): none of the events up to the bound
// is lost. Here the busy channel has nothing left before the bound, a
// quiet channel has one event, and the busy one is trimmed meanwhile.
func TestReadNoResetWhenTrimmedOnlyPastTheBound(t *testing.T) {
	ctx := context.Background()
	h, start, publish := newHistory(t)
	publish("room:busy", 1)
	publish("room:quiet", 1)
	channels := []string{"room:busy", "room:quiet"}
	first, err := h.Read(ctx, channels, []wire.Cursor{start, start}, wire.Cursor{}, 1)
	if err != nil || first.Reset != "" || len(first.Events) != 1 || !first.More {
		t.Fatalf("first page: %d events, more %v, reset %q, err %v; want 1 event and more", len(first.Events), first.More, first.Reset, err)
	}
	horizon := first.Events[0].Cursor // the busy channel's only event up to the bound
	if len(first.Finished) != 1 || first.Finished[0] != "room:busy" {
		t.Fatalf("first page: finished %v, want room:busy (nothing of it left up to the bound)", first.Finished)
	}
	// Published after the bound, and trimmed: none of it is the replay's.
	publish("room:busy", 2*maxlen)
	// The next page reads what the first left unfinished.
	next, err := h.Read(ctx, []string{"room:quiet"}, []wire.Cursor{horizon}, first.Position, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	if next.Reset != "" || len(next.Events) != 1 || next.Events[0].Channel != "room:quiet" {
		t.Fatalf("next page: reset %q, %d events; want the quiet channel's event and no reset", next.Reset, len(next.Events))
	}
}

// TestConcurrentPublishes: publishes made at the same time, which go out
// pipelined in batches, each publish exactly one event under its own id;
// one whose script Redis no longer has (NOSCRIPT) is still published, once.
func TestConcurrentPublishes(t *testing.T) {
	ctx := context.Background()
	r := redistest.Start(t)
	h := store.NewHistory(r.Client(), "sse:", 1000, 1<<16, time.Hour)
	if _, err := h.Configure(ctx); err != nil {
		t.Fatal(err)
	}
	for _, flush := range []bool{false, true} {
		if flush {
			if err := r.Client().ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		const n = 200
		ids := make([]wire.Cursor, n)
		errs := make([]error, n)
		var publishers sync.WaitGroup
		for i := range n {
			publishers.Go(func() {
				ids[i], errs[i] = h.Publish(ctx, "room:busy", fmt.Appendf(nil, `{"event":"n","data":%d}`, i))
			})
		}
		publishers.Wait()
		seen := map[wire.Cursor]bool{}
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("publish %d: %v", i, errs[i])
			}
			if seen[ids[i]] {
				t.Fatalf("id %v given twice", ids[i])
			}
			seen[ids[i]] = true
		}
	}
	if got := r.Client().XLen(ctx, "sse:{room:busy}:history").Val(); got != 400 {
		t.Fatalf("%d events in the history, want 400: each publish exactly once", got)
	}
}
