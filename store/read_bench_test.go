package store_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// Benchmarks of a history read, a resume's page, against a real
// redis-server on loopback: one Redis (read.lua, one script call) and a
// three-master Redis Cluster (a pipeline per partition).

// needRedis skips a benchmark when a Redis tool is missing, outside CI
// only: under CI (CI set) the benchmark fails as the tests do.
func needRedis(b *testing.B, tools ...string) {
	b.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil && os.Getenv("CI") == "" {
			b.Skipf("%s is not installed (apt-get install -y redis-server redis-tools)", tool)
		}
	}
}

// BenchmarkHistoryRead is a page of 100 events of one channel (about 64
// bytes each) on one Redis: bounded (until fixed, as every page after a
// resume's first), first (until zero: the script reads the position too),
// and empty (a resume with nothing to read).
func BenchmarkHistoryRead(b *testing.B) {
	needRedis(b, "redis-server")
	ctx := context.Background()
	h := store.NewHistory(redistest.Start(b).Client(), "sse:", 1000, 1<<16, time.Hour)
	if _, err := h.Configure(ctx); err != nil {
		b.Fatal(err)
	}
	const ch = "room:bench"
	start, err := h.Position(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for i := range 100 {
		if _, err := h.Publish(ctx, ch, fmt.Appendf(nil, `{"event":"chat","data":{"from":"bob","n":%03d,"text":"hello!"}}`, i)); err != nil {
			b.Fatal(err)
		}
	}
	until, err := h.Position(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name         string
		after, until wire.Cursor
		events       int
	}{
		{"bounded/100events", start, until, 100},
		{"first/100events", start, wire.Cursor{}, 100},
		{"empty", until, until, 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			// Once untimed: the first read of a process loads the script
			// (NOSCRIPT) and warms the connection pool.
			if _, err := h.Read(ctx, []string{ch}, []wire.Cursor{tc.after}, tc.until, 1<<20); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				p, err := h.Read(ctx, []string{ch}, []wire.Cursor{tc.after}, tc.until, 1<<20)
				if err != nil || p.Reset != "" || len(p.Events) != tc.events {
					b.Fatalf("%v, reset %q, %d events", err, p.Reset, len(p.Events))
				}
			}
		})
	}
}

// BenchmarkClusterRead is BenchmarkHistoryRead on a three-master Redis
// Cluster of 16 partitions: 100 events of one channel, 100 events of four
// channels in four partitions (25 each), the first page (until zero: a
// round of Position, which reads every partition's position and pings
// every partition's connection), and an empty read.
func BenchmarkClusterRead(b *testing.B) {
	needRedis(b, "redis-server", "redis-cli")
	rc := redistest.StartCluster(b, 3)
	cc := rc.Client()
	c := newUnitCluster(b, cc, unitParts, unitMaxlen)
	runUnitCluster(b, c)
	ctx := context.Background()
	one := channelsIn(3, unitParts, 1, "bench/one/")
	var four []string
	for _, k := range []int{1, 6, 10, 15} {
		four = append(four, channelsIn(k, unitParts, 1, "bench/four/")...)
	}
	start := position(b, c)
	publishEach(b, cc, one, 100, 64)
	publishEach(b, cc, four, 25, 64)
	until := position(b, c)
	for _, tc := range []struct {
		name         string
		channels     []string
		after, until wire.Cursor
		events       int
	}{
		{"bounded/100events", one, start, until, 100},
		{"bounded/4partitions", four, start, until, 100},
		{"first/100events", one, start, wire.Cursor{}, 100},
		{"empty", one, until, until, 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			after := repeat(tc.after, len(tc.channels))
			if _, err := c.Read(ctx, tc.channels, after, tc.until, 1<<20); err != nil { // untimed, as above
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				p, err := c.Read(ctx, tc.channels, after, tc.until, 1<<20)
				if err != nil || p.Reset != "" || len(p.Events) != tc.events {
					b.Fatalf("%v, reset %q, %d events", err, p.Reset, len(p.Events))
				}
			}
		})
	}
}
