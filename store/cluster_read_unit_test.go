package store_test

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

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
