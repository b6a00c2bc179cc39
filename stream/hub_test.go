package stream

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/store"
)

// refs is a Subscriber that counts references, as store.Feed does, with no Redis.
type refs struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *refs) Retain(_ context.Context, channels ...string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range channels {
		r.n[c]++
	}
	return nil
}

func (r *refs) Release(channels ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range channels {
		if r.n[c]--; r.n[c] == 0 {
			delete(r.n, c)
		}
	}
}

func (r *refs) count(c string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[c]
}

// noHistory is a History with no durable event ever published.
type noHistory struct{}

func (noHistory) Position(context.Context) (store.Cursor, error) {
	return store.Cursor{Epoch: "e"}, nil
}

func (noHistory) Mark(context.Context, string) error { return nil }

func (noHistory) Since(_ context.Context, _ []string, after store.Cursor) (store.Replay, error) {
	return store.Replay{Position: after}, nil
}

func newTestHub(opts Options) (*Hub, *refs) {
	r := &refs{n: map[string]int{}}
	return NewHub(r, noHistory{}, opts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry())), r
}

func queued(s *Stream) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

func TestHubSlowStreamDoesNotHoldOthers(t *testing.T) {
	h, _ := newTestHub(Options{MaxStreams: 10, MaxStreamsPerUser: 10, QueueEvents: 4, QueueBytes: 1 << 20, MaxEventBytes: 1 << 10, Retry: time.Second, MarkInterval: time.Hour})
	ctx := context.Background()
	slow, _ := h.Open(ctx, Spec{User: "slow", Session: "a"})
	fast, _ := h.Open(ctx, Spec{User: "fast", Session: "b"})
	// Nobody serves slow; fast is drained after each publish as a writer would.
	for range 10 {
		h.Publish("broadcast", []byte("x"))
		if n := queued(fast); n != 2 && n != 1 { // ready (first time only) + x
			t.Fatalf("fast has %d queued", n)
		}
		fast.take(nil)
	}
	batch, ending := slow.take(nil)
	if ending != ReasonSlow || len(batch) != 1 || string(batch[0][:6]) != "retry:" {
		t.Fatalf("slow stream: ending %q with %d frames; want slow, just a retry: hint", ending, len(batch))
	}
}

func TestHubReferencesBalance(t *testing.T) {
	h, r := newTestHub(Options{MaxStreams: 10, MaxStreamsPerUser: 10, QueueEvents: 8, QueueBytes: 1 << 20, MaxEventBytes: 1 << 10, Retry: time.Second, MarkInterval: time.Hour})
	ctx := context.Background()
	a1, _ := h.Open(ctx, Spec{User: "alice", Session: "a", Rooms: []string{"lobby"}})
	a2, _ := h.Open(ctx, Spec{User: "alice", Session: "a"})
	if r.count("user:alice") != 2 || r.count("room:lobby") != 1 || r.count("broadcast") != 2 {
		t.Fatalf("after open: %v", r.n)
	}
	h.join(ctx, "alice", "room:team")
	h.join(ctx, "alice", "room:team") // already in: no second reference
	if r.count("room:team") != 2 {
		t.Fatalf("after join: %v", r.n)
	}
	h.leave("alice", "room:lobby")
	if r.count("room:lobby") != 0 {
		t.Fatalf("after leave: %v", r.n)
	}
	h.Close(a1, ReasonClient)
	h.Close(a2, ReasonClient)
	if len(r.n) != 0 {
		t.Fatalf("references left after every stream closed: %v", r.n)
	}
	for i := range h.shards {
		if len(h.shards[i].subs) != 0 {
			t.Fatalf("shard %d still holds %v", i, h.shards[i].subs)
		}
	}
	if h.Len() != 0 || len(h.users) != 0 || len(h.sessions) != 0 {
		t.Fatal("the hub still knows closed streams")
	}
}

// TestServeThroughNetHTTP covers the writer used when a connection cannot
// be taken over (HTTP/2): frames in order, then the end.
func TestServeThroughNetHTTP(t *testing.T) {
	h, _ := newTestHub(Options{MaxStreams: 10, MaxStreamsPerUser: 10, QueueEvents: 8, QueueBytes: 1 << 20, MaxEventBytes: 1 << 10, Retry: time.Second, MarkInterval: time.Hour})
	s, err := h.Open(context.Background(), Spec{User: "alice", Session: "a"})
	if err != nil {
		t.Fatal(err)
	}
	h.Publish("user:alice", []byte(`{"event":"hi","data":"there"}`))
	s.end(ReasonLogout, logoutFrame, true)
	rec := httptest.NewRecorder()
	if why := s.Serve(context.Background(), rec, WriteOptions{Heartbeat: time.Hour, WriteTimeout: time.Second}); why != ReasonLogout {
		t.Fatalf("ended for %q, want logout", why)
	}
	body := rec.Body.String()
	want := "event: hi\ndata: there\n\nevent: logout\ndata: {}\n\n"
	if !strings.HasPrefix(body, "retry: 1000\n") || !strings.HasSuffix(body, want) || !rec.Flushed {
		t.Fatalf("body %q, flushed %v", body, rec.Flushed)
	}
}

func TestHubWaitsForOpenStreams(t *testing.T) {
	h, _ := newTestHub(Options{MaxStreams: 10, MaxStreamsPerUser: 10, QueueEvents: 8, QueueBytes: 1 << 20, MaxEventBytes: 1 << 10, Retry: time.Second, MarkInterval: time.Hour})
	s, err := h.Open(context.Background(), Spec{User: "alice", Session: "a"})
	if err != nil {
		t.Fatal(err)
	}
	h.Shutdown()
	if _, err := h.Open(context.Background(), Spec{User: "bob", Session: "b"}); err != ErrShuttingDown {
		t.Fatalf("open while stopping: %v", err)
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Wait(done); err == nil {
		t.Fatal("Wait returned while a stream is open")
	}
	h.Close(s, ReasonShutdown)
	h.Close(s, ReasonShutdown) // twice is harmless
	if err := h.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}
