package wire_test

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/ssebridge/ssebridge/wire"
)

// TestVectorRoundTrip: a cluster id written by String reads back, for a
// deployment of its partition count, as the same tag, positions and time
// (as a position: no own partition), and is refused for other counts;
// a partition of newest's term is written as a distance, one of another
// term whole ("<term>-<count>").
func TestVectorRoundTrip(t *testing.T) {
	const term = 1 << 32
	worst := make([]uint64, wire.MaxPartitions)
	for k := range worst {
		worst[k] = (1<<21-2)<<32 | (1<<32 - 1)
	}
	worst[0] = 1<<53 - 1
	cases := []struct {
		name  string
		v     wire.Vector
		whole int // partitions written "<term>-<count>"
		want  string
	}{
		{"one partition", wire.Vector{Tag: "t", Pos: []uint64{5}, Time: 7}, 0, "t.5.0.7"},
		{"all at zero", wire.Vector{Tag: "abc", Pos: make([]uint64, 3)}, 0, "abc.0.0.0.0.0"},
		{"one term, distances", wire.Vector{Tag: "q", Pos: []uint64{46*term + 8, 46*term + 5, 46*term + 1}, Time: 1800000000000}, 0, ""},
		{"a partition in an earlier term", wire.Vector{Tag: "q", Pos: []uint64{1000*term + 8, 46*term + 5, 1000*term + 1}, Time: 1}, 1, "q.1it2wmvbc.0.1a-5.7.1"},
		{"every other partition in an earlier term", wire.Vector{Tag: "z9", Pos: []uint64{3*term + 1, 2*term + 9, 1*term + 4, 0}, Time: 36}, 3, ""},
		{"an event's id (own partition set)", wire.Vector{Tag: "e", Pos: []uint64{9, 3}, Own: 1, Time: 10}, 0, "e.9.0.6.a"},
		{"the longest tag", wire.Vector{Tag: "abcdefghijklm", Pos: []uint64{1, 2}, Time: 3}, 0, "abcdefghijklm.2.1.0.3"},
		{"MaxPartitions, worst case", wire.Vector{Tag: "1z141z3", Pos: worst, Time: 2821109907455}, wire.MaxPartitions - 1, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.v.String()
			if tc.want != "" && s != tc.want {
				t.Errorf("String = %q, want %q", s, tc.want)
			}
			if got := strings.Count(s, "-"); got != tc.whole {
				t.Errorf("%q has %d partitions written whole, want %d", s, got, tc.whole)
			}
			n := len(tc.v.Pos)
			c, err := wire.ParseVector(s, n)
			if err != nil {
				t.Fatalf("ParseVector(%q, %d): %v", s, n, err)
			}
			v := c.Vector()
			if v == nil || v.Tag != tc.v.Tag || !slices.Equal(v.Pos, tc.v.Pos) || v.Time != tc.v.Time || v.Own != -1 || c.Epoch != tc.v.Tag {
				t.Fatalf("%q reads back as %+v (epoch %q), want %+v with own -1", s, v, c.Epoch, tc.v)
			}
			if c.String() != s {
				t.Errorf("%q is written back as %q", s, c.String())
			}
			if v.Newest() != slices.Max(tc.v.Pos) {
				t.Errorf("Newest = %d, want %d", v.Newest(), slices.Max(tc.v.Pos))
			}
			// (Not n+1: an id of n partitions has as many parts as one of
			// n+1 of the earlier scheme, which has no time part, and may
			// read as one.)
			for _, m := range []int{n - 1, n + 2} {
				if m < 1 {
					continue
				}
				if _, err := wire.ParseVector(s, m); !errors.Is(err, wire.ErrBadCursor) {
					t.Errorf("%q (%d partitions) read for %d: %v", s, n, m, err)
				}
			}
			// The id of the next event of partition 0 follows it there, and
			// a stream at it has not had that event.
			next := wire.VectorCursor(v.With(0, v.Pos[0]+1))
			if !c.Before(next) || next.Before(c) {
				t.Errorf("%s and the next event's id %s are not in order", c, next)
			}
		})
	}
}

// TestDurableFrameRoundTrip: a durable frame as the publish scripts write
// it reads back as its cursor and envelope with the deployment's marker,
// and is refused as forged with any other; a payload without the leading
// NUL is a live one, whole.
func TestDurableFrameRoundTrip(t *testing.T) {
	const marker = "0123456789abcdef0123456789abcdef"
	cursor := wire.Cursor{Epoch: "e1", MS: 1733400000000, N: 42}
	cases := []struct {
		name     string
		envelope string
	}{
		{"an envelope", `{"event":"chat","data":{"text":"hi"}}`},
		{"a mark (no envelope)", ""},
		{"an envelope with line ends", "{\"data\":\"a\\nb\"}\n\r\n"},
		{"an envelope with NUL and a space", "\x00 x"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			frame := wire.DurableFrame(marker, cursor, []byte(tc.envelope))
			m, err := wire.ParseMessage(frame, marker)
			if err != nil {
				t.Fatalf("ParseMessage(%q): %v", frame, err)
			}
			if !m.Durable() || m.Cursor != cursor || string(m.Body) != tc.envelope {
				t.Errorf("%q reads as cursor %v body %q, want %v %q", frame, m.Cursor, m.Body, cursor, tc.envelope)
			}
			for _, other := range []string{"", "0123456789abcdef0123456789abcdee", marker[:31]} {
				if _, err := wire.ParseMessage(frame, other); !errors.Is(err, wire.ErrForged) {
					t.Errorf("with marker %q: %v, want forged", other, err)
				}
			}
			live := bytes.TrimPrefix(frame, []byte{0})
			if m, err := wire.ParseMessage(live, marker); err != nil || m.Durable() || !bytes.Equal(m.Body, live) {
				t.Errorf("the frame without NUL: %+v %v, want a live payload", m, err)
			}
		})
	}
}

// TestEncodeDurableVectorID: a durable event's id: line is its cluster id,
// whatever id its envelope holds, and reads back as that id.
func TestEncodeDurableVectorID(t *testing.T) {
	id := wire.VectorCursor(&wire.Vector{Tag: "t1", Pos: []uint64{1<<32 + 9, 1<<32 + 3, 5}, Own: 0, Time: 99})
	cases := []struct {
		name, envelope, event string
	}{
		{"no id of its own", `{"event":"chat","data":"x"}`, "chat"},
		{"an id of its own", `{"event":"chat","id":"mine","data":"x"}`, "chat"},
		{"a payload that is not an envelope", `plain text`, "message"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			frame, err := wire.EncodeDurable(id, []byte(tc.envelope), 1<<16)
			if err != nil {
				t.Fatal(err)
			}
			line, rest, _ := strings.Cut(string(frame), "\n")
			got, ok := strings.CutPrefix(line, "id: ")
			if !ok || got != id.String() || !strings.HasPrefix(rest, "event: "+tc.event+"\n") {
				t.Fatalf("frame %q, want id: %s then event: %s", frame, id, tc.event)
			}
			back, err := wire.ParseVector(got, 3)
			if err != nil || back.String() != id.String() {
				t.Errorf("id: %q reads back as %v (%v)", got, back, err)
			}
		})
	}
}
