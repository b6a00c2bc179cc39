package wire

import (
	"hash/crc32"
	"strconv"
	"strings"
)

// Cluster mode's ids (docs/CLUSTER.md).
//
// On Redis Cluster there is no one counter that orders every channel. The
// channels are spread over a fixed number of partitions instead, each a
// hash tag with its own position, and an id is a vector: per partition, the
// position this instance had delivered when it encoded the event. One id is
// still a cursor over every channel of a stream, and still encoded once for
// all of the instance's streams.
//
// A partition's position is a term and a count, term*2^32 + count
// (docs/CLUSTER.md, "Position scheme"): the count moves on by one per
// event, and every new writer of the partition (a promoted replica, a
// restarted master, the target of a slot move) starts a new term, above
// every term an earlier writer can have used. So a position is never given
// out twice, whatever the clocks, and positions order the partition's
// events. Positions say nothing of time: an id carries the time it was
// made apart, what HISTORY_TTL is checked against.
//
//	<tag>.<newest>.<p 0>.<p 1>. … .<p P-1>.<time>
//
// tag is a digest of every partition's epoch (a partition that lost its
// data starts a new epoch, and ids of the old one mean nothing); all
// numbers are in base 36. newest is the newest position; each partition's
// p k is its distance from newest (newest - pos k) when it is of newest's
// term, which is short for a partition with recent events, and
// "<term>-<count>" otherwise (partitions on other nodes are in other
// terms). time is the instance's clock in milliseconds when it made the
// id. An id of the earlier scheme, whose positions were millisecond
// clocks, has no time part and only distances: its newest position stands
// for its time.

// MaxPartitions bounds CLUSTER_PARTITIONS, and so the size of an id: at
// most 14 bytes a partition ("<term>-<count>": 5 and 7 base-36 digits, a
// term being below 2^21 and a count below 2^32) and 33 more (tag, newest,
// time): 3,600 bytes at 256, under nginx's 8 KB header line, which a
// Last-Event-ID must fit in (at 1024 it would be over 14 KB).
// TestVectorIDSize measures it.
const MaxPartitions = 256

// Partition is the partition of a logical channel among n: CRC-32 (IEEE) of
// the name, modulo n. Backends compute the same (Python: zlib.crc32).
func Partition(channel string, n int) int {
	return int(crc32.ChecksumIEEE([]byte(channel)) % uint32(n))
}

// Vector is a cluster-mode id.
type Vector struct {
	Tag string   // digest of the partitions' epochs
	Pos []uint64 // per partition: the last position delivered
	// Own is the partition of the event this is the id of, or -1 for a
	// position that is no event's (a stream's start, a replay's bound).
	Own int
	// Time is when the id was made, in milliseconds (the instance's
	// clock): the id's owner had every event after Pos that was published
	// before about then. What HISTORY_TTL is checked against.
	Time uint64
}

// VectorCursor wraps v as a Cursor. v must not change afterwards.
func VectorCursor(v *Vector) Cursor { return Cursor{Epoch: v.Tag, vec: v} }

// Vector returns the vector of a cluster-mode cursor, or nil.
func (c Cursor) Vector() *Vector { return c.vec }

// Newest is the vector's newest position.
func (v *Vector) Newest() uint64 {
	var m uint64
	for _, p := range v.Pos {
		m = max(m, p)
	}
	return m
}

// termBits splits a position into its term (above) and its count.
const termBits = 32

// String writes v as an SSE id.
func (v *Vector) String() string {
	m := v.Newest()
	var b strings.Builder
	b.Grow(len(v.Tag) + 28 + 4*len(v.Pos))
	// Numbers go through a scratch array on the stack: strconv.FormatUint
	// would allocate a string for each, one per partition.
	var num [16]byte
	put := func(x uint64) { b.Write(strconv.AppendUint(num[:0], x, 36)) }
	b.WriteString(v.Tag)
	b.WriteByte('.')
	put(m)
	for _, p := range v.Pos {
		b.WriteByte('.')
		if p>>termBits == m>>termBits {
			put(m - p)
		} else {
			put(p >> termBits)
			b.WriteByte('-')
			put(p & (1<<termBits - 1))
		}
	}
	b.WriteByte('.')
	put(v.Time)
	return b.String()
}

// ParseVector reads an id that String wrote for a deployment of n
// partitions. The result has no Own partition. An id of the earlier
// scheme (no time part, only distances: its positions were millisecond
// clocks) is read with its newest position as its time; its positions
// still order below the new ones (docs/CLUSTER.md), so a resume from it
// goes on exactly.
func ParseVector(s string, n int) (Cursor, error) {
	if n < 1 || n > MaxPartitions || len(s) > 16*(n+3) {
		return Cursor{}, ErrBadCursor
	}
	parts := strings.Split(s, ".")
	if len(parts) != n+2 && len(parts) != n+3 || parts[0] == "" || len(parts[0]) > 13 || !alnum(parts[0]) {
		return Cursor{}, ErrBadCursor
	}
	current := len(parts) == n+3
	v := &Vector{Tag: parts[0], Pos: make([]uint64, n), Own: -1}
	m, err := parse36(parts[1])
	if err != nil {
		return Cursor{}, err
	}
	v.Time = m
	if current {
		if v.Time, err = parse36(parts[n+2]); err != nil {
			return Cursor{}, err
		}
	}
	newest := false
	for i, p := range parts[2 : n+2] {
		if t, c, ok := strings.Cut(p, "-"); ok && current {
			// Another term than newest's: written whole, and below it.
			term, err1 := parse36(t)
			count, err2 := parse36(c)
			pos := term<<termBits | count
			if err1 != nil || err2 != nil || count >= 1<<termBits || term >= 1<<(53-termBits) || term == m>>termBits || pos > m {
				return Cursor{}, ErrBadCursor
			}
			v.Pos[i] = pos
			continue
		}
		d, err := parse36(p)
		if err != nil || d > m || current && (m-d)>>termBits != m>>termBits {
			return Cursor{}, ErrBadCursor
		}
		v.Pos[i], newest = m-d, newest || d == 0
	}
	if !newest {
		return Cursor{}, ErrBadCursor // the newest must be one of them, as String writes it
	}
	return VectorCursor(v), nil
}

// parse36 reads a base-36 number as FormatUint writes it: lower case, no
// sign, no leading zero, at most 2^53.
func parse36(s string) (uint64, error) {
	if s == "" || len(s) > 11 || (len(s) > 1 && s[0] == '0') {
		return 0, ErrBadCursor
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'z') {
			return 0, ErrBadCursor
		}
	}
	x, err := strconv.ParseUint(s, 36, 64)
	if err != nil || x > maxExact {
		return 0, ErrBadCursor
	}
	return x, nil
}

// comparable reports whether two vectors are of one epoch and size.
func (v *Vector) comparable(w *Vector) bool {
	return v.Tag == w.Tag && len(v.Pos) == len(w.Pos)
}

// vectorBefore is Before for cluster ids: for an event's id, whether c had
// not reached the event in its partition; for a position, whether c is
// behind it in some partition. Ids of another epoch count as before.
func vectorBefore(c, d Cursor) bool {
	if c.vec == nil || d.vec == nil || !c.vec.comparable(d.vec) {
		return true
	}
	if o := d.vec.Own; o >= 0 {
		return c.vec.Pos[o] < d.vec.Pos[o]
	}
	for i, p := range c.vec.Pos {
		if p < d.vec.Pos[i] {
			return true
		}
	}
	return false
}

// vectorMax is Max for cluster ids: per partition, the later position.
func vectorMax(c, d Cursor) Cursor {
	if c.vec == nil || d.vec == nil || !c.vec.comparable(d.vec) {
		return d // another epoch: the newer wins, as for Before
	}
	// The earlier time: what one of them did not have may have been
	// published from then on.
	m := &Vector{Tag: c.vec.Tag, Pos: make([]uint64, len(c.vec.Pos)), Own: -1, Time: min(c.vec.Time, d.vec.Time)}
	for i, p := range c.vec.Pos {
		m.Pos[i] = max(p, d.vec.Pos[i])
	}
	return VectorCursor(m)
}

// Min returns, per partition, the earlier position of c and d: where a
// replay over both may start. Cluster ids only.
func (c Cursor) Min(d Cursor) Cursor {
	if c.vec == nil || d.vec == nil || !c.vec.comparable(d.vec) {
		return c
	}
	m := &Vector{Tag: c.vec.Tag, Pos: make([]uint64, len(c.vec.Pos)), Own: -1, Time: min(c.vec.Time, d.vec.Time)}
	for i, p := range c.vec.Pos {
		m.Pos[i] = min(p, d.vec.Pos[i])
	}
	return VectorCursor(m)
}

// With returns a copy of v with partition k at pos, as the id of that
// partition's event.
func (v *Vector) With(k int, pos uint64) *Vector {
	w := &Vector{Tag: v.Tag, Pos: append([]uint64(nil), v.Pos...), Own: k, Time: v.Time}
	w.Pos[k] = pos
	return w
}
