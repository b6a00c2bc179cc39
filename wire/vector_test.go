package wire_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ssebridge/ssebridge/wire"
)

// partitionTable is the partition of a few channels, for 16 and for 7
// partitions. clients/django's tests hold the same table: backends and
// ssebridge must agree on it.
var partitionTable = []struct {
	channel string
	p16, p7 int
}{
	{"broadcast", 5, 6}, {"control", 11, 2}, {"user:alice", 6, 0}, {"user:42", 6, 4},
	{"room:lobby", 5, 6}, {"room:team-7", 15, 5}, {"room:r0", 15, 5}, {"user:u9", 10, 1},
}

func TestPartition(t *testing.T) {
	for _, r := range partitionTable {
		if got := wire.Partition(r.channel, 16); got != r.p16 {
			t.Errorf("Partition(%q, 16) = %d, want %d", r.channel, got, r.p16)
		}
		if got := wire.Partition(r.channel, 7); got != r.p7 {
			t.Errorf("Partition(%q, 7) = %d, want %d", r.channel, got, r.p7)
		}
	}
}

func vec(tag string, own int, pos ...uint64) wire.Cursor {
	return wire.VectorCursor(&wire.Vector{Tag: tag, Pos: pos, Own: own})
}

func TestVectorOrder(t *testing.T) {
	last := vec("t", -1, 5, 7, 0)
	cases := []struct {
		name   string
		ev     wire.Cursor
		before bool // last.Before(ev): the event is new to a stream at last
	}{
		{"newer in its partition", vec("t", 1, 5, 8, 0), true},
		{"at last in its partition", vec("t", 1, 9, 7, 9), false},
		{"older in its partition", vec("t", 0, 4, 9, 9), false},
		{"another epoch", vec("u", 0, 1, 0, 0), true},
		{"a position behind somewhere", vec("t", -1, 5, 6, 1), true},
		{"a position at or behind everywhere", vec("t", -1, 5, 7, 0), false},
	}
	for _, c := range cases {
		if got := last.Before(c.ev); got != c.before {
			t.Errorf("%s: Before = %v, want %v", c.name, got, c.before)
		}
	}
	m := last.Max(vec("t", 1, 3, 9, 1))
	if m.String() != "t.9.4.0.8.0" { // (5, 9, 1): newest 9, then 9-5, 9-9, 9-1; time 0
		t.Errorf("Max = %s, want t.9.4.0.8.0", m)
	}
	if n := last.Min(vec("t", 1, 3, 9, 1)); n.String() != "t.7.4.0.7.0" { // (3, 7, 0)
		t.Errorf("Min = %s, want t.7.4.0.7.0", n)
	}
	// Of two times, Max and Min keep the earlier: what one of them had not
	// got may have been published from then on.
	a := wire.VectorCursor(&wire.Vector{Tag: "t", Pos: []uint64{1}, Own: -1, Time: 50})
	b := wire.VectorCursor(&wire.Vector{Tag: "t", Pos: []uint64{2}, Own: -1, Time: 40})
	if a.Max(b).Vector().Time != 40 || a.Min(b).Vector().Time != 40 {
		t.Errorf("Max, Min of times 50 and 40: %d, %d", a.Max(b).Vector().Time, a.Min(b).Vector().Time)
	}
	if z := (wire.Cursor{}).Max(last); z.String() != last.String() {
		t.Errorf("zero.Max = %s", z)
	}
	if !(wire.Cursor{}).Before(last) {
		t.Error("the zero cursor is not before a vector")
	}
}

func TestParseVector(t *testing.T) {
	good := []string{"abc.tp48jc.0.0.0.tp48jd", "1.z0.0.10.z0.0", "q.mi4cq3k0.0.5k.0-0.mi4cq3k0",
		"q.1it2wmvbc.0.1a-5.8.mi4cq3k0" /* 1000<<32+8: partition 1 at term 46, count 5 */}
	for _, s := range good {
		c, err := wire.ParseVector(s, 3)
		if err != nil || c.String() != s || c.Vector() == nil || c.Vector().Own != -1 {
			t.Errorf("%q: %v %v", s, c, err)
		}
	}
	// An id of the earlier scheme (no time: positions were clocks) is read
	// with its newest position as its time.
	old := map[string]string{"abc.tp48jc.0.0.0": "abc.tp48jc.0.0.0.tp48jc", "1.z0.0.10.z0": "1.z0.0.10.z0.z0"}
	for s, want := range old {
		c, err := wire.ParseVector(s, 3)
		if err != nil || c.String() != want {
			t.Errorf("%q (earlier scheme): %v %v, want %s", s, c, err, want)
		}
	}
	bad := []string{"", "abc.1.0.0", "abc.1.0.0.0.0.0", ".1.0.0.0", "a-b.1.0.0.0", "abc.01.0.0.0", "abc.1.A.0.0",
		"abc.5.1.1.1", "abc.5.6.0.0", "abc.0.1.0.0", "abc.1.0.0.0.01", "abc.1.0.0.0.", "abc.1.0.0.0.A",
		"q.1it2wmvbc.0.rs-5.8.1" /* newest's own term written whole */, "q.1it2wmvbc.0.1a-1z141z4.8.1", /* count 2^32 */
		"q.1it2wmvbc.0.1a-5.9.1" /* a distance into another term */, "abc.1.0.0-0.0.1", "q.1it2wmvbc.0.1a-.8.1",
		"abc.1..0.0", "abc.1.+1.0.0", "abc.zzzzzzzzzzzz.0.0.0", "e:1-2", strings.Repeat("a", 14) + ".1.0.0.0"}
	for _, s := range bad {
		if _, err := wire.ParseVector(s, 3); !errors.Is(err, wire.ErrBadCursor) {
			t.Errorf("%q accepted (%v)", s, err)
		}
	}
	if _, err := wire.ParseCursor("abc.1.0.0.0"); err == nil {
		t.Error("ParseCursor (single Redis) accepted a cluster id")
	}
}

// FuzzParseVector: an accepted id round-trips through String, has the
// deployment's number of partitions, and is ordered against itself as a
// position: not before itself, Max and Min of it with itself are it.
func FuzzParseVector(f *testing.F) {
	for _, s := range []string{"abc.tp48jc.0.0.0", "1.z0.0.10.z0", "abc.tp48jc.0.0.0.tp48jd", "a.1.0.0", "a.1.0.0.0.0", "a.01.0.0.0", "", ".", "a..0.0.0", "A.1.2.3.4"} {
		f.Add(s, 3)
	}
	f.Fuzz(func(t *testing.T, s string, n int) {
		c, err := wire.ParseVector(s, n)
		if err != nil {
			if !errors.Is(err, wire.ErrBadCursor) || !c.IsZero() {
				t.Fatalf("%q: %v, %+v", s, err, c)
			}
			return
		}
		v := c.Vector()
		if v == nil {
			t.Fatalf("%q (n=%d) accepted as %v, no vector", s, n, c)
		}
		// An id of the earlier scheme (no time part) is written again in
		// the current one, which must read back the same.
		if len(v.Pos) != n || strings.Count(s, ".") == n+2 && c.String() != s {
			t.Fatalf("%q (n=%d) accepted as %v", s, n, c)
		}
		s = c.String()
		if back, err := wire.ParseVector(s, n); err != nil || back.String() != s {
			t.Fatalf("%q does not read back: %v %v", s, back, err)
		}
		if c.Before(c) || c.Max(c).String() != s || c.Min(c).String() != s {
			t.Fatalf("%q: not a position equal to itself", s)
		}
	})
}

// TestVectorIDSize measures the SSE id of a cluster deployment of P
// partitions: in the worst case (the longest tag, the newest position at
// its largest, 2^53, every other partition at 0: never read, as a
// partition whose node was down when the instance started; the time at its
// longest until 2059) and with every partition a few thousand events
// behind the newest in the same term. At MaxPartitions the worst case must
// stay under maxIDBytes, half nginx's default 8 KB header line
// (large_client_header_buffers), since browsers send it back as
// Last-Event-ID and it rides on every durable frame.
func TestVectorIDSize(t *testing.T) {
	const maxIDBytes = 4096
	size := func(p int) (worst, near int) {
		// Every other partition in another term, at the longest term and
		// count under the newest.
		w := &wire.Vector{Tag: "1z141z3" /* MaxUint32 in base 36 */, Pos: make([]uint64, p), Time: 2821109907455 /* "zzzzzzzz": 2059 */}
		for k := range w.Pos {
			w.Pos[k] = (1<<21-2)<<32 | (1<<32 - 1)
		}
		w.Pos[0] = 1<<53 - 1
		m := &wire.Vector{Tag: "1z141z3", Pos: make([]uint64, p), Time: 1800000000000}
		for k := range m.Pos {
			m.Pos[k] = 1000<<32 + 1000000 - 5000
		}
		m.Pos[0] = 1000<<32 + 1000000
		if _, err := wire.ParseVector(w.String(), p); p <= wire.MaxPartitions && err != nil {
			t.Errorf("P=%d: the worst-case id does not parse: %v", p, err)
		}
		return len(w.String()), len(m.String())
	}
	for _, p := range []int{16, 64, 128, 256, 1024} {
		w, m := size(p)
		t.Logf("P=%d: worst case %d bytes, every partition a few thousand events behind %d bytes", p, w, m)
	}
	if w, _ := size(wire.MaxPartitions); w > maxIDBytes {
		t.Errorf("at MaxPartitions (%d) an id is up to %d bytes, over %d", wire.MaxPartitions, w, maxIDBytes)
	}
}
