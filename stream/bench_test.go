package stream

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// BenchmarkFanOut is the hub's cost of one broadcast event: encode once,
// queue on every stream (draining the queues, as writers would, is not
// timed).
func BenchmarkFanOut(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n, "streams"), func(b *testing.B) {
			opts := testOpts
			opts.MaxStreams, opts.MaxStreamsPerUser, opts.QueueEvents = n, n, 1024
			h, _ := newTestHub(b, opts)
			streams := make([]*Stream, n)
			pos := wire.Cursor{Epoch: "e", MS: 1}
			for i := range streams {
				s, err := h.Open(b.Context(), Spec{User: fmt.Sprint("u", i), Session: fmt.Sprint("t", i)})
				if err != nil {
					b.Fatal(err)
				}
				s.startAt(pos, pos)
				h.goLive(s, pos, 0)
				streams[i] = s
			}
			msg := wire.Message{Body: []byte(`{"event":"chat","data":{"from":"bob","text":"hello, everyone"}}`)}
			var spare [][]byte
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				h.Publish(wire.BroadcastChannel, msg, nil)
				if i%512 == 511 {
					b.StopTimer()
					for _, s := range streams {
						batch, _, _ := s.take(spare)
						spare = batch[:0]
					}
					b.StartTimer()
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/delivery")
		})
	}
}

// BenchmarkEncode is the framing of one event, done once per fan-out.
func BenchmarkEncode(b *testing.B) {
	payload := []byte(`{"event":"chat","data":{"from":"bob","text":"hello\nworld"}}`)
	for b.Loop() {
		if _, err := wire.EncodeMessage(payload, 1<<16); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriterBatch is one writev of a batch of 16 frames to a loopback
// TCP connection whose other end drains it.
func BenchmarkWriterBatch(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	frame := wire.Envelope{Event: "chat", Data: []byte(`{"from":"bob","text":"hello"}`)}.Frame()
	batch := make([][]byte, 16)
	out := &connSink{conn: conn, d: deadline{timeout: 10e9}}
	b.SetBytes(int64(16 * len(frame)))
	for b.Loop() {
		for i := range batch {
			batch[i] = frame
		}
		if err := out.write(batch); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoopFanOut is a broadcast's whole way on this machine: queued
// on every stream, written to every stream's loopback socket by the hub's
// writers — event loops ("loops") or a goroutine per stream
// ("goroutines") — and read by the clients, one after the other on the
// benchmark's goroutine every 128 events (the same cost for both writers).
// 8,000 streams at most: the process holds both ends of each within
// 20,000 open files.
func BenchmarkLoopFanOut(b *testing.B) {
	for _, writer := range []struct {
		name  string
		loops int
	}{{"loops", 0}, {"goroutines", -1}} {
		for _, n := range []int{1000, 8000} {
			b.Run(fmt.Sprint(writer.name, "/", n, "streams"), func(b *testing.B) {
				benchLoopFanOut(b, n, writer.loops)
			})
		}
	}
}

func benchLoopFanOut(b *testing.B, n, loops int) {
	opts := testOpts
	opts.MaxStreams, opts.MaxStreamsPerUser, opts.QueueEvents, opts.Loops = n, n, 1024, loops
	h, _ := newTestHub(b, opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	clients := make([]*bufio.Reader, n)
	for i := range clients {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		srv, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		s, err := h.Open(b.Context(), Spec{User: fmt.Sprint("u", i), Session: fmt.Sprint("t", i)})
		if err != nil {
			b.Fatal(err)
		}
		h.startWriter(s, srv, WriteOptions{Heartbeat: time.Hour, WriteTimeout: time.Minute})
		clients[i] = bufio.NewReaderSize(c, 64<<10)
	}
	for _, r := range clients { // every stream live before the clock starts
		if _, err := r.ReadString('}'); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Discard(2); err != nil {
			b.Fatal(err)
		}
	}
	body := []byte(`{"event":"chat","data":{"from":"bob","text":"hello, everyone"}}`)
	frame, _ := wire.EncodeMessage(body, 1<<10)
	read := func(events int) {
		for _, r := range clients {
			if _, err := r.Discard(events * len(frame)); err != nil {
				b.Fatal(err)
			}
		}
	}
	msg := wire.Message{Body: body}
	sent := 0
	for b.Loop() {
		h.Publish(wire.BroadcastChannel, msg, nil)
		if sent++; sent%128 == 0 {
			read(128)
		}
	}
	read(sent % 128)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(sent)/float64(n), "ns/delivery")
	h.Shutdown()
	for _, r := range clients {
		_, _ = r.Discard(r.Buffered())
	}
}

// BenchmarkIdleStreamHeap is the heap the hub holds for each idle live
// stream (a user of its own, one session, one room shared by all; no
// writer, so neither a loop's record nor a connection), after a collection:
//
//	go test -run '^$' -bench IdleStreamHeap -benchtime 1x ./stream
func BenchmarkIdleStreamHeap(b *testing.B) {
	const n = 15000
	opts := testOpts
	opts.MaxStreams = n
	users, sessions := make([]string, n), make([]string, n)
	for i := range n {
		users[i], sessions[i] = fmt.Sprint("u", i), fmt.Sprint("t", i)
	}
	rooms := []string{"bench"}
	pos := wire.Cursor{Epoch: "e", MS: 1}
	for b.Loop() {
		h, _ := newTestHub(b, opts)
		streams := make([]*Stream, 0, n)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := range n {
			s, err := h.Open(b.Context(), Spec{User: users[i], Session: sessions[i], Rooms: rooms, AllRooms: true})
			if err != nil {
				b.Fatal(err)
			}
			s.startAt(pos, pos) // what its opening leaves it at
			h.goLive(s, pos, 0)
			streams = append(streams, s)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/stream")
		for _, s := range streams {
			h.Close(s, ReasonClient)
		}
	}
}
