package stream

import "github.com/ssebridge/ssebridge/wire"

// A stream's queue: the hub offers it frames without ever waiting, and its
// writer takes them in batches. A queue that overflows with durable events
// falls back to a catch-up from history; with a live event, it ends the
// stream as slow.

// offer queues a frame of channel without blocking; cursor is the id of a
// durable event, zero for a live one. It reports false when the queue is
// full of a live event, in events or in bytes: the caller then ends the
// stream as slow. A durable event that does not fit is had again from
// history: the stream catches up from there instead (fallBack).
func (s *Stream) offer(channel string, frame []byte, cursor wire.Cursor) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.offerLocked(channel, frame, cursor)
}

func (s *Stream) offerLocked(channel string, frame []byte, cursor wire.Cursor) bool {
	switch {
	case s.ending != "":
		return true // already on its way out; nothing more to do
	case s.catching != nil:
		c := s.catching
		if c.skipping && !cursor.IsZero() {
			// History has it: a pass that begins after it reads it, and
			// one begun before it must not go live without it.
			s.skipped()
			return true
		}
		if len(c.held) >= s.hub.opts.QueueEvents || c.size+len(frame) > s.hub.opts.QueueBytes {
			if cursor.IsZero() {
				return false // a live event cannot be had again: slow
			}
			// A durable event is in history: rather than end the stream,
			// skip durable events for now and run another pass of replay
			// once this one is done (gen tells the writer).
			c.skipping = true
			// The next pass reads the held durable events again (this one
			// cannot go live): their room is freed, or every later one would
			// overflow again and no pass could go live.
			c.forget(func(e heldEvent) bool { return !e.cursor.IsZero() })
			s.skipped()
			return true
		}
		c.held = append(c.held, heldEvent{frame, cursor, channel})
		c.size += len(frame)
		return true
	}
	return s.queueLocked(frame, cursor)
}

// skipped counts a durable event a stream catching up did not hold: a pass
// of catch-up whose generation was taken before it cannot go live (the
// event may follow its bound), and runs again. A skip needs no
// subscription confirmed, so it moves the confirmed generation on with it
// when nothing else waited for confirmation: the next pass may go live.
func (s *Stream) skipped() {
	c := s.catching
	if c.confirmed == s.gen {
		c.confirmed++
	}
	s.gen++
}

func (s *Stream) queueLocked(frame []byte, cursor wire.Cursor) bool {
	if !cursor.IsZero() {
		if !s.last.Before(cursor) {
			return true // replayed already
		}
		if !s.last.IsZero() && s.last.Epoch != cursor.Epoch {
			// Redis lost its data between the two: a stream moves to a
			// new epoch only by a reset or a replay (which read the new
			// epoch's history), never by a live event, and an event of
			// the epoch it left is one Redis no longer has.
			return true
		}
	}
	if len(s.queue) >= s.hub.opts.QueueEvents || s.queued+len(frame) > s.hub.opts.QueueBytes {
		if cursor.IsZero() {
			return false // a live event cannot be had again: slow
		}
		s.fallBack()
		return true
	}
	if !cursor.IsZero() {
		s.last = s.last.Max(cursor) // cursor itself, but per partition in cluster mode
	}
	s.queue = append(s.queue, frame)
	s.queued += len(frame)
	if len(s.queue) == 1 {
		s.signal() // a longer queue means the writer was woken already
	}
	return true
}

// fallBack makes a live stream whose queue is full catch up from history
// instead of being ended as slow: a burst of durable events (a recovery
// after a gap, a feed that was late, a client that slowed down a while)
// is had again from Redis at the pace the client reads, through the
// paced replay. What is queued is written first; the replay reads every
// channel after the last event queued, and durable events that arrive
// meanwhile are skipped (it reads them). Only a live event, which history
// does not have, still ends a stream as slow.
func (s *Stream) fallBack() {
	s.catching = &catchUp{
		replay: true, from: s.last, floor: s.last,
		confirmed: s.gen, // a live stream's subscriptions were all confirmed
		skipping:  true,
	}
	s.skipped()
	s.hub.metrics.FellBack.Inc()
	s.signal()
}

// offerReset queues a reset that moves the stream's id to pos. A stream
// catching up runs another pass instead, whose read of history sees the
// same (a pass that read before Redis lost its data would otherwise take
// the stream live past it), and forgets the durable events it held: they
// came before the loss, and are replayed or lost with it.
func (s *Stream) offerReset(reset []byte, pos wire.Cursor) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ending != "" {
		return true
	}
	if c := s.catching; c != nil {
		c.forget(func(e heldEvent) bool { return !e.cursor.IsZero() })
		s.gen++
		return true
	}
	if len(s.queue) >= s.hub.opts.QueueEvents || s.queued+len(reset) > s.hub.opts.QueueBytes {
		return false
	}
	s.queue = append(s.queue, reset)
	s.queued += len(reset)
	s.last = pos
	s.signal()
	return true
}

// take empties the queue into the caller's hands and puts spare (emptied)
// in its place, so that the writer and the hub trade two arrays back and
// forth instead of allocating one per batch. Once the stream is ending,
// final follows the batch; rewind says that a catch-up must run next.
func (s *Stream) take(spare [][]byte) (batch [][]byte, ending string, rewind bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	batch = s.queue
	s.queue, s.queued = spare[:0], 0
	if s.ending != "" {
		if s.final != nil {
			batch = append(batch, s.final)
			s.final = nil
		}
		return batch, s.ending, false
	}
	return batch, "", s.catching != nil
}
