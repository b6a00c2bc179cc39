package stream

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// members lists a set's streams.
func (set streamSet) members() []*Stream {
	var out []*Stream
	if set.one != nil {
		out = append(out, set.one)
	}
	for s := range set.many {
		out = append(out, s)
	}
	return out
}

// TestStreamSet: a set holds its one stream inline, grows into a map at a
// second and goes back to inline when one is left.
func TestStreamSet(t *testing.T) {
	a, b, c := &Stream{User: "a"}, &Stream{User: "b"}, &Stream{User: "c"}
	var set streamSet
	check := func(want ...*Stream) {
		t.Helper()
		got := set.members()
		if len(got) != len(want) {
			t.Fatalf("set holds %d streams, want %d", len(got), len(want))
		}
		for _, s := range want {
			if !slices.Contains(got, s) {
				t.Fatalf("set lacks %s", s.User)
			}
		}
		if len(want) == 1 && (set.one == nil || set.many != nil) {
			t.Fatal("a set of one stream holds a map")
		}
	}
	set.add(a)
	check(a)
	if set.remove(b) {
		t.Fatal("removing a stream it does not hold emptied the set")
	}
	check(a)
	set.add(b)
	set.add(c)
	check(a, b, c)
	if set.remove(a) {
		t.Fatal("empty with two streams left")
	}
	check(b, c)
	set.remove(b)
	check(c)
	set.add(a)
	check(a, c)
	set.remove(c)
	if !set.remove(a) {
		t.Fatal("not empty with no stream left")
	}
	check()
}

// TestUserChannelSets: a user's channel reaches each of the user's streams
// once as they open and close, and is unsubscribed with the last.
func TestUserChannelSets(t *testing.T) {
	h, cmds := newTestHub(t, testOpts)
	user := wire.UserChannel("u")
	held := func(s *Stream) int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.catching.held) // no writer: a stream holds what it gets
	}
	var open []*Stream
	for n := range 3 {
		s, err := h.Open(context.Background(), Spec{User: "u", Session: "k"})
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, s)
		h.Publish(user, live(`{"n":1}`), nil)
		for i, s := range open {
			if got, want := held(s), n+1-i; got != want {
				t.Fatalf("stream %d of %d holds %d events, want %d", i, len(open), got, want)
			}
		}
	}
	for len(open) > 0 {
		h.Close(open[0], ReasonClient)
		open = open[1:]
		before := make([]int, len(open))
		for i, s := range open {
			before[i] = held(s)
		}
		h.Publish(user, live(`{"n":2}`), nil)
		for i, s := range open {
			if held(s) != before[i]+1 {
				t.Fatalf("stream %d of %d: %d events held, want %d", i, len(open), held(s), before[i]+1)
			}
		}
	}
	if left := cmds.subscribed(); len(left) != 0 {
		t.Fatalf("subscribed with no stream: %v", left)
	}
	if len(h.users) != 0 || len(h.sessions) != 0 || len(h.allChannels()) != 0 {
		t.Fatal("the hub still knows closed streams")
	}
}

// TestUnsubscribeDelay: with UnsubscribeDelay, a channel left without
// streams stays subscribed, a stream back meanwhile costs no command, and
// the sweep unsubscribes what stayed empty past the delay, in one call.
func TestUnsubscribeDelay(t *testing.T) {
	opts := testOpts
	opts.UnsubscribeDelay = time.Minute
	h, cmds := newTestHub(t, opts)
	open := func(user string) *Stream {
		s, err := h.Open(context.Background(), Spec{User: user, Session: user})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	alice := open("alice")
	h.Close(alice, "")
	if !slices.Contains(cmds.subscribed(), wire.UserChannel("alice")) {
		t.Fatal("alice's channel was unsubscribed at once")
	}
	if got := h.allChannels(); len(got) != 0 {
		t.Fatalf("channels with streams: %v, want none", got)
	}
	before := cmds.count()
	alice = open("alice") // back within the delay
	if n := cmds.count() - before; n != 0 {
		t.Fatalf("a stream back within the delay cost %d commands", n)
	}
	bob := open("bob")
	h.Close(bob, "")
	h.Close(alice, "")

	now := time.Now()
	h.sweepIdle(now) // not yet due
	if got := len(cmds.subscribed()); got != 3 {
		t.Fatalf("%d channels subscribed before the delay is over, want 3", got)
	}
	h.sweepIdle(now.Add(2 * time.Minute))
	if got := cmds.subscribed(); len(got) != 0 {
		t.Fatalf("subscribed after the sweep: %v", got)
	}
	carol := open("alice") // subscribed again from scratch
	if !slices.Contains(cmds.subscribed(), wire.UserChannel("alice")) {
		t.Fatal("a channel swept away was not subscribed again")
	}
	h.Close(carol, "")
}

// TestUnsubscribeDelayLeave: a room left by control lingers like one
// whose last stream closed, and the sweep unsubscribes it.
func TestUnsubscribeDelayLeave(t *testing.T) {
	opts := testOpts
	opts.UnsubscribeDelay = time.Minute
	h, cmds := newTestHub(t, opts)
	s, err := h.Open(context.Background(), Spec{User: "bob", Session: "b", Rooms: []string{"lobby"}})
	if err != nil {
		t.Fatal(err)
	}
	h.leave(s, wire.RoomChannel("lobby"))
	h.sweepIdle(time.Now().Add(2 * time.Minute))
	if slices.Contains(cmds.subscribed(), wire.RoomChannel("lobby")) {
		t.Fatalf("lobby still subscribed after leave and sweep: %v", cmds.subscribed())
	}
}

// TestSweepPastChannelEmptiedAgain: an entry of the idle list whose
// channel was emptied again since is passed over, not waited on: a
// channel that keeps emptying (a tab that reconnects every few seconds)
// does not keep the channels behind it subscribed. (Found by review: the
// sweep stopped at it, and every channel behind it stayed subscribed.)
func TestSweepPastChannelEmptiedAgain(t *testing.T) {
	opts := testOpts
	opts.UnsubscribeDelay = time.Minute
	h, cmds := newTestHub(t, opts)
	cycle := func(user string) {
		s, err := h.Open(context.Background(), Spec{User: user, Session: user})
		if err != nil {
			t.Fatal(err)
		}
		h.Close(s, "")
	}
	cycle("flappy")
	cycle("bob")
	h.members.idleMu.Lock()
	bobAt := h.members.idle[len(h.members.idle)-1].at
	h.members.idleMu.Unlock()
	cycle("flappy") // emptied again, after bob
	h.sweepIdle(time.Unix(0, bobAt).Add(opts.UnsubscribeDelay))
	subs := cmds.subscribed()
	if slices.Contains(subs, wire.UserChannel("bob")) {
		t.Fatalf("bob's channel, due, is still subscribed behind flappy's: %v", subs)
	}
	if !slices.Contains(subs, wire.UserChannel("flappy")) {
		t.Fatal("flappy's channel, emptied again since, was unsubscribed before its delay")
	}
}
