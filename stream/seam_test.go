package stream

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/wire"
)

// orderedRedis is a Subscriber and a History that keep Redis's order of
// events: ids grow as things are published; a published message reaches
// the feed only on a channel whose SUBSCRIBE Redis has processed, and the
// feed delivers in publish order; Sync is a PING on the pub/sub
// connection, so it processes the SUBSCRIBEs written before it, delivers
// what was published before it, and confirms nothing written while it
// delivers. Hooks let a test publish at a chosen step of the hub's seam.
type orderedRedis struct {
	mu       sync.Mutex
	h        *Hub
	seq      uint64
	events   []wire.Durable
	inForce  map[string]bool
	inFlight []string // SUBSCRIBEs written, not yet processed
	feed     []func() // deliveries, in publish order
	hooks    map[string]func()
	syncs    chan struct{} // gets a value at every Sync, if set
}

func newOrderedRedis(t *testing.T) (*orderedRedis, *Hub) {
	r := &orderedRedis{inForce: map[string]bool{wire.ControlChannel: true}, hooks: map[string]func(){}}
	r.h = NewHub(r, testOpts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry()))
	r.publish(wire.BroadcastChannel, "") // Redis has some history already
	if err := r.h.Prime(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.h.SubscribeControl(); err != nil {
		t.Fatal(err)
	}
	r.h.recoverLog(context.Background(), r) // as the feed does once connected
	return r, r.h
}

// on runs f once, when the hub next reaches step: "position", "bound" (a
// read of no channel), "read" (a read of channels), "sync" or
// "subscribe" (before the SUBSCRIBE is written).
func (r *orderedRedis) on(step string, f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hooks[step] = f
}

func (r *orderedRedis) hook(step string) {
	r.mu.Lock()
	f := r.hooks[step]
	delete(r.hooks, step)
	r.mu.Unlock()
	if f != nil {
		f()
	}
}

func (r *orderedRedis) cursor() wire.Cursor { return wire.Cursor{Epoch: "e", MS: r.seq} }

// publish publishes a durable event (data "": a mark, as Mark does).
func (r *orderedRedis) publish(channel, data string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	env := []byte(`{"event":"n","data":"` + data + `"}`)
	ev := wire.Durable{Channel: channel, Cursor: r.cursor(), Envelope: env}
	if data != "" {
		r.events = append(r.events, ev)
	}
	if r.inForce[channel] {
		r.feed = append(r.feed, func() { r.h.Publish(channel, wire.Message{Cursor: ev.Cursor, Body: env}, nil) })
	}
}

// control publishes a control message.
func (r *orderedRedis) control(c wire.Control) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.feed = append(r.feed, func() { r.h.control(c) })
}

// deliver hands the feed everything published so far, as the feed's
// goroutine would.
func (r *orderedRedis) deliver() {
	for {
		r.mu.Lock()
		if len(r.feed) == 0 {
			r.mu.Unlock()
			return
		}
		f := r.feed[0]
		r.feed = r.feed[1:]
		r.mu.Unlock()
		f()
	}
}

func (r *orderedRedis) Subscribe(channels ...string) error {
	r.hook("subscribe")
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inFlight = append(r.inFlight, channels...)
	return nil
}

func (r *orderedRedis) Unsubscribe(channels ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range channels {
		delete(r.inForce, c)
	}
}

func (r *orderedRedis) Sync(context.Context) error {
	r.hook("sync")
	if r.syncs != nil {
		select {
		case r.syncs <- struct{}{}:
		default:
		}
	}
	r.mu.Lock()
	for _, c := range r.inFlight {
		r.inForce[c] = true
	}
	r.inFlight = nil
	pending := r.feed
	r.feed = nil
	r.mu.Unlock()
	for _, f := range pending {
		f() // a SUBSCRIBE written meanwhile is after the PING
	}
	return nil
}

func (r *orderedRedis) Position(context.Context) (wire.Cursor, error) {
	r.hook("position")
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	return r.cursor(), nil
}

func (r *orderedRedis) PublishBareID(_ context.Context, channel string) error {
	r.publish(channel, "")
	return nil
}

func (r *orderedRedis) Active(_ context.Context, channels []string, _ wire.Cursor) ([]string, error) {
	return channels, nil
}

func (r *orderedRedis) Read(_ context.Context, channels []string, after []wire.Cursor, until wire.Cursor, _ int) (wire.Page, error) {
	if len(channels) == 0 {
		r.hook("bound")
	} else {
		r.hook("read")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if until.IsZero() {
		until = r.cursor()
	}
	p := wire.Page{Position: until}
	for _, ev := range r.events {
		for i, c := range channels {
			if c == ev.Channel && after[i].Before(ev.Cursor) && !until.Before(ev.Cursor) {
				p.Events = append(p.Events, ev)
			}
		}
	}
	return p, nil
}

func (r *orderedRedis) Size(context.Context, []string, []wire.Cursor, wire.Cursor, int, int) (int, error) {
	return 0, nil
}

// TestJoinAtTheSeams: a room joined at any step of a stream's opening or
// catch-up gets every durable event published on it after the join, once,
// in order, with ids that only grow (issue 17, items 1 to 4). Each case
// publishes the join, then an event on the room, at one step; the feed
// delivers them in order, whenever the hub next syncs or at the end.
func TestJoinAtTheSeams(t *testing.T) {
	cases := []struct {
		name   string
		resume bool
		step   string
	}{
		{"fresh, join before the position", false, "position"},            // item 1
		{"fresh, join during the barrier", false, "sync"},                 // item 1
		{"resume, join before the bound", true, "bound"},                  // item 2
		{"resume, join before the first page", true, "read"},              // item 2
		{"resume, join during the barrier", true, "sync"},                 // items 1, 4
		{"live, join of a second room during a catch-up", false, "bound"}, // item 4
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r, h := newOrderedRedis(t)
			r.publish("user:alice", "before")
			spec := Spec{User: "alice", Session: "t"}
			if tc.resume {
				spec.Resume = r.cursor().String()
				r.publish("user:alice", "missed")
			}
			s, err := h.Open(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			out := &frames{}
			if tc.name == "live, join of a second room during a catch-up" {
				if why := h.opening(ctx, s, out); why != "" {
					t.Fatal(why)
				}
				r.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "first"})
				r.deliver() // the stream now needs a catch-up
			}
			r.on(tc.step, func() {
				r.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "lobby"})
				r.publish("room:lobby", "after-join")
			})
			var why string
			if tc.name == "live, join of a second room during a catch-up" {
				why = h.catchUp(ctx, s, out)
			} else {
				why = h.opening(ctx, s, out)
			}
			if why != "" {
				t.Fatal(why)
			}
			r.hook(tc.step) // a step the hub did not reach: the join comes now
			r.deliver()     // the feed goes on; a join it brings rewinds the stream
			for {
				batch, _, rewind := s.take(nil)
				for _, f := range batch {
					out.out = append(out.out, string(f))
				}
				if !rewind {
					break
				}
				if why := h.catchUp(ctx, s, out); why != "" {
					t.Fatal(why)
				}
			}
			checkDelivery(t, out.out, "after-join", tc.resume)
		})
	}
}

// checkDelivery fails t unless the frames carry want once, the missed
// event if resumed, never the event from before the stream, and ids that
// only grow.
func checkDelivery(t *testing.T, out []string, want string, resumed bool) {
	t.Helper()
	all := strings.Join(out, "")
	if n := strings.Count(all, "data: "+want+"\n"); n != 1 {
		t.Errorf("%q written %d times, want once: %q", want, n, all)
	}
	if resumed && strings.Count(all, "data: missed\n") != 1 {
		t.Errorf("the missed event not replayed once: %q", all)
	}
	if strings.Contains(all, "data: before\n") {
		t.Errorf("an event from before the stream written: %q", all)
	}
	var last wire.Cursor
	for _, line := range strings.Split(all, "\n") {
		id, ok := strings.CutPrefix(line, "id: ")
		if !ok {
			continue
		}
		c, err := wire.ParseCursor(id)
		if err != nil {
			t.Fatalf("id %q: %v", id, err)
		}
		if !last.IsZero() && !last.Before(c) {
			t.Errorf("id %s after %s: ids must only grow: %q", c, last, all)
		}
		last = c
	}
}

// liveStream opens a stream of alice and runs its opening: it is live.
func liveStream(t *testing.T, r *orderedRedis, h *Hub) (*Stream, *frames) {
	t.Helper()
	s, err := h.Open(context.Background(), Spec{User: "alice", Session: "t"})
	if err != nil {
		t.Fatal(err)
	}
	out := &frames{}
	if why := h.opening(context.Background(), s, out); why != "" {
		t.Fatal(why)
	}
	return s, out
}

// drain writes what s has queued into out, running the catch-ups it asks
// for, as its writer would, until it has nothing more to do.
func drain(t *testing.T, h *Hub, s *Stream, out *frames) {
	t.Helper()
	for {
		batch, _, rewind := s.take(nil)
		for _, f := range batch {
			out.out = append(out.out, string(f))
		}
		if !rewind {
			return
		}
		if why := h.catchUp(context.Background(), s, out); why != "" {
			t.Fatal(why)
		}
	}
}

// TestLeaveAndJoinAgainDuringACatchUp (issue 17, item 3): a room left and
// joined again while a catch-up reads it has its new subscription
// confirmed before the stream goes live. (A catch-up that remembered the
// room as confirmed went live while the new SUBSCRIBE was in flight, and
// lost what was published on the room meanwhile.)
func TestLeaveAndJoinAgainDuringACatchUp(t *testing.T) {
	r, h := newOrderedRedis(t)
	s, out := liveStream(t, r, h)
	r.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "lobby"})
	r.deliver()
	r.on("read", func() {
		r.control(wire.Control{Op: wire.OpLeave, User: "alice", Room: "lobby"})
		r.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "lobby"})
		r.deliver() // the feed applies both while the page is read
	})
	drain(t, h, s, out)
	r.publish("room:lobby", "after-join")
	r.deliver()
	drain(t, h, s, out)
	checkDelivery(t, out.out, "after-join", false)
}

// TestJoinWhileItsSubscriptionIsWritten (issue 17, item 4): a pass of
// catch-up that runs while a join's SUBSCRIBE is being written does not
// let the stream go live before that subscription is confirmed. (The join
// woke the writer before attaching the channel; a pass in between went
// live, and what the room carried before the subscription took effect
// was lost.)
func TestJoinWhileItsSubscriptionIsWritten(t *testing.T) {
	r, h := newOrderedRedis(t)
	s, out := liveStream(t, r, h)
	entered, release := make(chan struct{}), make(chan struct{})
	r.on("subscribe", func() { close(entered); <-release })
	r.syncs = make(chan struct{}, 1)
	joined := make(chan struct{})
	go func() {
		defer close(joined)
		r.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "lobby"})
		r.deliver() // blocks in the SUBSCRIBE until released
	}()
	<-entered
	passes := make(chan string, 1)
	go func() {
		passes <- h.catchUp(context.Background(), s, out)
	}()
	<-r.syncs // a pass has begun while the SUBSCRIBE is being written
	close(release)
	<-joined
	if why := <-passes; why != "" {
		t.Fatal(why)
	}
	r.publish("room:lobby", "after-join")
	r.deliver()
	drain(t, h, s, out)
	checkDelivery(t, out.out, "after-join", false)
}
