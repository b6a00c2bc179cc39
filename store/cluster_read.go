package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/wire"
)

// readBatch is how many entries of one channel a page reads at most.
const readBatch = 256

// Read returns one page of the durable events of channels, each after the
// position of its partition in its own cursor in after, up to until (zero
// on a first read: Position now), in order within each partition,
// partition after partition, up to about maxBytes of envelopes. Each
// event's id is the page's start (per partition, the earliest of after)
// moved on by the events before it and itself.
func (c *Cluster) Read(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, maxBytes int) (wire.Page, error) {
	if len(after) != len(channels) {
		return wire.Page{}, fmt.Errorf("reading history: %d cursors for %d channels", len(after), len(channels))
	}
	first := until.IsZero()
	if first {
		var err error
		if until, err = c.Position(ctx); err != nil {
			return wire.Page{}, fmt.Errorf("reading history: %w", err)
		}
	}
	u := until.Vector()
	if u == nil {
		return wire.Page{Position: until, Reset: wire.ResetEpoch}, nil
	}
	if len(channels) == 0 {
		return wire.Page{Position: until}, nil
	}
	start, older, reset := c.checkCursors(channels, after, u, first)
	if reset != "" {
		return wire.Page{Position: until, Reset: reset}, nil
	}
	if len(older) > 0 {
		// The partition has had a new writer since the id: an id past
		// where its term ended for the new writer names events a failover
		// lost. As one Redis resets an id past its position ("foreign").
		lost, err := c.lost(ctx, older)
		if err != nil {
			return wire.Page{}, fmt.Errorf("reading history: %w", err)
		}
		if len(lost) > 0 {
			return wire.Page{Position: until, Reset: wire.ResetFuture}, nil
		}
	}

	p := wire.Page{Position: until}
	id := start.Vector()
	bytes := 0
	byPart := make([][]string, c.parts)
	fromPart := make([][]uint64, c.parts)
	for i, ch := range channels {
		k := wire.Partition(ch, c.parts)
		byPart[k] = append(byPart[k], ch)
		fromPart[k] = append(fromPart[k], after[i].Vector().Pos[k])
	}
	// The channels with nothing left up to until: with More, a later page
	// need not read them, and must not check their trim marks (a busy
	// channel trimmed since of events past until, which arrive live, has
	// lost nothing).
	var finished []string
	for k, chans := range byPart {
		if len(chans) == 0 {
			continue
		}
		entries, complete, more, trimmed, err := c.readPartition(ctx, k, chans, fromPart[k], u.Pos[k])
		if err != nil {
			return wire.Page{}, fmt.Errorf("reading history: %w", err)
		}
		if trimmed {
			return wire.Page{Position: until, Reset: wire.ResetTrimmed}, nil
		}
		for j, e := range entries {
			if bytes >= maxBytes || len(p.Events) >= pageEvents {
				p.More, p.Finished = true, append(finished, done(chans, complete, entries[j:])...)
				return p, nil
			}
			id = id.With(k, e.n)
			p.Events = append(p.Events, wire.Durable{Cursor: wire.VectorCursor(id), Channel: e.channel, Envelope: []byte(e.env)})
			bytes += len(e.env)
		}
		finished = append(finished, done(chans, complete, nil)...)
		if more {
			p.More, p.Finished = true, finished
			return p, nil
		}
	}
	return p, nil
}

// checkCursors checks each channel's cursor in after against u, the
// read's bound: the reset it calls for (another tag or partition count,
// past the bound, older than HISTORY_TTL on a first read), or the page's
// start (the earliest cursor) and, per partition, the newest of the
// cursors of an earlier term than the bound's.
func (c *Cluster) checkCursors(channels []string, after []wire.Cursor, u *wire.Vector, first bool) (start wire.Cursor, older map[int]uint64, reset string) {
	older = map[int]uint64{}
	for i, a := range after {
		v := a.Vector()
		k := wire.Partition(channels[i], c.parts)
		switch {
		case v == nil || v.Tag != u.Tag || len(v.Pos) != len(u.Pos):
			return wire.Cursor{}, nil, wire.ResetEpoch
		case v.Pos[k] > u.Pos[k]:
			return wire.Cursor{}, nil, wire.ResetFuture
		case first && v.Time+uint64(c.ttl.Milliseconds()) < uint64(time.Now().UnixMilli()):
			// An id made longer than HISTORY_TTL ago may be missing events
			// that expired with their channel's history.
			return wire.Cursor{}, nil, wire.ResetTooOld
		}
		if termOf(v.Pos[k]) < termOf(u.Pos[k]) {
			older[k] = max(older[k], v.Pos[k])
		}
		if i == 0 {
			start = a
		} else {
			start = start.Min(a)
		}
	}
	return start, older, ""
}

// done returns those of channels read to the end (complete) that have no
// entry in rest, the entries a page left for the next.
func done(channels []string, complete []bool, rest []entry) []string {
	left := slices.Clone(complete)
	for _, e := range rest {
		left[e.i] = false
	}
	var out []string
	for i, ch := range channels {
		if left[i] {
			out = append(out, ch)
		}
	}
	return out
}

// entry is one durable event read back from a partition.
type entry struct {
	n       uint64
	channel string
	env     string
	i       int // channel's index in the read's channels
}

// readPartition reads the events of channels of partition k, each after
// its own position in from, up to upTo, merged in position order. more is
// set when a channel had more than one batch: the entries then stop at the
// last position every channel was read up to; complete[i] says that
// channels[i] has no event up to upTo beyond the entries. trimmed is set
// when a channel's history was trimmed past its position.
//
// One pipeline: per channel, its entries, then its trimmed marks, all on
// the partition's node in that order, so an event trimmed before the
// XRANGE read it has moved the mark before it is read. The mark is the
// history's own (trimmedScript); a :trimmed key, which the publish script
// wrote before, counts until it expires.
func (c *Cluster) readPartition(ctx context.Context, k int, channels []string, from []uint64, upTo uint64) (entries []entry, complete []bool, more, trimmed bool, err error) {
	ranges := make([]*redis.XMessageSliceCmd, len(channels))
	trims := make([]*redis.StringCmd, len(channels))
	marks := make([]*redis.Cmd, len(channels))
	_, err = c.cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, ch := range channels {
			_, _, _, hist, trim, _ := c.keys(ch)
			ranges[i] = p.XRangeN(ctx, hist, strconv.FormatUint(from[i]+1, 10)+"-0", strconv.FormatUint(upTo, 10), readBatch)
			marks[i] = p.Eval(ctx, trimmedScript, []string{hist})
			trims[i] = p.Get(ctx, trim)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, false, false, err
	}
	limit := upTo
	complete = make([]bool, len(channels))
	for i, ch := range channels {
		mark, _ := marks[i].Text()
		for _, t := range []string{mark, trims[i].Val()} {
			if n, ok := entryPos(t); ok && from[i] < n {
				return nil, nil, false, true, nil
			}
		}
		msgs := ranges[i].Val()
		for _, m := range msgs {
			n, ok := entryPos(m.ID)
			env, _ := m.Values["e"].(string)
			if !ok || env == "" {
				continue // not written by the publish script
			}
			entries = append(entries, entry{n, ch, env, i})
		}
		complete[i] = len(msgs) < readBatch
		if !complete[i] {
			if n, ok := entryPos(msgs[len(msgs)-1].ID); ok && n < limit {
				limit, more = n, true
			}
		}
	}
	slices.SortFunc(entries, func(a, b entry) int { return cmp.Compare(a.n, b.n) })
	for i, e := range entries {
		if e.n > limit {
			// Cut at the limit: a channel with entries past it is not read
			// to the end.
			for _, cut := range entries[i:] {
				complete[cut.i] = false
			}
			return entries[:i], complete, more, false, nil
		}
	}
	return entries, complete, more, false, nil
}

// trimmedScript returns the id of the newest event trimmed from a
// history (KEYS[1]), "0-0" for none, nil for no history: the publish
// script keeps it as the stream's max-deleted-entry-id, which only XINFO
// shows; read here so that the entries XINFO holds are not sent.
const trimmedScript = `if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then return info[i + 1] end
end
return false`

// entryPos is the partition position of a history entry id "<n>-<ms>".
func entryPos(id string) (uint64, bool) {
	num, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseUint(num, 10, 64)
	return n, err == nil
}
