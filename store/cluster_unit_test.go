package store_test

import (
	"cmp"
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
// of its own.

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

// newUnitCluster is the one place this file's tests and benchmarks make a
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

// TestClusterPositionUnit: Position is a vector of every partition's
// position, of the deployment's tag, stamped with the time; each durable
// event (or mark) moves its own partition on by one and no other; and the
// id reads back as it was written.
func TestClusterPositionUnit(t *testing.T) {
	_, c := startUnitCluster(t)
	ctx := context.Background()
	every := map[int]int{}
	for k := range unitParts {
		every[k] = 1
	}
	cases := []struct {
		name    string
		publish map[int]int // partition -> events published there
		marks   []int       // partitions marked (a position with no event)
	}{
		{"nothing published", nil, nil},
		{"one event in partition 0", map[int]int{0: 1}, nil},
		{"three in partition 5, two in partition 15", map[int]int{5: 3, 15: 2}, nil},
		{"one in every partition", every, nil},
		{"a mark moves its partition on", nil, []int{7}},
		{"events and marks in one partition", map[int]int{3: 2}, []int{3, 3}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := position(t, c)
			t0 := uint64(time.Now().UnixMilli())
			last := map[int]uint64{} // partition -> position of its last event published
			for k, n := range tc.publish {
				ch := channelsIn(k, unitParts, 1, fmt.Sprintf("pos/%d/", i))[0]
				for j := range n {
					id, err := c.Publish(ctx, ch, fmt.Appendf(nil, `{"data":%d}`, j))
					if err != nil {
						t.Fatal(err)
					}
					if id.Vector() != nil || id.MS <= last[k] {
						t.Fatalf("publish %d on %s: %v, after position %d", j, ch, id, last[k])
					}
					last[k] = id.MS
				}
			}
			marked := map[int]int{}
			for _, k := range tc.marks {
				if err := c.PublishBareID(ctx, channelsIn(k, unitParts, 1, fmt.Sprintf("mark/%d/", i))[0]); err != nil {
					t.Fatal(err)
				}
				marked[k]++
				delete(last, k) // the mark is the partition's last position now
			}
			after := position(t, c)
			t1 := uint64(time.Now().UnixMilli())
			bv, av := before.Vector(), after.Vector()
			if av.Tag == "" || av.Tag != bv.Tag || len(av.Pos) != unitParts || av.Own != -1 {
				t.Fatalf("Position %s after %s: tag %q (was %q), %d partitions, own %d", after, before, av.Tag, bv.Tag, len(av.Pos), av.Own)
			}
			if av.Time < t0 || av.Time > t1 {
				t.Errorf("Position's time %d is not between %d and %d", av.Time, t0, t1)
			}
			moved := false
			for k := range unitParts {
				want := bv.Pos[k] + uint64(tc.publish[k]+marked[k])
				if av.Pos[k] != want {
					t.Errorf("partition %d at %d, want %d (%d before, %d events, %d marks)", k, av.Pos[k], want, bv.Pos[k], tc.publish[k], marked[k])
				}
				if n, ok := last[k]; ok && av.Pos[k] != n {
					t.Errorf("partition %d at %d, its last event published at %d", k, av.Pos[k], n)
				}
				moved = moved || want != bv.Pos[k]
			}
			if before.Before(after) != moved || after.Before(before) {
				t.Errorf("%s before %s: %v, the other way: %v; moved %v", before, after, before.Before(after), after.Before(before), moved)
			}
			back, err := c.ParseCursor(after.String())
			if err != nil || back.String() != after.String() || !slices.Equal(back.Vector().Pos, av.Pos) || back.Vector().Time != av.Time {
				t.Errorf("%s reads back as %v (%v)", after, back, err)
			}
			if _, err := wire.ParseVector(after.String(), unitParts-1); err == nil {
				t.Errorf("%s read as an id of %d partitions", after, unitParts-1)
			}
		})
	}
}

// readCase is one Read and what it must return. want is every event the
// read returns over its pages, in order (each page is read from the last
// one's last id, up to the first page's position); first is how many the
// first page has (the rest: More).
type readCase struct {
	channels []string
	after    []wire.Cursor
	until    wire.Cursor
	maxBytes int

	reset string // the first page's
	want  []pub
	first int
	// resumeEach: a read from each event's id returns exactly the events
	// after it.
	resumeEach bool
}

// TestClusterReadUnit: Cluster.Read's resets (another tag or partition
// count, a position past the partition's, an id older than HISTORY_TTL, a
// channel trimmed past it), its pages (bounded by maxBytes, by a read
// batch, by pageEvents, by until) with More, its order (partition after
// partition, by position within each) and the ids it gives the events
// (the page's start, per partition the earliest of the cursors, moved on
// by each event).
func TestClusterReadUnit(t *testing.T) {
	cc, c := startUnitCluster(t)
	ctx := context.Background()

	// newTerm has partition k's next position start a new term, as after
	// a new writer (its cursor's writer forgotten, as the gap recovery
	// does when a partition went back), and returns where the term ended.
	newTerm := func(t *testing.T, k int) uint64 {
		t.Helper()
		key := "sse:{p" + strconv.Itoa(k) + "}:cursor"
		s, err := cc.Get(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		f := strings.SplitN(s, ":", 4) // epoch, position, writer, ends
		if len(f) != 4 {
			t.Fatalf("%s is %q", key, s)
		}
		if err := cc.Set(ctx, key, f[0]+":"+f[1]+"::"+f[3], 0).Err(); err != nil {
			t.Fatal(err)
		}
		end, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return end
	}
	// inNewTerm publishes 2 events on a channel of partition 15, then 2 in
	// a new term, and returns a position before them all, the events of
	// the new term and where the earlier term ended.
	inNewTerm := func(t *testing.T, prefix string) (ch []string, start wire.Cursor, later []pub, end uint64) {
		ch = channelsIn(15, unitParts, 1, prefix)
		start = position(t, c)
		publishEach(t, cc, ch, 2, 0)
		end = newTerm(t, 15)
		later = publishEach(t, cc, ch, 2, 0)
		if later[0].pos>>32 <= end>>32 {
			t.Fatalf("no new term: %d after %d", later[0].pos, end)
		}
		return ch, start, later, end
	}
	cases := []struct {
		name string
		make func(t *testing.T, prefix string) readCase
	}{
		{"an id of an earlier term, up to where it ended: read", func(t *testing.T, prefix string) readCase {
			ch, start, later, end := inNewTerm(t, prefix)
			return readCase{channels: ch, after: []wire.Cursor{at(start, 15, end)}, maxBytes: 1 << 20, want: later, first: 2}
		}},
		{"an id of an earlier term, past where it ended: foreign", func(t *testing.T, prefix string) readCase {
			ch, start, _, end := inNewTerm(t, prefix)
			return readCase{channels: ch, after: []wire.Cursor{at(start, 15, end+1)}, maxBytes: 1 << 20, reset: wire.ResetFuture}
		}},
		{"an id of a term no writer handed on: foreign", func(t *testing.T, prefix string) readCase {
			ch, start, later, _ := inNewTerm(t, prefix)
			// A term below the current one that the cursor's ends do not
			// name (terms start at the node's config epoch * 32).
			cur, err := cc.Get(ctx, "sse:{p15}:cursor").Result()
			if err != nil {
				t.Fatal(err)
			}
			f := strings.SplitN(cur, ":", 4)
			term := uint64(1)
			for slices.ContainsFunc(strings.Split(f[len(f)-1], ","), func(e string) bool { return strings.HasPrefix(e, strconv.FormatUint(term, 10)+"=") }) {
				term++
			}
			if term >= later[0].pos>>32 {
				t.Skipf("every term below the current one is handed on: %s", cur)
			}
			return readCase{channels: ch, after: []wire.Cursor{at(start, 15, term<<32+1)}, maxBytes: 1 << 20, reset: wire.ResetFuture}
		}},
		{"an id of an earlier term, a later page (until set): foreign", func(t *testing.T, prefix string) readCase {
			ch, start, _, end := inNewTerm(t, prefix)
			return readCase{channels: ch, after: []wire.Cursor{at(start, 15, end+1)}, until: position(t, c), maxBytes: 1 << 20, reset: wire.ResetFuture}
		}},
		{"no channels: the position, no events", func(t *testing.T, _ string) readCase {
			return readCase{maxBytes: 1 << 20}
		}},
		{"from the newest: no events", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(4, unitParts, 1, prefix)
			publishEach(t, cc, ch, 3, 0)
			return readCase{channels: ch, after: []wire.Cursor{position(t, c)}, maxBytes: 1 << 20}
		}},
		{"another tag: epoch", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(1, unitParts, 1, prefix)
			start := edit(position(t, c), func(v *wire.Vector) { v.Tag = "zz" + v.Tag })
			publishEach(t, cc, ch, 2, 0)
			return readCase{channels: ch, after: []wire.Cursor{start}, maxBytes: 1 << 20, reset: wire.ResetEpoch}
		}},
		{"another partition count: epoch", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(1, unitParts, 1, prefix)
			start := edit(position(t, c), func(v *wire.Vector) { v.Pos = v.Pos[:unitParts-1] })
			publishEach(t, cc, ch, 2, 0)
			return readCase{channels: ch, after: []wire.Cursor{start}, maxBytes: 1 << 20, reset: wire.ResetEpoch}
		}},
		{"one of two cursors of another tag: epoch", func(t *testing.T, prefix string) readCase {
			ch := append(channelsIn(2, unitParts, 1, prefix), channelsIn(3, unitParts, 1, prefix)...)
			start := position(t, c)
			publishEach(t, cc, ch, 2, 0)
			other := edit(start, func(v *wire.Vector) { v.Tag = "zz" + v.Tag })
			return readCase{channels: ch, after: []wire.Cursor{start, other}, maxBytes: 1 << 20, reset: wire.ResetEpoch}
		}},
		{"past the partition's position: foreign", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(6, unitParts, 1, prefix)
			publishEach(t, cc, ch, 2, 0)
			now := position(t, c)
			return readCase{channels: ch, after: []wire.Cursor{at(now, 6, now.Vector().Pos[6]+1)}, maxBytes: 1 << 20, reset: wire.ResetFuture}
		}},
		{"past until in the partition: foreign", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(6, unitParts, 1, prefix)
			until := position(t, c)
			publishEach(t, cc, ch, 2, 0)
			return readCase{channels: ch, after: []wire.Cursor{position(t, c)}, until: until, maxBytes: 1 << 20, reset: wire.ResetFuture}
		}},
		{"made longer than HISTORY_TTL ago: too_old", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(8, unitParts, 1, prefix)
			start := edit(position(t, c), func(v *wire.Vector) { v.Time = uint64(time.Now().Add(-unitTTL - time.Minute).UnixMilli()) })
			publishEach(t, cc, ch, 2, 0)
			return readCase{channels: ch, after: []wire.Cursor{start}, maxBytes: 1 << 20, reset: wire.ResetTooOld}
		}},
		{"just within HISTORY_TTL: read", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(8, unitParts, 1, prefix)
			start := edit(position(t, c), func(v *wire.Vector) { v.Time = uint64(time.Now().Add(-unitTTL + time.Minute).UnixMilli()) })
			ev := publishEach(t, cc, ch, 2, 0)
			return readCase{channels: ch, after: []wire.Cursor{start}, maxBytes: 1 << 20, want: ev, first: 2}
		}},
		{"older than HISTORY_TTL, a later page (until set): read", func(t *testing.T, prefix string) readCase {
			// Only a first read checks the time: a later page's cursor is
			// the earlier page's, or the gap recovery's.
			ch := channelsIn(8, unitParts, 1, prefix)
			start := edit(position(t, c), func(v *wire.Vector) { v.Time = 1 })
			ev := publishEach(t, cc, ch, 2, 0)
			return readCase{channels: ch, after: []wire.Cursor{start}, until: position(t, c), maxBytes: 1 << 20, want: ev, first: 2}
		}},
		{"trimmed past the cursor: trimmed", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(9, unitParts, 1, prefix)
			start := position(t, c)
			publishEach(t, cc, ch, unitMaxlen+5, 0)
			return readCase{channels: ch, after: []wire.Cursor{start}, maxBytes: 1 << 20, reset: wire.ResetTrimmed}
		}},
		{"one event short of the newest trimmed: trimmed", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(10, unitParts, 1, prefix)
			start := position(t, c)
			ev := publishEach(t, cc, ch, unitMaxlen+5, 0)
			return readCase{channels: ch, after: []wire.Cursor{at(start, 10, ev[3].pos)}, maxBytes: 1 << 20, reset: wire.ResetTrimmed}
		}},
		{"at the newest trimmed event: every event kept, by read batches", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(10, unitParts, 1, prefix)
			start := position(t, c)
			ev := publishEach(t, cc, ch, unitMaxlen+5, 0)
			return readCase{channels: ch, after: []wire.Cursor{at(start, 10, ev[4].pos)}, maxBytes: 1 << 30, want: ev[5:], first: 256}
		}},
		{"maxBytes bounds a page", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(11, unitParts, 1, prefix)
			start := position(t, c)
			ev := publishEach(t, cc, ch, 5, 100)
			// 100 bytes an envelope: the page ends once it holds 250 or more.
			return readCase{channels: ch, after: []wire.Cursor{start}, maxBytes: 250, want: ev, first: 3}
		}},
		{"maxBytes 1: an event a page", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(11, unitParts, 1, prefix)
			start := position(t, c)
			ev := publishEach(t, cc, ch, 3, 0)
			return readCase{channels: ch, after: []wire.Cursor{start}, maxBytes: 1, want: ev, first: 1}
		}},
		{"a channel of more than a read batch", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(12, unitParts, 1, prefix)
			start := position(t, c)
			ev := publishEach(t, cc, ch, 600, 0)
			return readCase{channels: ch, after: []wire.Cursor{start}, maxBytes: 1 << 30, want: ev, first: 256}
		}},
		{"a page holds at most pageEvents (1000)", func(t *testing.T, prefix string) readCase {
			// 4 channels of 260 events, interleaved: a batch of 256 each,
			// 1,021 events up to the earliest batch's end, cut at 1,000.
			ch := channelsIn(13, unitParts, 4, prefix)
			start := position(t, c)
			ev := publishEach(t, cc, ch, 260, 0)
			return readCase{channels: ch, after: repeat(start, 4), maxBytes: 1 << 30, want: ev, first: 1000}
		}},
		{"until bounds the read", func(t *testing.T, prefix string) readCase {
			ch := channelsIn(14, unitParts, 1, prefix)
			start := position(t, c)
			ev := publishEach(t, cc, ch, 2, 0)
			until := position(t, c)
			publishEach(t, cc, ch, 2, 0)
			return readCase{channels: ch, after: []wire.Cursor{start}, until: until, maxBytes: 1 << 20, want: ev, first: 2}
		}},
		{"several partitions: partition after partition, in order within each", func(t *testing.T, prefix string) readCase {
			chans := []string{channelsIn(14, unitParts, 1, prefix)[0], channelsIn(2, unitParts, 1, prefix)[0]}
			chans = append(chans, channelsIn(9, unitParts, 2, prefix)...)
			start := position(t, c)
			ev := publishEach(t, cc, chans, 3, 0)
			want := slices.Clone(ev)
			slices.SortStableFunc(want, func(a, b pub) int {
				if d := wire.Partition(a.ch, unitParts) - wire.Partition(b.ch, unitParts); d != 0 {
					return d
				}
				return cmp.Compare(a.pos, b.pos)
			})
			return readCase{channels: chans, after: repeat(start, len(chans)), maxBytes: 1 << 20, want: want, first: len(want), resumeEach: true}
		}},
		{"each channel from its own cursor", func(t *testing.T, prefix string) readCase {
			chans := channelsIn(5, unitParts, 2, prefix) // a, b
			start := position(t, c)
			ev := publishEach(t, cc, chans, 3, 0) // a0 b0 a1 b1 a2 b2
			want := []pub{ev[0], ev[2], ev[4], ev[5]}
			return readCase{channels: chans, after: []wire.Cursor{start, at(start, 5, ev[3].pos)}, maxBytes: 1 << 20, want: want, first: 4}
		}},
		{"each channel from its own cursor, in pages", func(t *testing.T, prefix string) readCase {
			chans := channelsIn(5, unitParts, 2, prefix)
			start := position(t, c)
			ev := publishEach(t, cc, chans, 3, 0)
			want := []pub{ev[0], ev[2], ev[4], ev[5]}
			return readCase{channels: chans, after: []wire.Cursor{start, at(start, 5, ev[3].pos)}, maxBytes: 1, want: want, first: 1}
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rcase := tc.make(t, fmt.Sprintf("read/%d/", i))
			page, err := c.Read(ctx, rcase.channels, rcase.after, rcase.until, rcase.maxBytes)
			if err != nil {
				t.Fatal(err)
			}
			if page.Reset != rcase.reset {
				t.Fatalf("reset %q, want %q (%d events)", page.Reset, rcase.reset, len(page.Events))
			}
			if v := page.Position.Vector(); v == nil || len(v.Pos) != unitParts {
				t.Fatalf("page position %v", page.Position)
			}
			if !rcase.until.IsZero() && page.Position.String() != rcase.until.String() {
				t.Errorf("page position %s, want until %s", page.Position, rcase.until)
			}
			if rcase.reset != "" {
				if len(page.Events) > 0 || page.More {
					t.Errorf("a reset page with %d events, more %v", len(page.Events), page.More)
				}
				return
			}
			if len(page.Events) != rcase.first || page.More != (rcase.first < len(rcase.want)) {
				t.Errorf("first page: %d events, more %v; want %d of %d", len(page.Events), page.More, rcase.first, len(rcase.want))
			}
			pos := map[string]uint64{}
			for _, e := range rcase.want {
				pos[e.body] = e.pos
			}
			var got []pub
			after, until := slices.Clone(rcase.after), page.Position
			for pages := 0; ; pages++ {
				checkIDs(t, page, after, pos)
				for _, e := range page.Events {
					got = append(got, pub{e.Channel, string(e.Envelope), pos[string(e.Envelope)]})
				}
				if !page.More || pages > len(rcase.want) || t.Failed() {
					break
				}
				if len(page.Events) == 0 {
					t.Fatal("a page with more and no events")
				}
				last := page.Events[len(page.Events)-1].Cursor
				for j := range after {
					after[j] = after[j].Max(last)
				}
				if page, err = c.Read(ctx, rcase.channels, after, until, rcase.maxBytes); err != nil || page.Reset != "" {
					t.Fatalf("page %d: %v, reset %q", pages+2, err, page.Reset)
				}
			}
			if !slices.Equal(got, rcase.want) {
				t.Errorf("read %d events, want %d:\n got %v\nwant %v", len(got), len(rcase.want), short(got), short(rcase.want))
			}
			if !rcase.resumeEach || t.Failed() {
				return
			}
			// From each event's id, exactly the events after it.
			first, err := c.Read(ctx, rcase.channels, rcase.after, until, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			for j, e := range first.Events {
				rest, err := c.Read(ctx, rcase.channels, repeat(e.Cursor, len(rcase.channels)), until, 1<<20)
				if err != nil || rest.Reset != "" || rest.More {
					t.Fatalf("from event %d's id %s: %v, reset %q, more %v", j, e.Cursor, err, rest.Reset, rest.More)
				}
				var bodies []string
				for _, r := range rest.Events {
					bodies = append(bodies, string(r.Envelope))
				}
				var want []string
				for _, w := range rcase.want[j+1:] {
					want = append(want, w.body)
				}
				if !slices.Equal(bodies, want) {
					t.Errorf("from event %d's id %s: %v, want %v", j, e.Cursor, bodies, want)
				}
			}
		})
	}

	t.Run("as many cursors as channels", func(t *testing.T) {
		if _, err := c.Read(ctx, []string{"a", "b"}, []wire.Cursor{position(t, c)}, wire.Cursor{}, 1<<20); err == nil {
			t.Error("a read of 2 channels with 1 cursor went through")
		}
	})
}

// checkIDs checks the ids of a page read from after: the page's start (per
// partition the earliest of after) moved on, event by event, to each
// event's position in its partition (pos, by envelope), of the page's tag;
// and none past the page's position.
func checkIDs(t *testing.T, page wire.Page, after []wire.Cursor, pos map[string]uint64) {
	t.Helper()
	if len(page.Events) == 0 {
		return
	}
	start := after[0]
	for _, a := range after[1:] {
		start = start.Min(a)
	}
	cur := slices.Clone(start.Vector().Pos)
	bound := page.Position.Vector()
	for j, e := range page.Events {
		v := e.Cursor.Vector()
		k := wire.Partition(e.Channel, unitParts)
		n, ok := pos[string(e.Envelope)]
		if !ok {
			t.Fatalf("event %d: %s on %s, not one published", j, e.Envelope, e.Channel)
		}
		cur[k] = n
		if v == nil || v.Tag != bound.Tag || v.Own != k || !slices.Equal(v.Pos, cur) || v.Time != start.Vector().Time {
			t.Fatalf("event %d (%s, partition %d at %d): id %v, want %v own %d", j, e.Channel, k, n, v, cur, k)
		}
		if v.Pos[k] > bound.Pos[k] {
			t.Fatalf("event %d at %d, past the page's position %d", j, v.Pos[k], bound.Pos[k])
		}
	}
}

// short lists events by their envelopes, the middle of long lists left out.
func short(ps []pub) string {
	var b []string
	for i, p := range ps {
		if len(ps) > 12 && i == 6 {
			b = append(b, fmt.Sprintf("… %d more …", len(ps)-12))
		}
		if len(ps) <= 12 || i < 6 || i >= len(ps)-6 {
			b = append(b, p.body)
		}
	}
	return strings.Join(b, " ")
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

// TestClusterReadNoResetWhenTrimmedOnlyPastTheBound is
// TestReadNoResetWhenTrimmedOnlyPastTheBound on Redis Cluster, table-driven
// over where the two channels are: a replay's later page must not reset
// because a busy channel, none of whose events up to the bound is left to
// read, was trimmed of events published after the bound (they arrive
// live).
//
// It failed before Cluster.Read set Page.Finished: the replay read every
// channel on every page, and readPartition checked every channel's trim
// mark (the history's max-deleted-entry-id) against its cursor on every
// page, whether or not the channel had anything left up to the bound: a
// mark past the cursor made only of events published after the bound
// reset the replay ("trimmed"), which one Redis does not (Finished,
// TestReadNoResetWhenTrimmedOnlyPastTheBound).
func TestClusterReadNoResetWhenTrimmedOnlyPastTheBound(t *testing.T) {
	cc, c := startUnitCluster(t)
	ctx := context.Background()
	cases := []struct {
		name        string
		busy, quiet int // partitions
	}{
		{"one partition", 4, 4},
		{"the busy channel's partition first", 4, 12},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("bound/%d/", i)
			busy, quiet := channelsIn(tc.busy, unitParts, 1, prefix+"busy/")[0], channelsIn(tc.quiet, unitParts, 1, prefix+"quiet/")[0]
			start := position(t, c)
			publishEach(t, cc, []string{busy}, 1, 0)
			publishEach(t, cc, []string{quiet}, 1, 0)
			channels := []string{busy, quiet}
			first, err := c.Read(ctx, channels, repeat(start, 2), wire.Cursor{}, 1)
			if err != nil || first.Reset != "" || len(first.Events) != 1 || first.Events[0].Channel != busy || !first.More {
				t.Fatalf("first page: %d events, more %v, reset %q, err %v; want the busy channel's event and more", len(first.Events), first.More, first.Reset, err)
			}
			horizon := first.Events[0].Cursor // the busy channel's only event up to the bound
			// Published after the bound, and trimmed: none of it is the replay's.
			publishEach(t, cc, []string{busy}, 2*unitMaxlen, 0)
			// The next page reads what the first left unfinished, as the
			// hub's replay does.
			if !slices.Equal(first.Finished, []string{busy}) {
				t.Errorf("first page: finished %q, want the busy channel alone", first.Finished)
			}
			channels = without(channels, first.Finished)
			next, err := c.Read(ctx, channels, repeat(horizon, len(channels)), first.Position, 1<<16)
			if err != nil {
				t.Fatal(err)
			}
			if next.Reset != "" || len(next.Events) != 1 || next.Events[0].Channel != quiet {
				t.Errorf("next page: reset %q, %d events; want the quiet channel's event and no reset", next.Reset, len(next.Events))
			}
		})
	}
}

func without(channels, drop []string) []string {
	return slices.DeleteFunc(slices.Clone(channels), func(c string) bool { return slices.Contains(drop, c) })
}

// TestClusterPositionConcurrentUnit: calls of Position that arrive
// together share rounds, but a call never takes a round already under way:
// each returns a position at or past every event published before it was
// called, in every partition.
func TestClusterPositionConcurrentUnit(t *testing.T) {
	_, c := startUnitCluster(t)
	ctx := context.Background()
	cases := []struct {
		name    string
		callers int
		rounds  int
	}{
		{"two callers", 2, 20},
		{"one caller a partition", unitParts, 10},
		{"more callers than partitions", 3 * unitParts, 5},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var wg sync.WaitGroup
			for g := range tc.callers {
				k := g % unitParts
				ch := channelsIn(k, unitParts, 1, fmt.Sprintf("concurrent/%d/%d/", i, g))[0]
				wg.Go(func() {
					for r := range tc.rounds {
						id, err := c.Publish(ctx, ch, fmt.Appendf(nil, `{"data":%d}`, r))
						if err != nil {
							t.Error(err)
							return
						}
						p, err := c.Position(ctx)
						if err != nil {
							t.Error(err)
							return
						}
						if got := p.Vector().Pos[k]; got < id.MS {
							t.Errorf("caller %d, round %d: Position has partition %d at %d, before the event published before the call, at %d", g, r, k, got, id.MS)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

// TestClusterAfterGrantUnit: AfterGrant (a room's grant, its partition's
// cursor when the room was granted, moves a replay's start in that
// partition on to it, and changes nothing else).
func TestClusterAfterGrantUnit(t *testing.T) {
	cc, c := startUnitCluster(t)
	ctx := context.Background()
	cursorOf := func(t *testing.T, k int) string {
		t.Helper()
		s, err := cc.Get(ctx, "sse:{p"+strconv.Itoa(k)+"}:cursor").Result()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	t.Run("AfterGrant", func(t *testing.T) {
		const k = 8
		room := channelsIn(k, unitParts, 1, "grant/room/")[0]
		start := position(t, c)
		before := publishEach(t, cc, []string{room}, 2, 0)
		grant := cursorOf(t, k)
		after := publishEach(t, cc, []string{room}, 2, 0)
		late := at(start, k, after[0].pos)
		epoch, _, _ := strings.Cut(grant, ":")
		cases := []struct {
			name     string
			from     wire.Cursor
			grant    string
			moved    bool // to the grant's position; else unchanged
			wantRead []pub
		}{
			{"a start before the grant: moved on to it", start, grant, true, after},
			{"a start after the grant: unchanged", late, grant, false, after[1:]},
			{"a start at the grant: unchanged", at(start, k, before[1].pos), grant, false, after},
			{"the earlier scheme's grant, \"<epoch>:<n>\"", start, epoch + ":" + strconv.FormatUint(before[1].pos, 10), true, after},
			{"a grant of another epoch: unchanged", start, "zz" + epoch + ":" + strconv.FormatUint(before[1].pos, 10), false, append(before[:2:2], after...)},
			{"no grant: unchanged", start, "", false, append(before[:2:2], after...)},
			{"a single Redis's grant: unchanged", start, "e1:1733400000000-5", false, append(before[:2:2], after...)},
			{"a start of another tag: unchanged", edit(start, func(v *wire.Vector) { v.Tag = "zz" + v.Tag }), grant, false, nil},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				got := c.AfterGrant(tc.from, room, tc.grant)
				want := tc.from
				if tc.moved {
					want = at(tc.from, k, before[1].pos)
				}
				gv, wv := got.Vector(), want.Vector()
				if gv == nil || gv.Tag != wv.Tag || !slices.Equal(gv.Pos, wv.Pos) || gv.Time != wv.Time {
					t.Fatalf("AfterGrant(%s, %q) = %s, want %s", tc.from, tc.grant, got, want)
				}
				if tc.wantRead == nil {
					return
				}
				page, err := c.Read(ctx, []string{room}, []wire.Cursor{got}, wire.Cursor{}, 1<<20)
				if err != nil || page.Reset != "" {
					t.Fatalf("read from %s: %v, reset %q", got, err, page.Reset)
				}
				var bodies, wantBodies []string
				for _, e := range page.Events {
					bodies = append(bodies, string(e.Envelope))
				}
				for _, e := range tc.wantRead {
					wantBodies = append(wantBodies, e.body)
				}
				if !slices.Equal(bodies, wantBodies) {
					t.Errorf("read from %s: %v, want %v", got, bodies, wantBodies)
				}
			})
		}
	})

}
