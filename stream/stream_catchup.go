package stream

import (
	"maps"

	"github.com/ssebridge/ssebridge/wire"
)

// A stream's catch-up state: what its writer must replay from history
// before live events flow again, and the live events held meanwhile. The
// hub's side, the passes of replay, is in resume.go.

// catchUp is what the writer must replay before live events flow again.
type catchUp struct {
	replay bool        // every channel must be replayed after from (a resume)
	from   wire.Cursor // where the replay starts, or the stream's id if none is needed
	// floor is the id the stream had written when the catch-up began:
	// nothing at or before it is written again, whatever a channel's base.
	floor wire.Cursor
	base  map[string]wire.Cursor // channels joined meanwhile: replayed after their own cursor
	// grants: per room channel, the position the room was granted at
	// (Spec.Granted for a resume, a join's since); the replay reads the
	// room only after it.
	grants map[string]string
	// joined: per channel, the gen its latest join was made at (rewind).
	// A pass of replay reads only the channels it began with: one joined
	// after the pass began is read by the next pass, from its own base
	// and grant, never by this one from the pass's start.
	joined map[string]uint64
	// joining counts joins between rewind and attached: their channel's
	// subscription may not be written yet, so the stream may not go live.
	joining int
	// confirmed is the generation up to which every channel's subscription
	// was confirmed by a Sync (see Hub.begin).
	confirmed uint64
	// skipping is set when held overflowed with a durable event: durable
	// events are no longer held (the next pass replays them) until a new
	// pass starts.
	skipping bool
	held     []heldEvent // live events that arrived meanwhile, in order
	size     int         // bytes in held
	// slot is the stream's place in the openings budget (Openings), held
	// from Open until its opening begins to be over: here, not in Stream,
	// which only opening streams need.
	slot *slot
}

// takeSlot takes the stream's opening slot from it, if it still holds
// one (nil otherwise).
func (s *Stream) takeSlot() *slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.catching == nil {
		return nil
	}
	sl := s.catching.slot
	s.catching.slot = nil
	return sl
}

// catchUpState is a copy of what a pass of catch-up needs.
type catchUpState struct {
	on, replay  bool
	from, floor wire.Cursor
	base        map[string]wire.Cursor
	grants      map[string]string
	gen         uint64
}

type heldEvent struct {
	frame   []byte
	cursor  wire.Cursor // zero for a live event
	channel string
}

// rewind asks the writer to replay history again before live events flow:
// channel is being joined, and what it carried between the join and the
// subscription taking effect must not be lost. The replay covers every
// channel after the stream's last id, and channel after since, and after
// grant (the position the room was granted at) if set. The caller attaches
// the channel next, then calls attached: until then the stream holds live
// events and cannot go live.
func (s *Stream) rewind(channel string, since wire.Cursor, grant string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.catching == nil {
		// A live stream's subscriptions were all confirmed.
		s.catching = &catchUp{from: s.last, floor: s.last, confirmed: s.gen}
	}
	c := s.catching
	if c.base == nil {
		c.base = make(map[string]wire.Cursor)
	}
	c.base[channel] = since
	if grant != "" {
		if c.grants == nil {
			c.grants = make(map[string]string)
		}
		c.grants[channel] = grant
	}
	s.gen++
	if c.joined == nil {
		c.joined = make(map[string]uint64)
	}
	c.joined[channel] = s.gen
	c.joining++
}

// joinedEarly records a join of a channel s has already, before s has an
// id (a new stream not started yet): its opening reads the channel from
// since, and starts there.
func (s *Stream) joinedEarly(channel string, since wire.Cursor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.catching
	if c == nil || !c.floor.IsZero() || s.resume != "" {
		return
	}
	if _, ok := c.base[channel]; ok {
		return
	}
	if c.base == nil {
		c.base = make(map[string]wire.Cursor)
	}
	c.base[channel] = since
}

// attached ends a join that rewind began, once its subscription is written
// (or failed to be): a pass of catch-up that began before it runs again,
// and one that begins after it waits on a Sync that confirms the
// subscription.
func (s *Stream) attached() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.catching; c != nil {
		c.joining--
	}
	s.gen++
	s.signal()
}

// drop forgets held events of a channel the stream just left: access was
// revoked, so nothing of it may be written from now on.
func (s *Stream) drop(channel string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.catching
	if c == nil {
		return
	}
	c.forget(func(e heldEvent) bool { return e.channel == channel })
	delete(c.base, channel)
	delete(c.grants, channel)
}

// catchUpState returns what the writer must replay, as a pass of replay
// begins.
func (s *Stream) catchUpState() catchUpState {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.catching
	if c == nil {
		return catchUpState{gen: s.gen}
	}
	c.skipping = false // from here on, what the pass does not read is held
	return catchUpState{on: true, replay: c.replay, from: c.from, floor: c.floor, base: maps.Clone(c.base), grants: maps.Clone(c.grants), gen: s.gen}
}

// generation counts the joins and skips so far, and returns the
// generation up to which subscriptions are confirmed. A pass of catch-up
// takes it before its barrier, and may end the catch-up only if it is
// unchanged (Hub.begin).
func (s *Stream) generation() (gen, confirmed uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.catching != nil {
		confirmed = s.catching.confirmed
	}
	return s.gen, confirmed
}

// confirm records that a Sync confirmed the subscriptions of every join
// up to gen.
func (s *Stream) confirm(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.catching; c != nil && c.confirmed < gen {
		c.confirmed = gen
	}
}

// joinedAfter reports whether channel was joined after gen: a pass of
// replay that began at gen must not read it.
func (s *Stream) joinedAfter(channel string, gen uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.catching != nil && s.catching.joined[channel] > gen
}

// resumeFrom makes the catch-up replay every channel after from, the id
// the stream resumes from.
func (s *Stream) resumeFrom(from wire.Cursor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.catching; c != nil {
		c.from, c.floor, c.replay = from, from, true
	}
}

// passed records a pass of replay that read read up to pos without ending
// the catch-up: the next pass reads every channel after pos, but a channel
// joined since the pass began, or not read by it, after its own base.
func (s *Stream) passed(pos wire.Cursor, gen uint64, read []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.catching
	if c == nil {
		return
	}
	c.from, c.replay = pos, true
	for _, ch := range read {
		if c.joined[ch] <= gen {
			delete(c.base, ch)
			delete(c.joined, ch)
		}
	}
}

// startAt sets the stream's id to first, where a new stream starts, and
// has its channels read after pos: nothing before pos is owed on them, and
// what follows arrives live. first is before pos when a room was joined
// before pos was taken: its events from the join are read after first.
func (s *Stream) startAt(pos, first wire.Cursor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.catching; c != nil {
		c.from, c.floor = pos, first
	}
	s.last = first
}

// goLive ends a catch-up whose replay reached pos, unless a channel was
// joined since the pass that reached it began (gen): the stream's id moves
// to pos, what was held meanwhile and is newer is queued, and live events
// flow again. held reports false when the held events overflow the queue.
func (s *Stream) goLive(pos wire.Cursor, gen uint64) (live, held bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != gen || s.catching != nil && s.catching.joining > 0 {
		return false, true
	}
	var events []heldEvent
	if s.catching != nil {
		events = s.catching.held
	}
	s.catching = nil
	s.last = s.last.Max(pos)
	held = true
	for _, e := range events {
		// As offered: past a full queue, durable events fall back to
		// history, and a live one ends the stream as slow.
		held = held && s.offerLocked(e.channel, e.frame, e.cursor)
	}
	if len(s.queue) > 0 {
		s.signal()
	}
	return true, held
}

// resetTo moves the id of a stream catching up to pos, where a reset its
// writer wrote put the client, even back (Redis lost what followed it),
// and forgets the durable events it held up to written, the last id it
// had written before: they must not come again after the reset.
func (s *Stream) resetTo(pos, written wire.Cursor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = pos
	if c := s.catching; c != nil {
		c.floor = pos // the abandoned id must not be what the next pass takes as written
		c.forget(func(e heldEvent) bool { return !e.cursor.IsZero() && !written.Before(e.cursor) })
	}
}

// forget drops the held events that drop says to.
func (c *catchUp) forget(drop func(heldEvent) bool) {
	kept := c.held[:0]
	for _, e := range c.held {
		if drop(e) {
			c.size -= len(e.frame)
			continue
		}
		kept = append(kept, e)
	}
	clear(c.held[len(kept):])
	c.held = kept
}
