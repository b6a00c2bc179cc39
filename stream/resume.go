package stream

import (
	"context"

	"github.com/ssebridge/ssebridge/wire"
)

// The resume seam, in one place.
//
// A stream holds live events (Stream.catching) from the moment it is made
// until its writer has written what it must replay; meanwhile Open has
// attached it and Redis has confirmed its subscriptions, so nothing
// published after that point can miss it. The writer then:
//
//  1. reads pages of history up to a fixed position P, taken by the first
//     read (every event up to P was published before the read began, so
//     the pages add up to one snapshot, however much is published during
//     the replay), and writes each page straight to the client: a replay
//     is paced by the client and by REPLAY_INFLIGHT_BYTES, never by the
//     live queue's slow-reader rule;
//  2. moves the stream's last id to P and queues what was held, dropping
//     any durable event at or before P (it was in the replay): no gap, no
//     duplicate.
//
// A join runs the same seam again on a live stream (Stream.rewind): the new
// channel's events that Redis sent before the subscription took effect are
// in history, and the replay brings them in order.

// opening writes what a stream sends first, from its writer: retry: and
// ready, then the durable events it missed since its Last-Event-ID, or a
// reset. It returns why the stream ended if a write failed, else "".
func (h *Hub) opening(ctx context.Context, s *Stream, out sink) string {
	if s.ended() != "" {
		return "" // ended while it was opening: the writer writes only the final frame
	}
	var from wire.Cursor
	reset := ""
	if s.resume != "" {
		c, err := h.opts.ParseCursor(s.resume)
		if err != nil {
			reset = wire.ResetMalformed
		}
		from = c
	}
	rooms := s.rooms()
	sid := wire.SessionID(s.session, s.User) // made here, once a stream: an idle stream holds only the token
	if !from.IsZero() {
		if err := out.write([][]byte{readyFrame(s.User, sid, rooms, h.opts.Retry, "")}); err != nil {
			return s.writeFailed(ctx)
		}
		s.replayFrom(from)
		return h.catchUp(ctx, s, out)
	}
	pos, err := h.history.Position(ctx)
	if err != nil {
		return h.redisFailed(ctx, s, "no position from redis", err)
	}
	frames := [][]byte{readyFrame(s.User, sid, rooms, h.opts.Retry, pos.String())}
	if reset != "" {
		frames = [][]byte{readyFrame(s.User, sid, rooms, h.opts.Retry, ""), h.resetFrame(pos, reset)}
	}
	if err := out.write(frames); err != nil {
		return s.writeFailed(ctx)
	}
	// Subscriptions were confirmed before pos was taken: whatever follows
	// pos arrives live. Only a channel joined meanwhile needs a replay.
	s.startAt(pos)
	return h.catchUp(ctx, s, out)
}

// catchUp runs the seam until the stream is live: passes of replay, again
// if a channel was joined during one. It returns why the stream ended if a
// write failed, else "".
func (h *Hub) catchUp(ctx context.Context, s *Stream, out sink) string {
	var horizon wire.Cursor // the last event replayed
	synced := make(map[string]bool)
	for {
		st := s.catchUpState()
		if !st.on || s.ended() != "" {
			return ""
		}
		if len(st.base) == 0 && !st.replay {
			if h.goLive(s, st.from, st.gen) {
				return ""
			}
			s.replayFrom(st.from) // durable events were skipped meanwhile
			continue
		}
		if unsynced(st.base, synced) {
			// A joined channel is read only once its subscription is in
			// force, or an event between the read and the subscription
			// would be missed.
			if err := h.sub.Sync(ctx); err != nil {
				return h.redisFailed(ctx, s, "subscription not confirmed", err)
			}
			for c := range st.base {
				synced[c] = true
			}
		}
		pos, why, ok := h.replay(ctx, s, out, st, &horizon)
		if why != "" || !ok {
			return why
		}
		if h.goLive(s, pos, st.gen) {
			return ""
		}
		// A channel was joined during the pass, or durable events were
		// skipped: another pass, from where this one stopped.
		s.replayFrom(pos)
	}
}

// redisFailed ends s after a Redis error, with a retry hint so that it
// resumes by its own id, unless the error is the client's leaving (its
// context ended). It returns what the writer returns: why the stream ended
// if it did so at once, else "" (the writer then writes the final frame).
func (h *Hub) redisFailed(ctx context.Context, s *Stream, what string, err error) string {
	if ctx.Err() != nil {
		return ReasonClient
	}
	h.log.Warn("stream ended: "+what, "user", s.User, "err", err)
	h.endRetry(s, ReasonRedis)
	return ""
}

// goLive lets live events flow on s once its replay reached pos; a stream
// whose held events overflow its queue is ended as slow, to resume from
// the id it has now. It reports false when a join calls for another pass.
func (h *Hub) goLive(s *Stream, pos wire.Cursor, gen uint64) bool {
	live, held := s.goLive(pos, gen)
	if !held {
		h.endSlow(s)
	}
	return live
}

func unsynced(base map[string]wire.Cursor, synced map[string]bool) bool {
	for c := range base {
		if !synced[c] {
			return true
		}
	}
	return false
}

// replay writes one pass of replay: pages of the stream's channels' events
// after st.from (a joined channel after its own cursor), up to the position
// the first page fixes, which it returns. ok is false when the stream was
// ended meanwhile (the writer then writes its final frame); why is set when
// a write failed.
func (h *Hub) replay(ctx context.Context, s *Stream, out sink, st catchUpState, horizon *wire.Cursor) (pos wire.Cursor, why string, ok bool) {
	var until wire.Cursor
	var finished []string // channels with nothing left up to until
	total := 0
	for {
		if s.ended() != "" {
			return pos, "", false
		}
		release, err := h.replaySlot(ctx, s)
		if err != nil {
			return pos, s.writeFailed(ctx), false
		}
		if s.ended() != "" {
			release()
			return pos, "", false
		}
		// Taken once the slot is had, however long that took: a room left
		// meanwhile is not read. Nor is one joined since the pass began
		// (left and joined again included): its base and grant are not in
		// st, and read from the pass's start it would bring the room's
		// history from before the join; the next pass reads it.
		var channels []string
		for _, c := range without(s.channelList(), finished) {
			if !s.joinedAfter(c, st.gen) {
				channels = append(channels, c)
			}
		}
		after := make([]wire.Cursor, len(channels))
		for i, c := range channels {
			// Never before from: what the stream has was written in id
			// order, and a replay must not go back behind it.
			after[i] = st.from.Max(st.base[c]).Max(*horizon)
			if g, ok := st.grants[c]; ok {
				after[i] = h.opts.AfterGrant(after[i], c, g)
			}
		}
		page, err := h.history.Read(ctx, channels, after, until, replayPageBytes)
		overhead := replayOverhead(page.Position)
		if err == nil && page.Reset == "" && until.IsZero() && page.More {
			// More than a page: the pass's size is learnt before any of it
			// is written, so that one over the limit sends its reset alone.
			// Later pages read no more than this counted (channels only go).
			var n int
			n, err = h.history.Size(ctx, channels, after, page.Position, overhead, h.opts.ReplayMaxBytes)
			if n > h.opts.ReplayMaxBytes {
				page.Reset = wire.ResetTooLarge
			}
		}
		if err != nil {
			release()
			return pos, h.redisFailed(ctx, s, "history could not be read", err), false
		}
		var frames [][]byte
		if page.Reset != "" {
			frames = [][]byte{h.resetFrame(page.Position, page.Reset)}
		} else {
			for _, ev := range page.Events {
				if !s.has(ev.Channel) {
					continue // left during the read: access ended
				}
				frame, err := wire.EncodeDurable(ev.Cursor, ev.Envelope, h.opts.MaxEventBytes)
				if err != nil {
					continue // refused when it was published live, refused again
				}
				total += len(ev.Envelope) + overhead // as Size counts
				frames = append(frames, frame)
			}
			if total > h.opts.ReplayMaxBytes {
				frames = [][]byte{h.resetFrame(page.Position, wire.ResetTooLarge)}
				page.Reset = wire.ResetTooLarge
			}
		}
		err = out.write(frames)
		release()
		if err != nil {
			return pos, s.writeFailed(ctx), false
		}
		if page.Reset != "" {
			return page.Position, "", true
		}
		h.metrics.Replayed.Add(float64(len(frames)))
		until = page.Position
		if n := len(page.Events); n > 0 {
			*horizon = page.Events[n-1].Cursor
		}
		if !page.More {
			return until, "", true
		}
		finished = append(finished, page.Finished...)
	}
}

// replayOverhead is what a replayed event counts towards REPLAY_MAX_BYTES
// besides its envelope: its id (taken as long as the pass's bound) and 16
// bytes of framing. Envelopes, not frames, so that Redis can count a pass
// (History.Size) without decoding it.
func replayOverhead(bound wire.Cursor) int { return len(bound.String()) + 16 }

// without returns channels less those in drop.
func without(channels, drop []string) []string {
	if len(drop) == 0 {
		return channels
	}
	skip := make(map[string]struct{}, len(drop))
	for _, c := range drop {
		skip[c] = struct{}{}
	}
	out := make([]string, 0, len(channels))
	for _, c := range channels {
		if _, ok := skip[c]; !ok {
			out = append(out, c)
		}
	}
	return out
}

// replaySlot waits for room among the replay pages in flight, so that a
// mass reconnect cannot pull more history into memory than
// REPLAY_INFLIGHT_BYTES allows; the returned func gives the room back. It
// returns at once, with no slot, if s ends meanwhile.
func (h *Hub) replaySlot(ctx context.Context, s *Stream) (func(), error) {
	select {
	case h.replaySlots <- struct{}{}:
	case <-s.doneChan(): // ended meanwhile (a logout): no need of a slot
		return func() {}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	h.metrics.ReplayPages.Inc()
	return func() { <-h.replaySlots; h.metrics.ReplayPages.Dec() }, nil
}
