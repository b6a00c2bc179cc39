package stream

import (
	"cmp"
	"context"
	"log/slog"

	"github.com/ssebridge/ssebridge/wire"
)

// The resume seam, in one place.
//
// A stream holds live events (Stream.catching) from the moment it is made
// until its writer has written what it must replay; meanwhile Open has
// attached it and Redis has confirmed its subscriptions, so nothing
// published after that point can miss it. The writer then runs passes of
// catch-up (Hub.begin says the order each keeps):
//
//  1. a pass fixes its bound P, waits for the feed to have delivered what
//     was published up to P, and reads pages of history up to P (every
//     event up to P was published before the read began, so the pages add
//     up to one snapshot, however much is published during the replay),
//     writing each page straight to the client: a replay is paced by the
//     client and by REPLAY_INFLIGHT_BYTES, never by the live queue's
//     slow-reader rule;
//  2. it moves the stream's last id to P and queues what was held,
//     dropping any durable event at or before P (it was in the replay): no
//     gap, no duplicate. A join during the pass calls for another pass,
//     from P (the joined room from its join).
//
// A join runs the same seam again on a live stream (Stream.rewind): the new
// channel's events that Redis sent before the subscription took effect are
// in history, and the replay brings them in order.

// opening writes what a stream sends first, from its writer: retry: and
// ready, then the durable events it missed since its Last-Event-ID, or a
// reset. It returns why the stream ended if a write failed, else "".
func (h *Hub) opening(ctx context.Context, s *Stream, out sink) string {
	// Taken now, given back when the opening is over: the next one may begin.
	defer s.takeSlot().free(slotClaimed)
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
	sid := wire.SessionID(s.session, s.User) // made here, once a stream: an idle stream holds only the token
	if !from.IsZero() {
		if err := out.write([][]byte{readyFrame(s.User, sid, s.rooms(), h.opts.Retry, "")}); err != nil {
			return s.writeFailed(ctx)
		}
		s.resumeFrom(from)
		return h.catchUp(ctx, s, out)
	}
	// Subscriptions were confirmed before pos was taken: whatever follows
	// pos arrives live. A room joined before pos was taken (published
	// before it: the barrier saw to that) is read from its join, and the
	// ready id is the join's, so that ids only grow; the stream's other
	// channels are still read from pos (nothing from before the stream
	// opened: a resume from the ready id would read them from there).
	first, err := h.begin(ctx, s, true)
	if err != nil {
		return h.redisFailed(ctx, s, "no position from redis, or subscriptions not confirmed", err)
	}
	pos, rooms := first.bound, s.rooms()
	start := pos
	for _, b := range first.st.base {
		// Of another epoch: a join logged before Redis lost its data, and
		// no position now.
		if !b.IsZero() && b.Epoch == start.Epoch && b.Before(start) {
			start = b
		}
	}
	frames := [][]byte{readyFrame(s.User, sid, rooms, h.opts.Retry, start.String())}
	if reset != "" {
		frames = [][]byte{readyFrame(s.User, sid, rooms, h.opts.Retry, ""), h.resetFrame(start, reset)}
	}
	if err := out.write(frames); err != nil {
		return s.writeFailed(ctx)
	}
	s.startAt(pos, start)
	first.st.from, first.st.floor = pos, start
	return h.catchUpFrom(ctx, s, out, first)
}

// A pass of catch-up reads history up to a bound. Its order is what makes
// it exact, and every reader of history keeps it: the bound first; then a
// barrier on the feed (Sync), so that every message published up to the
// bound has been delivered and applied (a join among them has rewound the
// stream); only then the stream's channels. A join applied after the
// barrier was published after the bound: its room's events follow the
// bound, and the next pass reads them.
//
// A pass may end the catch-up only if no join came since it began (its
// generation is unchanged) and every subscription was confirmed by a Sync
// that returned before the bound was taken: an event published after the
// bound on a channel whose subscription took effect later would be neither
// read nor delivered. Otherwise another pass runs, whose bound follows
// this pass's Sync.
type pass struct {
	bound wire.Cursor  // zero: not begun
	gen   uint64       // the stream's generation before the barrier
	live  bool         // every join up to gen was confirmed before bound
	st    catchUpState // taken after the barrier
}

// begin starts a pass up to the position now: read, not taken (a read of
// no channel), unless take (a new stream's first id is a taken one).
func (h *Hub) begin(ctx context.Context, s *Stream, take bool) (pass, error) {
	ctx, cancel := h.bounded(ctx)
	defer cancel()
	// The generation before the bound: a durable event skipped after it
	// may follow the bound, and the pass may not go live without it.
	gen, confirmed := s.generation()
	var bound wire.Cursor
	if take {
		pos, err := h.backend.Position(ctx)
		if err != nil {
			return pass{}, err
		}
		bound = pos
	} else {
		now, err := h.positions.Do(ctx, struct{}{})
		if err = cmp.Or(err, now.err); err != nil {
			return pass{}, err
		}
		bound = now.pos
	}
	if err := h.backend.Sync(ctx); err != nil {
		return pass{}, err
	}
	s.confirm(gen)
	return pass{bound: bound, gen: gen, live: gen <= confirmed, st: s.catchUpState()}, nil
}

// catchUp runs the seam until the stream is live: passes of replay, again
// if a channel was joined during one. It returns why the stream ended if a
// write failed, else "".
func (h *Hub) catchUp(ctx context.Context, s *Stream, out sink) string {
	return h.catchUpFrom(ctx, s, out, pass{})
}

// catchUpFrom is catchUp with its first pass begun (by the opening).
func (h *Hub) catchUpFrom(ctx context.Context, s *Stream, out sink, p pass) string {
	var written wire.Cursor // the last id written: nothing at or before it is written again
	for {
		if p.bound.IsZero() {
			var err error
			if p, err = h.begin(ctx, s, false); err != nil {
				return h.redisFailed(ctx, s, "subscription not confirmed", err)
			}
		}
		st := p.st
		if !st.on || s.ended() != "" {
			return ""
		}
		written = written.Max(st.floor)
		if p.bound.Epoch == written.Epoch && p.bound.Before(written) {
			// Redis came back behind what the stream has (a restart from
			// an older snapshot): its ids after the bound will be given
			// out again, and the stream must start over from there.
			if err := out.write([][]byte{h.resetFrame(p.bound, wire.ResetFuture)}); err != nil {
				return s.writeFailed(ctx)
			}
			s.resetTo(p.bound, written)
			written, st.from = p.bound, p.bound
			// Held events in (bound, old written] were forgotten, and
			// some may be new ones with ids given out again: another pass
			// reads them from history, up to a bound taken after.
			p.live = false
		}
		if len(st.base) == 0 && !st.replay {
			// Nothing joined, nothing skipped: the stream's channels were
			// subscribed before st.from, and what follows arrives live.
			if p.live && h.goLive(s, st.from, p.gen) {
				return ""
			}
			s.passed(st.from, st.gen, nil) // durable events were skipped meanwhile
			p = pass{}
			continue
		}
		read, end, why, ok := h.replay(ctx, s, out, st, p.bound, &written)
		if why != "" || !ok {
			return why
		}
		if p.live && h.goLive(s, end, p.gen) {
			return ""
		}
		// A channel was joined during the pass, or durable events were
		// skipped: another pass, from where this one stopped.
		s.passed(end, st.gen, read)
		p = pass{}
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
	// One line a minute: a Redis that stalls ends every stream at once.
	h.limited.Write(slog.LevelWarn, "ended:"+what, "stream ended: "+what, "user", s.User, "err", err)
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

// replay writes one pass of replay: pages of the stream's channels' events
// after st.from (a joined channel after its own base), never at or before
// written, up to until. It returns the channels the pass read, and where
// it ended: until, or the position of a reset it wrote. ok is false when
// the stream was ended meanwhile (the writer then writes its final frame);
// why is set when a write failed.
func (h *Hub) replay(ctx context.Context, s *Stream, out sink, st catchUpState, until wire.Cursor, written *wire.Cursor) (read []string, end wire.Cursor, why string, ok bool) {
	var finished []string // channels with nothing left up to until
	total := 0            // what the pass wrote counts towards REPLAY_MAX_BYTES
	for first := true; ; first = false {
		if s.ended() != "" {
			return read, end, "", false
		}
		release, err := h.replaySlot(ctx, s)
		if err != nil {
			return read, end, s.writeFailed(ctx), false
		}
		if s.ended() != "" {
			release()
			return read, end, "", false
		}
		if first {
			read = passChannels(s, st)
		}
		channels, after := h.pageAfter(s, st, without(read, finished), *written)
		page, err := h.readPage(ctx, channels, after, until, first)
		if err != nil {
			release()
			return read, end, h.redisFailed(ctx, s, "history could not be read", err), false
		}
		frames := h.pageFrames(s, &page, &total)
		err = out.write(frames)
		release()
		if err != nil {
			return read, end, s.writeFailed(ctx), false
		}
		if page.Reset != "" {
			s.resetTo(page.Position, *written)
			*written = page.Position
			return read, page.Position, "", true
		}
		h.metrics.Replayed.Add(float64(len(frames)))
		if n := len(page.Events); n > 0 {
			*written = page.Events[n-1].Cursor
		}
		if !page.More {
			return read, until, "", true
		}
		finished = append(finished, page.Finished...)
	}
}

// passChannels are the channels a replay pass reads, taken after its
// barrier (Hub.begin), once its first slot is had. Not one joined since
// the pass began (left and joined again included): its base and grant are
// not in st, and read from the pass's start it would bring the room's
// history from before the join; the next pass reads it.
func passChannels(s *Stream, st catchUpState) []string {
	var read []string
	for _, c := range s.channelList() {
		if !s.joinedAfter(c, st.gen) {
			read = append(read, c)
		}
	}
	return read
}

// pageAfter returns those of channels a page still reads (not a room left
// meanwhile) and, for each, the id it reads after: its base in the pass,
// never at or before written (what the stream has was written in id
// order, and a replay must not go back behind it), never before its grant.
func (h *Hub) pageAfter(s *Stream, st catchUpState, channels []string, written wire.Cursor) ([]string, []wire.Cursor) {
	var still []string
	for _, c := range channels {
		if s.has(c) && !s.joinedAfter(c, st.gen) {
			still = append(still, c)
		}
	}
	after := make([]wire.Cursor, len(still))
	for i, c := range still {
		b, joined := st.base[c]
		if !joined {
			b = st.from
		}
		after[i] = b.Max(written)
		if g, ok := st.grants[c]; ok {
			after[i] = h.opts.AfterGrant(after[i], c, g)
		}
	}
	return still, after
}

// readPage reads a page of replay. The first of a pass that has more also
// learns the pass's size before any of it is written, so that one over
// REPLAY_MAX_BYTES sends its reset alone (later pages read no more than
// this counted: channels only go).
func (h *Hub) readPage(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, first bool) (wire.Page, error) {
	ctx, cancel := h.bounded(ctx)
	defer cancel()
	page, err := h.backend.Read(ctx, channels, after, until, replayPageBytes)
	if err != nil || page.Reset != "" || !first || !page.More {
		return page, err
	}
	n, err := h.backend.Size(ctx, channels, after, page.Position, replayOverhead(page.Position), h.opts.ReplayMaxBytes)
	if n > h.opts.ReplayMaxBytes {
		page.Reset = wire.ResetTooLarge
	}
	return page, err
}

// pageFrames encodes a page for s: its reset, or those of its events on a
// channel s still has (one left during the read: access ended), adding to
// *total what they count towards REPLAY_MAX_BYTES. Past it, the frames are
// a reset instead, and page.Reset says so.
func (h *Hub) pageFrames(s *Stream, page *wire.Page, total *int) [][]byte {
	if page.Reset != "" {
		return [][]byte{h.resetFrame(page.Position, page.Reset)}
	}
	overhead := replayOverhead(page.Position)
	var frames [][]byte
	for _, ev := range page.Events {
		if !s.has(ev.Channel) {
			continue
		}
		frame, err := wire.EncodeDurable(ev.Cursor, ev.Envelope, h.opts.MaxEventBytes)
		if err != nil {
			continue // refused when it was published live, refused again
		}
		*total += len(ev.Envelope) + overhead // as Size counts
		frames = append(frames, frame)
	}
	if *total > h.opts.ReplayMaxBytes {
		page.Reset = wire.ResetTooLarge
		return [][]byte{h.resetFrame(page.Position, wire.ResetTooLarge)}
	}
	return frames
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
