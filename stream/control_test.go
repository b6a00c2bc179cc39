package stream

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
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
	h := NewHub(backendOf(g, noHistory{}), testOpts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry()))
	ticket := h.controlPoint() // the handler, before the session read
	h.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "a"})
	h.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "r"})
	var s *Stream
	opened := make(chan struct{})
	go func() {
		defer close(opened)
		var err error
		if s, err = h.Open(context.Background(), Spec{User: "alice", Session: "t", ControlPoint: ticket}); err != nil {
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

// history is a History holding a few durable events, as a fake of Redis's.
type history struct {
	now    wire.Cursor
	events []wire.Durable // in id order, none after now
	// afterActive, if set, runs once Active has looked: what a publisher
	// does meanwhile.
	afterActive func()
}

// publish appends an event at ms and returns it.
func (m *history) publish(channel string, ms uint64, data string) wire.Durable {
	ev := wire.Durable{Cursor: wire.Cursor{Epoch: "e", MS: ms}, Channel: channel, Envelope: []byte(`{"event":"n","data":"` + data + `"}`)}
	m.events = append(m.events, ev)
	m.now = ev.Cursor
	return ev
}

func (m *history) Position(context.Context) (wire.Cursor, error) { return m.now, nil }

func (m *history) PublishBareID(context.Context, string) error { return nil }

func (m *history) Active(_ context.Context, channels []string, after wire.Cursor) ([]string, error) {
	var active []string
	for _, c := range channels {
		for _, ev := range m.events {
			if ev.Channel == c && after.Before(ev.Cursor) {
				active = append(active, c)
				break
			}
		}
	}
	if f := m.afterActive; f != nil {
		m.afterActive = nil
		f()
	}
	return active, nil
}

func (m *history) Read(_ context.Context, channels []string, after []wire.Cursor, until wire.Cursor, _ int) (wire.Page, error) {
	if until.IsZero() {
		until = m.now
	}
	p := wire.Page{Position: until}
	for _, ev := range m.events {
		for i, c := range channels {
			if c == ev.Channel && after[i].Before(ev.Cursor) && !until.Before(ev.Cursor) {
				p.Events = append(p.Events, ev)
			}
		}
	}
	return p, nil
}

func (m *history) Size(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, overhead, limit int) (int, error) {
	p, _ := m.Read(ctx, channels, after, until, 0)
	n := 0
	for _, ev := range p.Events {
		if n > limit {
			break
		}
		n += len(ev.Envelope) + overhead
	}
	return n, nil
}

// frames is a sink that keeps what is written.
type frames struct{ out []string }

func (f *frames) write(batch [][]byte) error {
	for _, b := range batch {
		f.out = append(f.out, string(b))
	}
	return nil
}

// sessionOf answers every session read with one user and rooms.
type sessionOf wire.Session

func (s sessionOf) LookupMany(_ context.Context, tokens []string) ([]wire.Session, []error, error) {
	out := make([]wire.Session, len(tokens))
	for i := range out {
		out[i] = wire.Session(s)
	}
	return out, make([]error, len(tokens)), nil
}

// TestRecheckWhileOpening: a session recheck that runs while Open is still
// attaching a resuming stream to its rooms does not take the rooms not yet
// attached for rooms the session gained. Joined, they would be replayed
// from the join (the newest id the feed had delivered), not from the
// stream's Last-Event-ID: what they carried in between was lost. (Found by
// TestWideResume, which stalled once a recheck fell in a resume.)
func TestRecheckWhileOpening(t *testing.T) {
	g := &gateSub{commands: &commands{t: t, subs: map[string]bool{}}, block: "room:a", entered: make(chan struct{}), release: make(chan struct{})}
	missed := wire.Durable{Cursor: wire.Cursor{Epoch: "e", MS: 20}, Envelope: []byte(`{"event":"n","data":"missed"}`)}
	hist := &history{now: wire.Cursor{Epoch: "e", MS: 30}}
	h := NewHub(backendOf(g, hist), testOpts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry()))
	// A second room that Open attaches after room:a, and whose membership
	// lock is not the one Open holds while room:a's SUBSCRIBE is written.
	b := ""
	for i := 0; b == ""; i++ {
		if c := fmt.Sprintf("b%d", i); h.members.stripe(wire.RoomChannel(c)) != h.members.stripe("room:a") {
			b = c
		}
	}
	missed.Channel = wire.RoomChannel(b)
	hist.events = append(hist.events, missed)
	// The event was published while the browser was away, after its last
	// id (e:10-0); the feed delivered it to nobody.
	h.Publish(missed.Channel, wire.Message{Cursor: missed.Cursor, Body: missed.Envelope}, nil)

	var s *Stream
	opened := make(chan struct{})
	go func() {
		defer close(opened)
		var err error
		s, err = h.Open(context.Background(), Spec{User: "alice", Session: "t", Rooms: []string{"a", b}, AllRooms: true, Resume: "e:10-0"})
		if err != nil {
			t.Error(err)
		}
	}()
	<-g.entered // Open is attaching room:a; room b is next
	if err := h.recheck(context.Background(), sessionOf{User: "alice", Rooms: []string{"a", b}}); err != nil {
		t.Fatal(err)
	}
	close(g.release)
	<-opened
	if s == nil {
		return
	}
	out := &frames{}
	if why := h.opening(context.Background(), s, out); why != "" {
		t.Fatalf("opening ended the stream: %s", why)
	}
	if got := strings.Join(out.out, ""); !strings.Contains(got, "missed") {
		t.Fatalf("the stream resumed from e:10-0 without the event e:20-0 of room %s: %q", b, got)
	}
}

// newerTab reads a session, and before the read is used the backend
// rewrites the session (without a control message, as set_rooms may) and
// a second tab of it opens with the new rooms: what a recheck's read can
// meet.
type newerTab struct {
	h        *Hub
	read     []string // the rooms the session lists when read
	rewrite  []string // the rooms it lists afterwards
	allRooms bool     // the tab opens without ?rooms=
	tab      *Stream
}

func (f *newerTab) LookupMany(_ context.Context, tokens []string) ([]wire.Session, []error, error) {
	out := make([]wire.Session, len(tokens))
	for i := range tokens {
		out[i] = wire.Session{User: "alice", Rooms: f.read}
	}
	if f.tab == nil {
		// The handler reads the session as rewritten, then opens.
		tab, err := f.h.Open(context.Background(), Spec{User: "alice", Session: "t", Rooms: f.rewrite, AllRooms: f.allRooms})
		if err != nil {
			return nil, nil, err
		}
		f.tab = tab
	}
	f.read = f.rewrite // what Redis holds from now on
	return out, make([]error, len(tokens)), nil
}

// TestRecheckJudgesOnlyOlderStreams: a recheck's read of a session judges
// only the streams authorized before it; a tab opened after the read, with
// a newer read of the session, is not joined to a room since removed nor
// made to leave a room since added (with ?rooms= it would never come
// back). The next recheck judges it. (Issue 17, item 6.)
func TestRecheckJudgesOnlyOlderStreams(t *testing.T) {
	for _, tc := range []struct {
		name          string
		first         []string // the first tab's rooms, and the session's at the read
		rewrite       []string
		allRooms      bool
		want, wantOld []string // the tab's rooms after the recheck, then the first tab's
	}{
		{"room removed after the read", []string{"a", "b"}, []string{"a"}, true, []string{"a"}, []string{"a", "b"}},
		{"room added after the read", []string{"a"}, []string{"a", "b"}, false, []string{"a", "b"}, []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newTestHub(t, testOpts)
			old, err := h.Open(context.Background(), Spec{User: "alice", Session: "t", Rooms: tc.first, AllRooms: true})
			if err != nil {
				t.Fatal(err)
			}
			sess := &newerTab{h: h, read: tc.first, rewrite: tc.rewrite, allRooms: tc.allRooms}
			if err := h.recheck(context.Background(), sess); err != nil {
				t.Fatal(err)
			}
			if got := sess.tab.rooms(); !slices.Equal(got, tc.want) {
				t.Fatalf("the tab opened after the recheck's read has rooms %v, want %v (as its own read of the session)", got, tc.want)
			}
			if got := old.rooms(); !slices.Equal(got, tc.wantOld) {
				t.Fatalf("the tab opened before the read has rooms %v, want %v (as the read)", got, tc.wantOld)
			}
			// The next recheck reads the session as it is now and judges
			// both tabs.
			if err := h.recheck(context.Background(), sess); err != nil {
				t.Fatal(err)
			}
			if got, got2 := sess.tab.rooms(), old.rooms(); !slices.Equal(got, tc.rewrite) || !slices.Equal(got2, tc.rewrite) {
				t.Fatalf("after the next recheck the tabs have rooms %v and %v, want %v", got, got2, tc.rewrite)
			}
		})
	}
}

// TestRecheckCounterWraps: a stream registered just before the recheck
// count wraps is still judged by the recheck after it.
func TestRecheckCounterWraps(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	h.rechecks = ^uint32(0)
	s, err := h.Open(context.Background(), Spec{User: "alice", Session: "t", Rooms: []string{"a", "b"}, AllRooms: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.recheck(context.Background(), sessionOf{User: "alice", Rooms: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	if got := s.rooms(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("rooms %v after a recheck whose read lists [a]", got)
	}
}
