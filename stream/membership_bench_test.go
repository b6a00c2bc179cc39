package stream

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkAttachDetach is a join and a leave of one room by one stream
// (attach then detach), the hub's membership change: with the room's
// first stream (the feed is told to subscribe and unsubscribe: here a
// recorder, no Redis), with the room held by another stream (no feed
// command), and with the room held by 1,000 streams (a map set).
func BenchmarkAttachDetach(b *testing.B) {
	for _, others := range []int{0, 1, 1000} {
		b.Run(fmt.Sprint(others, "others"), func(b *testing.B) {
			opts := testOpts
			opts.MaxStreams, opts.MaxStreamsPerUser = others+1, others+1
			h, cmds := newTestHub(b, opts)
			open := func(i int) *Stream {
				s, err := h.Open(b.Context(), Spec{User: fmt.Sprint("u", i), Session: fmt.Sprint("t", i)})
				if err != nil {
					b.Fatal(err)
				}
				return s
			}
			const room = "room:bench"
			for i := range others {
				if err := h.attach(open(i), room); err != nil {
					b.Fatal(err)
				}
			}
			s := open(others)
			count := func() int {
				cmds.mu.Lock()
				defer cmds.mu.Unlock()
				return cmds.n
			}
			before := count()
			b.ReportAllocs()
			for b.Loop() {
				if err := h.attach(s, room); err != nil {
					b.Fatal(err)
				}
				if !h.detach(s, room) {
					b.Fatal("detach: the stream did not have the room")
				}
			}
			if n := count() - before; others == 0 && n == 0 || others > 0 && n != 0 {
				b.Fatalf("%d feed commands with %d other streams", n, others)
			}
		})
	}
}

// BenchmarkAttachDetachParallel is BenchmarkAttachDetach's first-stream
// case on every CPU, each goroutine with a stream and rooms of its own:
// the stripes and shards that keep changes of different channels apart.
func BenchmarkAttachDetachParallel(b *testing.B) {
	opts := testOpts
	opts.MaxStreams, opts.MaxStreamsPerUser = 1<<16, 1<<16
	h, _ := newTestHub(b, opts)
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(1)
		s, err := h.Open(b.Context(), Spec{User: fmt.Sprint("u", i), Session: fmt.Sprint("t", i)})
		if err != nil {
			b.Error(err)
			return
		}
		rooms := make([]string, 64)
		for j := range rooms {
			rooms[j] = fmt.Sprintf("room:%d-%d", i, j)
		}
		for j := 0; pb.Next(); j++ {
			r := rooms[j%len(rooms)]
			if err := h.attach(s, r); err != nil {
				b.Error(err)
				return
			}
			h.detach(s, r)
		}
	})
}
