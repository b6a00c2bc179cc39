package wire_test

import (
	"fmt"
	"testing"

	"github.com/ssebridge/ssebridge/wire"
)

// Benchmarks of the wire hot paths: what every published message costs
// once (its framing) and what every durable message costs on the way in
// (its parse), and the cluster ids every durable event and every resume
// write or read.

const benchMarker = "0123456789abcdef0123456789abcdef"

var benchEnvelope = []byte(`{"event":"chat","data":{"from":"bob","text":"hello, everyone"}}`)

// benchVector is an id of a deployment of parts partitions as it looks in
// practice: every partition of the newest's term a few thousand events
// behind it, a quarter in other terms (other nodes).
func benchVector(parts int) *wire.Vector {
	v := &wire.Vector{Tag: "1k2j3h4", Pos: make([]uint64, parts), Own: 0, Time: 1765000000000}
	for k := range v.Pos {
		v.Pos[k] = 1000<<32 + 1000000 - uint64(k*37)
		if k%4 == 3 {
			v.Pos[k] = 999<<32 + uint64(k*1000)
		}
	}
	return v
}

func BenchmarkEncodeMessage(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := wire.EncodeMessage(benchEnvelope, 1<<16); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeDurable(b *testing.B) {
	for _, tc := range []struct {
		name string
		id   wire.Cursor
	}{
		{"single", wire.Cursor{Epoch: "e1k2j3h4", MS: 1765000000000, N: 42}},
		{"vector16", wire.VectorCursor(benchVector(16))},
		{"vector256", wire.VectorCursor(benchVector(256))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := wire.EncodeDurable(tc.id, benchEnvelope, 1<<16); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDurableFrame(b *testing.B) {
	c := wire.Cursor{Epoch: "e1k2j3h4", MS: 1765000000000, N: 42}
	b.ReportAllocs()
	for b.Loop() {
		_ = wire.DurableFrame(benchMarker, c, benchEnvelope)
	}
}

func BenchmarkParseMessage(b *testing.B) {
	durable := wire.DurableFrame(benchMarker, wire.Cursor{Epoch: "e1k2j3h4", MS: 1765000000000, N: 42}, benchEnvelope)
	for _, tc := range []struct {
		name    string
		payload []byte
	}{{"durable", durable}, {"live", benchEnvelope}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := wire.ParseMessage(tc.payload, benchMarker); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkParseEnvelope(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := wire.ParseEnvelope(benchEnvelope); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseCursor(b *testing.B) {
	s := wire.Cursor{Epoch: "e1k2j3h4", MS: 1765000000000, N: 42}.String()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := wire.ParseCursor(s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVectorString(b *testing.B) {
	for _, parts := range []int{16, 256} {
		v := benchVector(parts)
		b.Run(fmt.Sprint(parts), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = v.String()
			}
		})
	}
}

func BenchmarkParseVector(b *testing.B) {
	for _, parts := range []int{16, 256} {
		s := benchVector(parts).String()
		b.Run(fmt.Sprint(parts), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := wire.ParseVector(s, parts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPartition(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = wire.Partition("room:lobby-of-the-hotel", 16)
	}
}
