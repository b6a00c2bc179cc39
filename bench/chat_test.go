package main

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestChatLayout: every stream holds two distinct rooms, the rooms'
// members say the same, the big rooms have N/10 members, the others 5–20
// (wider only where the mean falls outside), and a seed always gives the
// same layout.
func TestChatLayout(t *testing.T) {
	for _, tc := range []struct {
		n, rooms, big int
		lo, hi        int // the small rooms' bounds
	}{
		{n: 100, rooms: 10, big: 1, lo: 5, hi: 22},
		{n: 1000, rooms: 100, big: 1, lo: 5, hi: 20},
		{n: 1234, rooms: 123, big: 1, lo: 5, hi: 20},
		{n: 10000, rooms: 1000, big: 5, lo: 5, hi: 20},
		{n: 15000, rooms: 1500, big: 7, lo: 5, hi: 20},
	} {
		l, err := newChatLayout(tc.n, rand.New(rand.NewPCG(1, 2)))
		if err != nil {
			t.Fatalf("n %d: %v", tc.n, err)
		}
		if len(l.members) != tc.rooms || len(l.of) != tc.n {
			t.Fatalf("n %d: %d rooms, %d streams; want %d, %d", tc.n, len(l.members), len(l.of), tc.rooms, tc.n)
		}
		total := 0
		for j, m := range l.members {
			total += len(m)
			switch {
			case j < tc.big && len(m) != tc.n/10:
				t.Errorf("n %d: big room %d has %d members, want %d", tc.n, j, len(m), tc.n/10)
			case j >= tc.big && (len(m) < tc.lo || len(m) > tc.hi):
				t.Errorf("n %d: room %d has %d members, want %d–%d", tc.n, j, len(m), tc.lo, tc.hi)
			}
			for _, s := range m {
				if two := l.of[s]; two[0] != int32(j) && two[1] != int32(j) {
					t.Fatalf("n %d: stream %d is a member of room %d but holds %v", tc.n, s, j, two)
				}
			}
		}
		if total != 2*tc.n {
			t.Errorf("n %d: %d memberships, want %d", tc.n, total, 2*tc.n)
		}
		for s, two := range l.of {
			if two[0] == two[1] {
				t.Fatalf("n %d: stream %d holds room %d twice", tc.n, s, two[0])
			}
		}
		again, _ := newChatLayout(tc.n, rand.New(rand.NewPCG(1, 2)))
		if !slices.Equal(again.of, l.of) {
			t.Errorf("n %d: the same seed gave another layout", tc.n)
		}
	}
	if _, err := newChatLayout(chatMinStreams-1, rand.New(rand.NewPCG(1, 2))); err == nil {
		t.Errorf("n %d: no error", chatMinStreams-1)
	}
}

// TestChatPlan: the events of each kind number rate × seconds and come in
// time order, and each stream is due exactly the events on the channels it
// holds, worked out here the slow way, by channel name.
func TestChatPlan(t *testing.T) {
	for _, tc := range []struct {
		name    string
		n       int
		seconds float64
		rates   [chatKinds]float64
	}{
		{"scaled down", 1000, 2, [chatKinds]float64{100, 200, 1}},
		{"no broadcast", 200, 3, [chatKinds]float64{50, 20, 0}},
		{"fractional", 300, 2.5, [chatKinds]float64{3.3, 7, 0.5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			l, err := newChatLayout(tc.n, rng)
			if err != nil {
				t.Fatal(err)
			}
			p := newChatPlan(l, tc.seconds, tc.rates, rng)
			var count [chatKinds]int
			for seq, ev := range p.events {
				count[ev.kind]++
				if seq > 0 && ev.at < p.events[seq-1].at {
					t.Fatalf("event %d at %v before event %d at %v", seq, ev.at, seq-1, p.events[seq-1].at)
				}
				if ev.at >= time.Duration(tc.seconds*float64(time.Second)) {
					t.Fatalf("event %d at %v, past %gs", seq, ev.at, tc.seconds)
				}
			}
			for kind, rate := range tc.rates {
				want := int(rate*tc.seconds + 0.5)
				if count[kind] != want || p.published[kind] != want {
					t.Errorf("%v: %d events, published %d; want %d", chatKind(kind), count[kind], p.published[kind], want)
				}
			}
			const offset = 7
			for k := range tc.n {
				held := p.channels(k, offset)
				want := []int32{}
				for seq := range p.events {
					if slices.Contains(held, p.channel(seq, offset)) {
						want = append(want, int32(seq))
					}
				}
				if !slices.Equal(p.want[k], want) {
					t.Fatalf("stream %d (%v) is due %d events, want %d", k, held, len(p.want[k]), len(want))
				}
			}
		})
	}
}

// TestStreamIndex: with a plan, a stream's bit is the event's place among
// its own, and an event not due to it is stray; without, the bit is the
// sequence number.
func TestStreamIndex(t *testing.T) {
	planned := &stream{want: []int32{3, 9, 200}}
	bare := &stream{got: make([]uint64, 2)}
	for _, tc := range []struct {
		s    *stream
		seq  int64
		idx  int64
		due  bool
		name string
	}{
		{planned, 3, 0, true, "first due"},
		{planned, 200, 2, true, "last due"},
		{planned, 4, 0, false, "not due"},
		{planned, 1 << 40, 0, false, "past int32"},
		{bare, 127, 127, true, "by number"},
		{bare, 128, 0, false, "past the bitmap"},
	} {
		idx, due := tc.s.index(tc.seq)
		if due != tc.due || (due && idx != tc.idx) {
			t.Errorf("%s: index(%d) = %d, %v; want %d, %v", tc.name, tc.seq, idx, due, tc.idx, tc.due)
		}
	}
}
