package stream

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/wire"
)

// batches is a PresenceStore that records what is written, and fails a
// write when told to.
type batches struct {
	got  []PresenceBatch
	fail bool
}

func (b *batches) Write(_ context.Context, batch PresenceBatch) error {
	if b.fail {
		return errors.New("redis down")
	}
	batch.Events = nil
	slices.SortFunc(batch.Shares, func(x, y PresenceShare) int {
		if x.Room != y.Room {
			if x.Room < y.Room {
				return -1
			}
			return 1
		}
		return 0
	})
	slices.Sort(batch.Entered)
	slices.Sort(batch.Left)
	b.got = append(b.got, batch)
	return nil
}
func (b *batches) Beat(context.Context) (bool, error) { return false, nil }
func (b *batches) Sweep(context.Context, time.Duration, time.Duration, func(string) bool) (int, error) {
	return 0, nil
}
func (b *batches) Retire(context.Context, time.Duration, time.Duration) error { return nil }

// take returns what was written since the last take.
func (b *batches) take() []PresenceBatch {
	got := b.got
	b.got = nil
	return got
}

// TestPresenceGraceAndBatches: an arrival is written at the next flush; a
// departure only once its grace has passed, and not at all if a stream of
// the user comes back within it; a failed write is written again; the
// index of what the instance holds follows.
func TestPresenceGraceAndBatches(t *testing.T) {
	const grace = 5 * time.Second
	store := &batches{}
	p := NewPresence(store, PresenceOptions{Grace: grace, Events: []string{"chat-"}},
		slog.New(slog.NewTextHandler(io.Discard, nil)), NewPresenceMetrics(prometheus.NewRegistry()))
	ctx := context.Background()
	p.beat(ctx) // nothing is written before a beat went through
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	expect := func(step string, want ...PresenceBatch) {
		t.Helper()
		if got := store.take(); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: wrote %+v, want %+v", step, got, want)
		}
	}

	p.arrive("user:alice", "alice")
	p.arrive("room:chat-1", "alice")
	p.arrive("broadcast", "alice") // not counted
	p.flush(ctx, at(0))
	expect("arrival", PresenceBatch{
		Shares:  []PresenceShare{{"", "alice", 1}, {"chat-1", "alice", 1}},
		Entered: []string{"rchat-1", "ualice"},
	})
	p.flush(ctx, at(time.Second))
	expect("nothing changed")

	// A reload: gone and back within the grace.
	p.depart("room:chat-1", "alice", at(time.Second))
	p.depart("user:alice", "alice", at(time.Second))
	p.flush(ctx, at(2*time.Second))
	expect("within the grace")
	p.arrive("user:alice", "alice")
	p.arrive("room:chat-1", "alice")
	p.flush(ctx, at(10*time.Second))
	expect("back within the grace")

	// Gone for good: written once the grace has passed; the index after.
	p.depart("room:chat-1", "alice", at(10*time.Second))
	p.flush(ctx, at(10*time.Second+grace-time.Millisecond))
	expect("grace not over")
	store.fail = true
	p.flush(ctx, at(10*time.Second+grace))
	expect("the write failed")
	store.fail = false
	p.flush(ctx, at(11*time.Second+grace))
	expect("written again", PresenceBatch{Shares: []PresenceShare{{"chat-1", "alice", 0}}})
	p.flush(ctx, at(12*time.Second+grace))
	expect("the index", PresenceBatch{Left: []string{"rchat-1"}})
	if !p.Events("chat-1") || p.Events("lobby") {
		t.Error("PRESENCE_EVENTS chat-: events for chat-1 only")
	}
}

// TestPresenceRoomInterval: a room written less than RoomInterval ago is
// written again only once it has passed, with everything that changed
// meanwhile in one write, and nothing of what came and went.
func TestPresenceRoomInterval(t *testing.T) {
	store := &batches{}
	p := NewPresence(store, PresenceOptions{RoomInterval: time.Second},
		slog.New(slog.NewTextHandler(io.Discard, nil)), NewPresenceMetrics(prometheus.NewRegistry()))
	ctx := context.Background()
	p.beat(ctx)
	t0 := time.Unix(1000, 0)
	p.arrive("room:r", "a")
	p.flush(ctx, t0)
	if n := len(store.take()); n != 1 {
		t.Fatalf("%d writes, want 1", n)
	}
	for i := range 10 { // a flapping client
		p.arrive("room:r", "b")
		p.depart("room:r", "b", t0)
		p.flush(ctx, t0.Add(time.Duration(i+1)*50*time.Millisecond))
	}
	p.arrive("room:r", "c")
	p.flush(ctx, t0.Add(600*time.Millisecond))
	if got := store.take(); len(got) != 0 {
		t.Fatalf("wrote %+v within the interval", got)
	}
	p.flush(ctx, t0.Add(time.Second))
	got := store.take()
	if len(got) != 1 || !reflect.DeepEqual(got[0].Shares, []PresenceShare{{"r", "c", 1}}) {
		t.Fatalf("after the interval: %+v, want c alone", got)
	}
}

// BenchmarkPresenceMemory is what presence holds for an idle stream: 10,000
// users, each with a stream in one room (a share of the room and one of
// the user's channel), written; the heap after, per user.
// go test -run XXX -bench PresenceMemory -benchtime 3x ./stream/
func BenchmarkPresenceMemory(b *testing.B) {
	users := make([]string, 10000)
	for i := range users {
		users[i] = "u" + strconv.Itoa(i)
	}
	ctx := context.Background()
	for b.Loop() {
		store := &batches{}
		p := NewPresence(store, PresenceOptions{Grace: time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)), NewPresenceMetrics(prometheus.NewRegistry()))
		p.beat(ctx)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for _, u := range users {
			p.arrive(wire.UserChannel(u), u)
			p.arrive("room:bench", u)
		}
		p.flush(ctx, time.Now())
		p.flush(ctx, time.Now().Add(time.Second))
		store.got = nil
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(len(users)), "B/user")
		runtime.KeepAlive(p)
	}
}
