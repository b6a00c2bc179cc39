package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// Table-driven tests of store.Cluster's hardest logic (positions, vector
// ids, reads, the gap recovery's order), each table on one real
// three-master Redis Cluster shared by its cases, every case on channels
// of its own. This file holds what they share (a running Cluster,
// publishing, cursors to start from) and the gap recovery's order;
// positions and AfterGrant are in cluster_position_unit_test.go, reads in
// cluster_read_unit_test.go.

const (
	unitParts = 16 // CLUSTER_PARTITIONS's default
	// unitMaxlen is above a read batch (256) and a page's bound of events
	// (1000), so that the paging cases are not trimmed.
	unitMaxlen = 1200
	unitTTL    = time.Hour
)

// startUnitCluster starts a three-master cluster and a running Cluster of
// unitParts partitions on it, both until the test ends.
func startUnitCluster(t *testing.T) (*redis.ClusterClient, *store.Cluster) {
	t.Helper()
	cc := redistest.StartCluster(t, 3).Client()
	c := newUnitCluster(t, cc, unitParts, unitMaxlen)
	runUnitCluster(t, c)
	return cc, c
}

// newUnitCluster is the one place the unit tests and benchmarks make a
// store.Cluster: parts partitions on cc with the prefix "sse:", maxlen
// events a channel kept for unitTTL, its config written into every
// partition. (Adapt here when NewCluster's signature changes.)
func newUnitCluster(tb testing.TB, cc *redis.ClusterClient, parts, maxlen int) *store.Cluster {
	tb.Helper()
	c := store.NewCluster(cc, store.ClusterOptions{
		Prefix: "sse:", Partitions: parts, MaxLen: maxlen, MaxEventBytes: 1 << 16, TTL: unitTTL, PingEvery: time.Second,
		Log: slog.New(slog.DiscardHandler), Metrics: store.NewFeedMetrics(prometheus.NewRegistry()),
	})
	if err := c.Configure(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return c
}

// unitFeed records what a running Cluster hands its hub.
type unitFeed struct {
	mu        sync.Mutex
	events    []unitEvent // durable events with a body, in delivery order
	recovered int         // the sum of connected's counts
	retries   int
	changed   chan struct{} // poked on every change
}

type unitEvent struct {
	channel string
	m       wire.Message
}

// runUnitCluster runs c (its feeds: Position needs them) until the test
// ends.
func runUnitCluster(tb testing.TB, c *store.Cluster) *unitFeed {
	f := &unitFeed{changed: make(chan struct{}, 1)}
	poke := func() {
		select {
		case f.changed <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		runCluster(ctx, c, func(channel string, m wire.Message, err error) {
			if err != nil || !m.Durable() || len(m.Body) == 0 {
				return
			}
			f.mu.Lock()
			f.events = append(f.events, unitEvent{channel, m})
			f.mu.Unlock()
			poke()
		}, func(_ context.Context, n int) {
			f.mu.Lock()
			f.recovered += n
			f.mu.Unlock()
			poke()
		}, func() {
			f.mu.Lock()
			f.retries++
			f.mu.Unlock()
			poke()
		})
	})
	tb.Cleanup(func() { cancel(); wg.Wait() })
	return f
}

// await waits until cond (called with f.mu held) holds, for up to 15 s.
func (f *unitFeed) await(tb testing.TB, what string, cond func() bool) bool {
	tb.Helper()
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		ok := cond()
		f.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-f.changed:
		case <-deadline.C:
			tb.Errorf("timed out waiting for %s", what)
			return false
		}
	}
}

// channelsIn returns n channel names prefix<i> of partition k.
func channelsIn(k, parts, n int, prefix string) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		if ch := prefix + strconv.Itoa(i); wire.Partition(ch, parts) == k {
			out = append(out, ch)
		}
	}
	return out
}

// pub is one durable event published: its channel, envelope and position
// in its partition.
type pub struct {
	ch, body string
	pos      uint64
}

// publishRaw publishes bodies[i] on chans[i], as a backend's EVALSHA of
// the cluster publish script, in one pipeline (in order within each
// partition), and returns the events with their positions.
func publishRaw(tb testing.TB, cc *redis.ClusterClient, parts int, chans, bodies []string) []pub {
	tb.Helper()
	ctx := context.Background()
	script := redis.NewScript(store.ClusterPublishScript)
	if err := script.Load(ctx, cc).Err(); err != nil {
		tb.Fatal(err)
	}
	cmds := make([]*redis.Cmd, len(chans))
	if _, err := cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, ch := range chans {
			tag := "sse:{p" + strconv.Itoa(wire.Partition(ch, parts)) + "}:"
			cmds[i] = script.EvalSha(ctx, p, []string{tag + ch + ":history"}, tag+ch, bodies[i], parts)
		}
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	out := make([]pub, len(chans))
	for i, cmd := range cmds {
		s, err := cmd.Text()
		if err != nil {
			tb.Fatal(err)
		}
		id, err := wire.ParseCursor(s) // "<epoch>:<n>-<ms>"
		if err != nil {
			tb.Fatalf("publish reply %q: %v", s, err)
		}
		out[i] = pub{chans[i], bodies[i], id.MS}
	}
	return out
}

// publishEach publishes n events on each of chans, round robin, with
// envelopes of about size bytes (at least the JSON around the name).
func publishEach(tb testing.TB, cc *redis.ClusterClient, chans []string, n, size int) []pub {
	tb.Helper()
	var cs, bodies []string
	for j := range n {
		for _, ch := range chans {
			b := fmt.Sprintf(`{"data":"%s/%d`, ch, j)
			if pad := size - len(b) - 2; pad > 0 {
				b += strings.Repeat("x", pad)
			}
			cs, bodies = append(cs, ch), append(bodies, b+`"}`)
		}
	}
	return publishRaw(tb, cc, unitParts, cs, bodies)
}

func position(tb testing.TB, c *store.Cluster) wire.Cursor {
	tb.Helper()
	p, err := c.Position(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	if p.Vector() == nil {
		tb.Fatalf("Position %v is not a vector", p)
	}
	return p
}

// edit returns a copy of base's vector, changed by f, as a position.
func edit(base wire.Cursor, f func(v *wire.Vector)) wire.Cursor {
	v := base.Vector()
	w := &wire.Vector{Tag: v.Tag, Pos: slices.Clone(v.Pos), Own: -1, Time: v.Time}
	f(w)
	return wire.VectorCursor(w)
}

// at is base with partition k at n.
func at(base wire.Cursor, k int, n uint64) wire.Cursor {
	return edit(base, func(v *wire.Vector) { v.Pos[k] = n })
}

func repeat(c wire.Cursor, n int) []wire.Cursor {
	out := make([]wire.Cursor, n)
	for i := range out {
		out[i] = c
	}
	return out
}

// TestClusterRecoveryOrderUnit: events published while a partition's
// connection was down (its node cut every pub/sub client and ran the
// publishes in the same MULTI, so none of them went out live) are
// delivered by the gap recovery once the connection is made again: each
// once, in position order, with ids of their own position, before an
// event published afterwards; and connected is told how many.
func TestClusterRecoveryOrderUnit(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	c := newUnitCluster(t, cc, unitParts, unitMaxlen)
	f := runUnitCluster(t, c)
	ctx := context.Background()
	script := redis.NewScript(store.ClusterPublishScript)
	if err := script.Load(ctx, cc).Err(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		part     int
		channels int // of the partition, round robin
		gap      int // events published while it was cut off
	}{
		{"one event", 3, 1, 1},
		{"two channels interleaved", 7, 2, 6},
		{"more than a read batch", 11, 1, 300},
		{"three channels, more than a batch each", 0, 3, 3 * 270},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			chans := channelsIn(tc.part, unitParts, tc.channels, fmt.Sprintf("recover/%d/", i))
			if err := c.Subscribe(chans...); err != nil {
				t.Fatal(err)
			}
			defer c.Unsubscribe(chans...)
			// The partition's connection may still be being made again
			// after an earlier case's cut (ErrFeedLost at once): the feed
			// tells nothing of its redial but this.
			for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				err := c.Sync(ctx)
				if err == nil {
					break
				}
				if !errors.Is(err, store.ErrFeedLost) || time.Now().After(deadline) {
					t.Fatal(err)
				}
			}
			f.mu.Lock()
			from, recovered0 := len(f.events), f.recovered
			f.mu.Unlock()
			tag := "sse:{p" + strconv.Itoa(tc.part) + "}:"
			first, err := c.Publish(ctx, chans[0], []byte(`{"data":"before"}`))
			if err != nil {
				t.Fatal(err)
			}
			if !f.await(t, "the event before the gap", func() bool { return len(f.events) > from }) {
				return
			}
			slot, err := cc.ClusterKeySlot(ctx, tag+"cursor").Result()
			if err != nil {
				t.Fatal(err)
			}
			node := rc.NodeOfSlot(int(slot)).Client()
			var cmds []*redis.Cmd
			want := []pub{{chans[0], `{"data":"before"}`, first.MS}}
			if _, err := node.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub")
				for j := range tc.gap {
					ch := chans[j%len(chans)]
					body := fmt.Sprintf(`{"data":"gap/%d"}`, j)
					want = append(want, pub{ch, body, 0})
					cmds = append(cmds, script.EvalSha(ctx, p, []string{tag + ch + ":history"}, tag+ch, body, unitParts))
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			for j, cmd := range cmds {
				s, _ := cmd.Text()
				id, err := wire.ParseCursor(s)
				if err != nil {
					t.Fatalf("publish %d: %q %v (%v)", j, s, err, cmd.Err())
				}
				want[j+1].pos = id.MS
			}
			// At once, live or recovered as it happens: after the gap's.
			last, err := c.Publish(ctx, chans[0], []byte(`{"data":"after"}`))
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, pub{chans[0], `{"data":"after"}`, last.MS})
			if !f.await(t, fmt.Sprintf("%d events and the recovery", len(want)), func() bool {
				return len(f.events)-from >= len(want) && f.recovered-recovered0 >= tc.gap
			}) {
				return
			}
			f.mu.Lock()
			events := slices.Clone(f.events[from:])
			recovered := f.recovered - recovered0
			f.mu.Unlock()
			var got []pub
			for _, e := range events {
				v := e.m.Cursor.Vector()
				if v == nil || v.Own != tc.part {
					t.Fatalf("%s on %s: id %v, not of partition %d", e.m.Body, e.channel, e.m.Cursor, tc.part)
				}
				got = append(got, pub{e.channel, string(e.m.Body), v.Pos[tc.part]})
			}
			if !slices.Equal(got, want) {
				t.Errorf("delivered %d events, want %d:\n got %v\nwant %v", len(got), len(want), short(got), short(want))
			}
			// The event after the gap was recovered too if it was published
			// before the connection was made again.
			if recovered != tc.gap && recovered != tc.gap+1 {
				t.Errorf("connected was told of %d events recovered, want %d (or %d)", recovered, tc.gap, tc.gap+1)
			}
		})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.retries > 0 {
		t.Errorf("streams were told to reconnect %d times; nothing was lost", f.retries)
	}
}
