package stream

import (
	"maps"
	"sync"
	"sync/atomic"

	"github.com/ssebridge/ssebridge/wire"
)

// Why a stream ended. Each is a label of the streams-closed metric.
const (
	ReasonClient   = "client"   // the browser went away
	ReasonSlow     = "slow"     // its queue overflowed
	ReasonLate     = "late"     // its queue overflowed with a burst of live events while the feed was late
	ReasonLogout   = "logout"   // the backend logged the user out
	ReasonSession  = "session"  // the session key is gone or now names another user
	ReasonShutdown = "shutdown" // this instance is stopping
	ReasonWrite    = "write"    // a write failed or timed out
	ReasonRedis    = "redis"    // history could not be read, or a subscription not confirmed
	ReasonUpload   = "upload"   // the client sent bytes on the stream's connection
)

// Stream is one open EventSource connection. The hub queues encoded events
// on it without ever waiting; one writer (a goroutine, or an event loop:
// Hub.Serve chooses) writes them out. Streams are made by Hub.Open.
//
// Its fields have three owners. members guards the membership fields and
// is only taken inside a channel's stripe lock (membership.go). mu guards
// the queue and the catch-up state, and is never held while taking another
// lock. The writer alone touches the connection.
type Stream struct {
	User    string
	session string
	resume  string // the Last-Event-ID it was opened with
	hub     *Hub

	// Guarded by the hub's mu: whether Open is still attaching it (control
	// messages for it wait in the hub's pending meanwhile), and whether
	// Close ran.
	attaching bool
	removed   bool

	allRooms bool // opened with all of its session's rooms (no ?rooms=)
	closed   bool // guarded by members: Close has run, attach nothing more
	// authorized is the hub's recheck count (Hub.rechecks) when Open
	// registered the stream, under the hub's mu; its session was read
	// before. A recheck judges the stream only by a read it began after
	// that (recheck.go). Four bytes, in what was the padding before
	// members: the struct stays 256 bytes.
	authorized uint32

	// An idle stream is held by the thousand: its fields are kept to what
	// every stream needs (256 bytes), and what only some need is made when
	// needed (catching, wake, done).

	members  sync.Mutex
	channels []string // logical channels the stream is attached to: a few, MaxRooms+2 at most

	mu       sync.Mutex
	queue    [][]byte      // frames shared with every other stream they go to
	queued   int           // bytes in queue
	ending   string        // why the stream is ending; "" while it is open
	final    []byte        // written after everything else once ending is set
	last     wire.Cursor   // the newest durable event queued or replayed: one at or before it is a duplicate
	catching *catchUp      // while set, the writer replays history and live events wait in held
	gen      uint64        // counts joins and skips, so that a pass of catch-up knows it must run again
	done     chan struct{} // closed once ending is set, for waits that must not outlast it; made by doneChan

	onLoop atomic.Pointer[loopConn]      // the stream's place on an event loop, while it is on one
	wake   atomic.Pointer[chan struct{}] // the writer goroutine's (serve), while it runs one
}

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

func newStream(h *Hub, user, session string) *Stream {
	return &Stream{
		User:    user,
		session: session,
		hub:     h,
		// Until its opening is written, a stream only holds.
		catching: &catchUp{},
	}
}

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

// position is the newest durable event queued or replayed on the stream.
func (s *Stream) position() wire.Cursor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// end asks the writer to stop: what is still queued is dropped, and final
// (if any) is written instead. It reports whether this call ended the
// stream.
func (s *Stream) end(reason string, final []byte) bool {
	return s.stop(reason, final, dropQueued)
}

// finish asks the writer to stop once it has written what is queued, then
// final.
func (s *Stream) finish(reason string, final []byte) bool {
	return s.stop(reason, final, keepQueued)
}

type endMode bool

const (
	dropQueued endMode = false
	keepQueued endMode = true
)

func (s *Stream) stop(reason string, final []byte, mode endMode) bool {
	s.mu.Lock()
	if s.ending != "" {
		s.mu.Unlock()
		return false
	}
	s.ending, s.final = reason, final
	if s.done != nil {
		close(s.done)
	}
	if mode == dropQueued {
		s.queue, s.queued = nil, 0
	}
	if s.catching != nil {
		s.catching.held, s.catching.size = nil, 0
	}
	s.mu.Unlock()
	s.signal()
	return true
}

// ended reports why the stream is ending, or "".
func (s *Stream) ended() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ending
}

// doneChan returns a channel closed once the stream is ending. It is made
// on the first call: few streams ever wait on it.
func (s *Stream) doneChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		s.done = make(chan struct{})
		if s.ending != "" {
			close(s.done)
		}
	}
	return s.done
}

// signal wakes the stream's writer: its loop, or its goroutine. With
// neither (in serveUntilLoop, or before its writer started) there is nobody to
// wake: the writer takes the queue when it starts, or on its loop.
func (s *Stream) signal() {
	if c := s.onLoop.Load(); c != nil {
		c.ready()
		return
	}
	if w := s.wake.Load(); w != nil {
		select {
		case *w <- struct{}{}:
		default:
		}
	}
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
