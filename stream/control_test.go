package stream

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/wire"
)

// gateSub blocks the SUBSCRIBE of one channel until released.
type gateSub struct {
	*commands
	block   string
	entered chan struct{}
	release chan struct{}
}

func (g *gateSub) Subscribe(channels ...string) error {
	if channels[0] == g.block {
		close(g.entered)
		<-g.release
	}
	return g.commands.Subscribe(channels...)
}

// TestOpenKeepsControlOrder: control messages logged before a stream's
// registration and those arriving while Open applies them are applied in
// the order they were published: a join, then a later leave, leaves the
// stream out of the room. (Found by review.)
func TestOpenKeepsControlOrder(t *testing.T) {
	g := &gateSub{commands: &commands{t: t, subs: map[string]bool{}}, block: "room:a", entered: make(chan struct{}), release: make(chan struct{})}
	h := NewHub(g, noHistory{}, testOpts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry()))
	ticket := h.Ticket() // the handler, before the session read
	h.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "a"})
	h.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "r"})
	var s *Stream
	opened := make(chan struct{})
	go func() {
		defer close(opened)
		var err error
		if s, err = h.Open(context.Background(), Spec{User: "alice", Session: "t", Ticket: ticket}); err != nil {
			t.Error(err)
		}
	}()
	<-g.entered // Open applies the logged join a; its SUBSCRIBE is being written
	// The backend's next message: alice leaves r. The feed applies it now.
	h.control(wire.Control{Op: wire.OpLeave, User: "alice", Room: "r"})
	close(g.release)
	<-opened
	if s.has("room:r") {
		t.Fatalf("stream in room r (%v) although leave r came after join r", s.rooms())
	}
}

// staleSessions answers a session read, and before the answer is used the
// backend adds a room and publishes join (the feed applies it).
type staleSessions struct {
	h     *Hub
	rooms []string
	join  string
}

func (f *staleSessions) LookupMany(_ context.Context, tokens []string) ([]wire.Session, []error, error) {
	out := make([]wire.Session, len(tokens))
	for i := range tokens {
		out[i] = wire.Session{User: "alice", Rooms: f.rooms}
	}
	if f.join != "" {
		f.h.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: f.join})
		f.rooms = append(f.rooms, f.join) // what Redis holds from now on
	}
	return out, make([]error, len(tokens)), nil
}

// TestRecheckKeepsNewerJoin: a recheck that read the session just before
// the backend added a room and published join does not undo the join with
// what it read. (Found by review.)
func TestRecheckKeepsNewerJoin(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	s, err := h.Open(context.Background(), Spec{User: "alice", Session: "t"})
	if err != nil {
		t.Fatal(err)
	}
	sess := &staleSessions{h: h, join: "team"}
	if err := h.recheck(context.Background(), sess); err != nil {
		t.Fatal(err)
	}
	sess.join = ""
	if err := h.recheck(context.Background(), sess); err != nil { // the session lists team now
		t.Fatal(err)
	}
	if !s.has("room:team") {
		t.Fatalf("joined room lost: the session lists team and join was applied, stream rooms %v", s.rooms())
	}
}
