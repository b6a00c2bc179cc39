package stream

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/wire"
)

// A resume from an id ahead of Redis (Redis came back from an older
// snapshot, or a Sentinel failover to a lagging replica): the pass writes
// a reset at its bound B. An event published after B, and delivered while
// the pass syncs, has an id <= the stream's old id F: resetTo forgets it
// as "written", and the pass goes live: the event is lost silently.
func TestFutureResetKeepsNewEvents(t *testing.T) {
	ctx := context.Background()
	r, h := newOrderedRedis(t)
	r.publish("user:alice", "old")
	future := wire.Cursor{Epoch: "e", MS: r.seq + 50} // the client's id: Redis lost what led there
	s, err := h.Open(ctx, Spec{User: "alice", Session: "t", Resume: future.String()})
	if err != nil {
		t.Fatal(err)
	}
	r.on("sync", func() { r.publish("user:alice", "after-bound") })
	out := &frames{}
	if why := h.opening(ctx, s, out); why != "" {
		t.Fatal(why)
	}
	r.deliver()
	drain(t, h, s, out)
	all := strings.Join(out.out, "")
	if strings.Count(all, "event: reset\n") != 1 {
		t.Errorf("want one reset: %q", all)
	}
	if n := strings.Count(all, "data: after-bound\n"); n != 1 {
		t.Errorf("event published after the reset's position written %d times, want once: %q", n, all)
	}
}

// The same, with a second pass (a join during the first): resetTo moved
// the stream's id but not the catch-up's floor, so the second pass's
// horizon is the abandoned future id again: a second reset, and what was
// published between the two is dropped.
func TestFutureResetOnceAcrossPasses(t *testing.T) {
	ctx := context.Background()
	r, h := newOrderedRedis(t)
	r.publish("user:alice", "old")
	future := wire.Cursor{Epoch: "e", MS: r.seq + 50}
	s, err := h.Open(ctx, Spec{User: "alice", Session: "t", Resume: future.String()})
	if err != nil {
		t.Fatal(err)
	}
	r.on("sync", func() {
		r.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "lobby"}) // another pass
		r.on("bound", func() { r.publish("user:alice", "between-passes") })
	})
	out := &frames{}
	if why := h.opening(ctx, s, out); why != "" {
		t.Fatal(why)
	}
	r.deliver()
	drain(t, h, s, out)
	all := strings.Join(out.out, "")
	if n := strings.Count(all, "event: reset\n"); n != 1 {
		t.Errorf("%d resets, want one: %q", n, all)
	}
	if n := strings.Count(all, "data: between-passes\n"); n != 1 {
		t.Errorf("event published after the first reset written %d times, want once: %q", n, all)
	}
}

// epochRedis is orderedRedis whose history resets a read from an id of
// another epoch, as the real Read does.
type epochRedis struct{ *orderedRedis }

func (r epochRedis) Read(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, n int) (wire.Page, error) {
	for _, a := range after {
		if a.Epoch != "e" {
			r.hook("read")
			r.mu.Lock()
			defer r.mu.Unlock()
			if until.IsZero() {
				until = r.cursor()
			}
			return wire.Page{Position: until, Reset: wire.ResetEpoch}, nil
		}
	}
	return r.orderedRedis.Read(ctx, channels, after, until, n)
}

// A resume from before Redis lost its data, with a second pass (the feed's
// recovery offers the same reset to the catching stream meanwhile): the
// first pass resets to the new epoch, but the catch-up's floor is still the
// old id, Max of the two gives the old one back, and the second pass
// resets again.
func TestEpochResetOnce(t *testing.T) {
	ctx := context.Background()
	r0, _ := newOrderedRedis(t)
	r := epochRedis{r0}
	h := NewHub(r, testOpts, r0.h.log, NewMetrics(prometheus.NewRegistry()))
	r0.h = h
	_ = h.Prime(ctx)
	_ = h.SubscribeControl()
	h.recoverLog(ctx, r)
	old := wire.Cursor{Epoch: "old", MS: 7}
	s, err := h.Open(ctx, Spec{User: "alice", Session: "t", Resume: old.String()})
	if err != nil {
		t.Fatal(err)
	}
	r0.on("sync", func() { h.resetAll(r0.cursor(), wire.ResetEpoch) }) // the feed's recovery, meanwhile
	out := &frames{}
	if why := h.opening(ctx, s, out); why != "" {
		t.Fatal(why)
	}
	drain(t, h, s, out)
	all := strings.Join(out.out, "")
	if n := strings.Count(all, "event: reset\n"); n != 1 {
		t.Errorf("%d resets, want one: %q", n, all)
	}
}

// Once held overflowed with durable events, they stay held (nothing
// drains held before goLive): every later durable event on the stream
// overflows again, skips and bumps gen, so no pass can go live while
// events keep coming, at one per pass: the writer loops on Redis.
func TestHeldOverflowGoesLive(t *testing.T) {
	ctx := context.Background()
	r, h := newOrderedRedis(t)
	s, out := liveStream(t, r, h)
	r.control(wire.Control{Op: wire.OpJoin, User: "alice", Room: "lobby"})
	r.deliver()
	passes := 0
	var each func()
	each = func() {
		passes++
		if passes == 1 {
			for range testOpts.QueueEvents + 1 {
				r.publish("user:alice", "burst")
			}
		} else if passes < 50 {
			r.publish("user:alice", "steady") // one event per pass
		}
		r.on("bound", each)
	}
	r.on("bound", each)
	if why := h.catchUp(ctx, s, out); why != "" {
		t.Fatal(why)
	}
	r.on("bound", nil)
	if passes > 5 {
		t.Errorf("%d passes of catch-up for one join and one event per pass", passes)
	}
	r.deliver()
	drain(t, h, s, out)
	all := strings.Join(out.out, "")
	if b, st := strings.Count(all, "data: burst\n"), strings.Count(all, "data: steady\n"); b != testOpts.QueueEvents+1 || st != passes-1 && st != 48 {
		t.Errorf("burst %d, steady %d (passes %d): %q", b, st, passes, all)
	}
	var last wire.Cursor
	for _, line := range strings.Split(all, "\n") {
		if id, ok := strings.CutPrefix(line, "id: "); ok {
			c, _ := wire.ParseCursor(id)
			if !last.Before(c) && !last.IsZero() {
				t.Errorf("id %s after %s", c, last)
			}
			last = c
		}
	}
}
