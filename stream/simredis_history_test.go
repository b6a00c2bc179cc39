package stream

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/ssebridge/ssebridge/wire"
)

// The simulated Redis's data (simredis_test.go): publish.lua's ids and
// writes, which the workload makes, and the History and Sessions calls of
// the hub, each a blocking call the scheduler runs against the model.

// --- publish.lua ---

// nextIDLocked is publish.lua's id: the clock's ms, or a count within the
// ms; a new epoch when the cursor key is gone.
func (r *simRedis) nextIDLocked() wire.Cursor {
	c := r.data.cursor
	if c.IsZero() {
		r.epochs++
		c = wire.Cursor{Epoch: fmt.Sprintf("e%d", r.epochs)}
	}
	if r.clock > c.MS {
		c.MS, c.N = r.clock, 0
	} else {
		c.N++
	}
	r.data.cursor = c
	return c
}

// publishLocked is PUBLISH: the message reaches the instance if its
// connection has the channel subscribed now.
func (r *simRedis) publishLocked(channel string, m wire.Message, desc string) {
	if r.conn.up && r.conn.subscribed[channel] {
		r.conn.in = append(r.conn.in, simIn{channel: channel, msg: m, desc: desc})
	}
}

// durableLocked is publish.lua with an envelope: XADD, trim to maxlen
// (remembering the newest id trimmed), PUBLISH with the cursor.
func (r *simRedis) durableLocked(channel, env string) wire.Cursor {
	id := r.nextIDLocked()
	h := append(r.data.hist[channel], simEntry{id, env})
	if over := len(h) - r.maxlen; over > 0 {
		r.data.trimmed[channel] = h[over-1].id
		h = slices.Clone(h[over:])
		r.log.trims++
	}
	r.data.hist[channel] = h
	r.publishLocked(channel, wire.Message{Cursor: id, Body: []byte(env)}, "durable "+env+" on "+channel)
	return id
}

// --- History ---

func (r *simRedis) Position(ctx context.Context) (wire.Cursor, error) {
	var c wire.Cursor
	who := simWhoOf(ctx)
	err := r.call(ctx, "POSITION", func() {
		c = r.nextIDLocked()
		r.log.positions[who] = c
	})
	return c, err
}

func (r *simRedis) PublishBareID(ctx context.Context, channel string) error {
	return r.call(ctx, "MARK "+channel, func() {
		id := r.nextIDLocked()
		r.log.marks = append(r.log.marks, id)
		r.publishLocked(channel, wire.Message{Cursor: id}, "mark "+id.String()+" on "+channel)
	})
}

func (r *simRedis) Read(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, maxBytes int) (wire.Page, error) {
	if len(after) != len(channels) {
		return wire.Page{}, fmt.Errorf("reading history: %d cursors for %d channels", len(after), len(channels))
	}
	var p wire.Page
	desc := fmt.Sprintf("READ %s until %v", simPairs(channels, after), until)
	who := simWhoOf(ctx)
	err := r.call(ctx, desc, func() {
		p = r.readLocked(channels, after, until, maxBytes)
		r.log.tick++
		rd := simRead{tick: r.log.tick}
		for _, ch := range channels {
			if !r.conn.subscribed[ch] {
				rd.unsubscribed = append(rd.unsubscribed, ch)
			}
		}
		r.log.reads[who] = append(r.log.reads[who], rd)
	})
	return p, err
}

// readLocked is read.lua plus store.History.Read's checks.
func (r *simRedis) readLocked(channels []string, after []wire.Cursor, until wire.Cursor, maxBytes int) wire.Page {
	if r.data.cursor.IsZero() {
		// Redis lost its data: a new epoch (store calls Position).
		return wire.Page{Position: r.nextIDLocked(), Reset: wire.ResetEpoch}
	}
	position := r.data.cursor
	if !until.IsZero() && until.Epoch != position.Epoch {
		return wire.Page{Position: position, Reset: wire.ResetEpoch}
	}
	for i, a := range after {
		switch {
		case a.Epoch != position.Epoch:
			return wire.Page{Position: position, Reset: wire.ResetEpoch}
		case position.Before(a):
			return wire.Page{Position: position, Reset: wire.ResetFuture}
		}
		if t, ok := r.data.trimmed[channels[i]]; ok && simEntryBefore(a, t) {
			return wire.Page{Position: position, Reset: wire.ResetTrimmed}
		}
	}
	bound := position
	if !until.IsZero() {
		bound = until
	}
	// Merge the channels' entries in (after, bound], in id order.
	var evs []wire.Durable
	for i, ch := range channels {
		for _, e := range r.data.hist[ch] {
			if simEntryBefore(after[i], e.id) && !simEntryBefore(bound, e.id) {
				evs = append(evs, wire.Durable{Cursor: wire.Cursor{Epoch: position.Epoch, MS: e.id.MS, N: e.id.N}, Channel: ch, Envelope: []byte(e.env)})
			}
		}
	}
	slices.SortFunc(evs, func(a, b wire.Durable) int {
		return cmp.Or(cmp.Compare(a.Cursor.MS, b.Cursor.MS), cmp.Compare(a.Cursor.N, b.Cursor.N))
	})
	p := wire.Page{Position: bound}
	bytes := 0
	for i, ev := range evs {
		if i >= r.pageSize || bytes >= maxBytes {
			p.More = true
			left := map[string]bool{}
			for _, rest := range evs[i:] {
				left[rest.Channel] = true
			}
			for _, ch := range channels {
				if !left[ch] {
					p.Finished = append(p.Finished, ch)
				}
			}
			break
		}
		p.Events = append(p.Events, ev)
		bytes += len(ev.Envelope)
	}
	return p
}

// simPairs describes channels and their cursors, sorted: the hub's lists
// may come from maps (Recover's), and a description must not depend on
// their order.
func simPairs(channels []string, after []wire.Cursor) string {
	pairs := make([]string, len(channels))
	for i, ch := range channels {
		pairs[i] = ch + ">" + after[i].String()
	}
	slices.Sort(pairs)
	return "[" + strings.Join(pairs, " ") + "]"
}

// simEntryBefore compares entry ids (ms, n), as XRANGE does: without the
// epoch.
func simEntryBefore(a, b wire.Cursor) bool {
	return a.MS < b.MS || a.MS == b.MS && a.N < b.N
}

func (r *simRedis) Active(ctx context.Context, channels []string, after wire.Cursor) ([]string, error) {
	var out []string
	chs := slices.Sorted(slices.Values(channels)) // the hub's list comes from maps: sorted for a stable description
	err := r.call(ctx, fmt.Sprintf("ACTIVE %v after %v", chs, after), func() {
		for _, ch := range channels {
			for _, e := range r.data.hist[ch] {
				if simEntryBefore(after, e.id) {
					out = append(out, ch)
					break
				}
			}
		}
	})
	return out, err
}

func (r *simRedis) Size(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, overhead, limit int) (int, error) {
	n := 0
	err := r.call(ctx, fmt.Sprintf("SIZE %s until %v", simPairs(channels, after), until), func() {
		for i, ch := range channels {
			for _, e := range r.data.hist[ch] {
				if n > limit {
					return
				}
				if simEntryBefore(after[i], e.id) && !simEntryBefore(until, e.id) {
					n += len(e.env) + overhead
				}
			}
		}
	})
	return n, err
}

// --- Sessions ---

func (r *simRedis) LookupMany(ctx context.Context, tokens []string) ([]wire.Session, []error, error) {
	found := make([]wire.Session, len(tokens))
	errs := make([]error, len(tokens))
	sorted := slices.Sorted(slices.Values(tokens))
	err := r.call(ctx, fmt.Sprintf("GET sessions %v", sorted), func() {
		for i, t := range tokens {
			if s, ok := r.data.sessions[t]; ok {
				found[i] = simCopySession(s)
			} else {
				errs[i] = wire.ErrNoSession
			}
		}
		r.log.tick++
		r.log.lookups[simWhoOf(ctx)] = r.log.tick
	})
	return found, errs, err
}
