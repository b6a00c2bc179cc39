package stream

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/wire"
)

// commands is a Subscriber that records what would be written to Redis,
// and fails the test if a channel is subscribed twice in a row or
// unsubscribed while not subscribed: what the hub's membership must never do.
type commands struct {
	t    testing.TB
	mu   sync.Mutex
	subs map[string]bool
	n    int
}

func (c *commands) Subscribe(channels ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range channels {
		if c.subs[ch] {
			c.t.Errorf("SUBSCRIBE %s while subscribed", ch)
		}
		c.subs[ch] = true
		c.n++
	}
	return nil
}

func (c *commands) Unsubscribe(channels ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range channels {
		if !c.subs[ch] {
			c.t.Errorf("UNSUBSCRIBE %s while not subscribed", ch)
		}
		delete(c.subs, ch)
		c.n++
	}
}

func (c *commands) Sync(context.Context) error { return nil }

// count is how many channels were subscribed and unsubscribed so far.
func (c *commands) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func (c *commands) subscribed() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for ch := range c.subs {
		out = append(out, ch)
	}
	return out
}

// noHistory is a History with no durable event ever published.
// backendOf is a Backend of a fake Subscriber and a fake History.
func backendOf(sub Subscriber, history History) Backend {
	return struct {
		Subscriber
		History
	}{sub, history}
}

type noHistory struct{}

func (noHistory) Position(context.Context) (wire.Cursor, error) {
	return wire.Cursor{Epoch: "e", MS: 1}, nil
}

func (noHistory) PublishBareID(context.Context, string) error { return nil }

func (noHistory) Active(context.Context, []string, wire.Cursor) ([]string, error) { return nil, nil }

func (noHistory) Size(context.Context, []string, []wire.Cursor, wire.Cursor, int, int) (int, error) {
	return 0, nil
}

func (noHistory) Read(_ context.Context, _ []string, _ []wire.Cursor, until wire.Cursor, _ int) (wire.Page, error) {
	if until.IsZero() {
		until = wire.Cursor{Epoch: "e", MS: 1}
	}
	return wire.Page{Position: until}, nil
}

var testOpts = Options{MaxStreams: 1000, MaxStreamsPerUser: 100, MaxRooms: 64, QueueEvents: 8, QueueBytes: 1 << 20,
	MaxEventBytes: 1 << 10, ReplayMaxBytes: 1 << 20, ReplayInflightBytes: 1 << 20, Retry: time.Second, MarkInterval: time.Hour}

func newTestHub(t testing.TB, opts Options) (*Hub, *commands) {
	c := &commands{t: t, subs: map[string]bool{}}
	return NewHub(backendOf(c, noHistory{}), opts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry())), c
}

func live(payload string) wire.Message { return wire.Message{Body: []byte(payload)} }

// recorder is a ResponseWriter that tests can read while a writer writes.
type recorder struct {
	*httptest.ResponseRecorder
	mu      sync.Mutex
	written chan struct{}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, err := r.ResponseRecorder.Write(b)
	select {
	case r.written <- struct{}{}:
	default:
	}
	return n, err
}

func (r *recorder) body() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Body.String()
}

// await waits until the body holds s.
func (r *recorder) await(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for !strings.Contains(r.body(), s) {
		select {
		case <-r.written:
		case <-timeout:
			t.Fatalf("body %q: no %q within 5s", r.body(), s)
		}
	}
}

// serveInto runs the stream's writer into a recorder until the stream ends.
func serveInto(s *Stream) (*recorder, chan string) {
	rec := &recorder{ResponseRecorder: httptest.NewRecorder(), written: make(chan struct{}, 1)}
	done := make(chan string, 1)
	go func() {
		done <- s.serveResponse(context.Background(), rec, WriteOptions{Heartbeat: time.Hour, WriteTimeout: time.Second})
	}()
	return rec, done
}

func TestHubSlowStreamDoesNotHoldOthers(t *testing.T) {
	for _, tc := range []struct {
		name string
		lag  time.Duration // the feed's
		want string
	}{
		{"a slow client", 0, ReasonSlow},
		{"the feed's burst", 2 * time.Second, ReasonLate}, // not counted as a slow client (issue 18 item 4)
	} {
		t.Run(tc.name, func(t *testing.T) { slowStream(t, tc.lag, tc.want) })
	}
}

func slowStream(t *testing.T, lag time.Duration, want string) {
	opts := testOpts
	opts.QueueEvents = 4
	opts.FeedLag = func() time.Duration { return lag }
	h, _ := newTestHub(t, opts)
	ctx := context.Background()
	slow, _ := h.Open(ctx, Spec{User: "slow", Session: "a"})
	fast, _ := h.Open(ctx, Spec{User: "fast", Session: "b"})
	// Neither has a writer: both go live as their opening would leave them.
	for _, s := range []*Stream{slow, fast} {
		s.startAt(wire.Cursor{Epoch: "e", MS: 1}, wire.Cursor{Epoch: "e", MS: 1})
		h.goLive(s, wire.Cursor{Epoch: "e", MS: 1}, 0)
	}
	for range 10 {
		h.Publish("broadcast", live("x"), nil)
		if batch, _, _ := fast.take(nil); len(batch) != 1 {
			t.Fatalf("fast got %d frames", len(batch))
		}
	}
	batch, ending, _ := slow.take(nil)
	if ending != want || len(batch) != 1 || string(batch[0][:6]) != "retry:" {
		t.Fatalf("slow stream: ending %q with %d frames; want %s, just a retry: hint", ending, len(batch), want)
	}
}

// TestMembershipChurn opens, closes, joins and leaves from many goroutines
// at once. The subscriber fails the test on any SUBSCRIBE or UNSUBSCRIBE
// out of turn; at the end no channel may be left subscribed.
func TestMembershipChurn(t *testing.T) {
	h, c := newTestHub(t, testOpts)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			var mine []*Stream
			for range 400 {
				user := fmt.Sprintf("u%d", r.IntN(4))
				room := fmt.Sprintf("r%d", r.IntN(6))
				switch r.IntN(4) {
				case 0:
					s, err := h.Open(ctx, Spec{User: user, Session: user, Rooms: []string{room}})
					if err == nil {
						mine = append(mine, s)
					}
				case 1:
					if len(mine) > 0 {
						i := r.IntN(len(mine))
						h.Close(mine[i], ReasonClient)
						mine = append(mine[:i], mine[i+1:]...)
					}
				case 2:
					h.control(wire.Control{Op: wire.OpJoin, User: user, Room: room})
				case 3:
					h.control(wire.Control{Op: wire.OpLeave, User: user, Room: room})
				}
			}
			for _, s := range mine {
				h.Close(s, ReasonClient)
			}
		})
	}
	wg.Wait()
	if left := c.subscribed(); len(left) != 0 {
		t.Fatalf("subscribed with no stream: %v", left)
	}
	if h.Len() != 0 || len(h.users) != 0 || len(h.sessions) != 0 || len(h.allChannels()) != 0 {
		t.Fatal("the hub still knows closed streams")
	}
}

// TestControlBeforeRegistration: a leave or logout published after the
// session was read but before the stream was registered still applies.
func TestControlBeforeRegistration(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	ticket := h.controlPoint()
	h.control(wire.Control{Op: wire.OpLeave, User: "alice", Room: "lobby"})
	h.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "team"})
	h.control(wire.Control{Op: wire.OpLeave, User: "bob", Room: "team"})
	s, err := h.Open(context.Background(), Spec{User: "alice", Session: "a", Rooms: []string{"lobby"}, ControlPoint: ticket})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.rooms(), ","); got != "team" {
		t.Fatalf("rooms %q, want team (lobby left, team joined before registration)", got)
	}
	ticket = h.controlPoint()
	h.control(wire.Control{Op: wire.OpLogout, User: "carol"})
	h.control(wire.Control{Op: wire.OpLogout, User: "alice"})
	s2, err := h.Open(context.Background(), Spec{User: "alice", Session: "a", ControlPoint: ticket})
	if err != nil {
		t.Fatal(err)
	}
	if s2.ended() != ReasonLogout {
		t.Fatalf("stream opened across a logout: ending %q", s2.ended())
	}
}

// TestOpeningOrder: a stream ended while it opens writes its final frame
// last, never before ready.
func TestOpeningOrder(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	s, err := h.Open(context.Background(), Spec{User: "alice", Session: "a"})
	if err != nil {
		t.Fatal(err)
	}
	h.Publish("user:alice", live(`{"event":"hi","data":"there"}`), nil)
	h.control(wire.Control{Op: wire.OpLogout, User: "alice"})
	rec, done := serveInto(s)
	if why := <-done; why != ReasonLogout {
		t.Fatalf("ended for %q, want logout", why)
	}
	if body := rec.body(); body != "event: logout\ndata: {}\n\n" {
		t.Fatalf("body %q: a stream logged out before its opening is written gets logout alone", body)
	}

	s, _ = h.Open(context.Background(), Spec{User: "bob", Session: "b"})
	rec, done = serveInto(s)
	rec.await(t, "event: ready")
	h.Publish("user:bob", live(`{"event":"hi","data":"there"}`), nil)
	h.control(wire.Control{Op: wire.OpLogout, User: "bob"})
	if why := <-done; why != ReasonLogout {
		t.Fatalf("ended for %q, want logout", why)
	}
	body := rec.body()
	ready, logout := strings.Index(body, "event: ready"), strings.Index(body, "event: logout")
	if ready < 0 || logout < ready || !strings.HasSuffix(body, "event: logout\ndata: {}\n\n") {
		t.Fatalf("body %q: want ready first, logout last", body)
	}
}

// TestLeaveDropsHeld: events of a room that arrived while a stream was
// catching up are not written after the stream left the room.
func TestLeaveDropsHeld(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	s, _ := h.Open(context.Background(), Spec{User: "alice", Session: "a", Rooms: []string{"lobby"}})
	h.Publish("room:lobby", live(`{"event":"secret","data":1}`), nil)
	h.Publish("user:alice", live(`{"event":"mine","data":1}`), nil)
	h.control(wire.Control{Op: wire.OpLeave, User: "alice", Room: "lobby"})
	h.control(wire.Control{Op: wire.OpLogout, User: "alice"}) // so that the writer stops
	rec, done := serveInto(s)
	<-done
	if body := rec.body(); strings.Contains(body, "secret") {
		t.Fatalf("left room's event written: %q", body)
	}
}

// TestServeThroughNetHTTP covers the writer used when a connection cannot
// be taken over (HTTP/2): frames in order, then the end.
func TestServeThroughNetHTTP(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	s, err := h.Open(context.Background(), Spec{User: "alice", Session: "a"})
	if err != nil {
		t.Fatal(err)
	}
	rec, done := serveInto(s)
	rec.await(t, "event: ready")
	// Live once its opening is done (ready is written before): an event
	// offered before is held, and a logout drops what a catch-up holds.
	awaitLive(t, s)
	h.Publish("user:alice", live(`{"event":"hi","data":"there"}`), nil)
	h.control(wire.Control{Op: wire.OpLogout, User: "alice"})
	if why := <-done; why != ReasonLogout {
		t.Fatalf("ended for %q, want logout", why)
	}
	body := rec.body()
	if !strings.HasPrefix(body, "retry: 1000\n") || !strings.Contains(body, "event: hi\ndata: there\n\n") || !strings.HasSuffix(body, "event: logout\ndata: {}\n\n") || !rec.Flushed {
		t.Fatalf("body %q, flushed %v", body, rec.Flushed)
	}
}

func TestHubWaitsForOpenStreams(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
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

// awaitLive waits until s has no catch-up running: a live event offered
// from then on is queued, not held.
func awaitLive(t *testing.T, s *Stream) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		live := s.catching == nil
		s.mu.Unlock()
		if live {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("stream not live within 5s")
		}
		runtime.Gosched()
	}
}

// TestMetricsKnownLabelsAtZero: every known label of the hub's counters is
// there from the start, at 0 (a dashboard shows 0, not "No data").
func TestMetricsKnownLabelsAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				have[f.GetName()+"/"+l.GetValue()] = true
			}
		}
	}
	for _, want := range []string{
		"ssebridge_streams_closed_total/late", "ssebridge_streams_closed_total/slow",
		"ssebridge_events_dropped_total/too_large", "ssebridge_resets_total/trimmed",
		"ssebridge_control_applied_total/join", "ssebridge_session_recheck_total/ended",
	} {
		if !have[want] {
			t.Errorf("%s missing at start", want)
		}
	}
}
