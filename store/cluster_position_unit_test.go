package store_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

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
