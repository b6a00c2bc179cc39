package store_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/stream"
)

// BenchmarkPresenceRoom is GET /presence's read for rooms of 10, 10,000
// and 100,000 members, on a real redis-server over loopback: the counts
// alone (limit=0), and a page of 100 users from the middle of the room.
// go test -run XXX -bench PresenceRoom -benchtime 2000x ./store/
func BenchmarkPresenceRoom(b *testing.B) {
	rdb := redistest.Start(b).Client()
	p := store.NewPresence(rdb, "sse:")
	ctx := context.Background()
	for _, members := range []int{10, 10_000, 100_000} {
		room := fmt.Sprintf("r%d", members)
		for from := 0; from < members; from += 5000 {
			var batch stream.PresenceBatch
			for i := from; i < min(from+5000, members); i++ {
				batch.Shares = append(batch.Shares, stream.PresenceShare{Room: room, User: fmt.Sprintf("u%07d", i), Streams: 1})
			}
			if err := p.Write(ctx, batch); err != nil {
				b.Fatal(err)
			}
		}
		for _, q := range []struct {
			name  string
			after string
			limit int
		}{
			{"counts", "", 0},
			{"page100", fmt.Sprintf("u%07d", members/2), 100},
		} {
			b.Run(fmt.Sprintf("members=%d/%s", members, q.name), func(b *testing.B) {
				for b.Loop() {
					r, err := p.Room(ctx, room, q.after, q.limit)
					if err != nil || r.Count.Users != int64(members) {
						b.Fatalf("%d users, %v", r.Count.Users, err)
					}
				}
			})
		}
	}
}

// BenchmarkPresenceWrite is one flush of an instance: n users arriving in
// one room (their room share and their user share), written in one batch.
// go test -run XXX -bench PresenceWrite -benchtime 200x ./store/
func BenchmarkPresenceWrite(b *testing.B) {
	rdb := redistest.Start(b).Client()
	p := store.NewPresence(rdb, "sse:")
	ctx := context.Background()
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("users=%d", n), func(b *testing.B) {
			streams := 0
			for b.Loop() {
				streams = 1 - streams // arrive, then leave, alternately
				var batch stream.PresenceBatch
				for i := range n {
					u := fmt.Sprintf("u%d", i)
					batch.Shares = append(batch.Shares, stream.PresenceShare{Room: "lobby", User: u, Streams: streams}, stream.PresenceShare{User: u, Streams: streams})
				}
				if err := p.Write(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/user")
		})
	}
}
