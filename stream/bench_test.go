package stream

import (
	"fmt"
	"io"
	"net"
	"testing"

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
				s.startAt(pos)
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
