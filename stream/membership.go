package stream

import (
	"hash/maphash"
	"slices"
	"sync"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// Channel membership: which streams receive which channel, and so which
// channels Redis must send this instance.
//
// The hub is the single owner of it. A channel is subscribed when its set
// of streams goes from empty to non-empty and unsubscribed when it empties,
// and both the change of the set and the command to Redis happen under the
// channel's stripe lock: so a subscribe and an unsubscribe of one channel
// are written to Redis in the order the set changed, and can never cross.
// The feed executes; it keeps no counts.
//
// Two kinds of lock, both picked by a hash of the channel:
//   - a stripe (mutex) serialises membership changes of a channel and is
//     held across the feed's write of SUBSCRIBE or UNSUBSCRIBE;
//   - a shard (RWMutex) guards the channel → streams map, and is held only
//     for the map's change or for one fan-out, never across I/O.
//
// Lock order: stripe, then the stream's members, then the shard.
//
// With Options.UnsubscribeDelay, a channel that empties stays subscribed
// that long, its set empty, before sweepIdle unsubscribes it: a stream
// that comes back meanwhile (a reload, a reconnect, every stream of a mass
// reconnect) costs Redis neither an UNSUBSCRIBE nor a SUBSCRIBE, and
// closing streams by the thousand does not queue their UNSUBSCRIBEs, one
// write each under their stripe, ahead of the openings' SUBSCRIBEs.

const (
	stripeCount = 256
	shardCount  = 64
)

type shard struct {
	mu   sync.RWMutex
	subs map[string]streamSet
}

// streamSet is the streams of one channel. Most channels are a user's,
// with one stream: that one is held inline, and a map is made only for a
// second (a map costs 128 bytes or more). A channel with every stream
// (broadcast) is a map, so that taking one out stays O(1).
type streamSet struct {
	one  *Stream // the only stream, while many is nil
	many map[*Stream]struct{}
	// emptied is when the set last became empty (UnixNano), while it
	// lingers subscribed (UnsubscribeDelay).
	emptied int64
}

func (set *streamSet) empty() bool { return set.one == nil && len(set.many) == 0 }

func (set *streamSet) add(s *Stream) {
	switch {
	case set.many != nil:
		set.many[s] = struct{}{}
	case set.one == nil:
		set.one = s
	default:
		set.many = map[*Stream]struct{}{set.one: {}, s: {}}
		set.one = nil
	}
}

// remove takes s out and reports whether the set is empty.
func (set *streamSet) remove(s *Stream) bool {
	if set.many == nil {
		if set.one == s {
			set.one = nil
		}
		return set.one == nil
	}
	delete(set.many, s)
	if len(set.many) == 1 {
		for last := range set.many {
			set.one = last
		}
		set.many = nil
	}
	return set.one == nil && len(set.many) == 0
}

type membership struct {
	seed    maphash.Seed
	stripes [stripeCount]sync.Mutex
	shards  [shardCount]shard

	idleMu sync.Mutex
	idle   []idleChannel // channels emptied and left subscribed, oldest first (may repeat)
}

// idleChannel is a channel left without streams, and when.
type idleChannel struct {
	channel string
	at      int64 // UnixNano
}

func (m *membership) init() {
	m.seed = maphash.MakeSeed()
	for i := range m.shards {
		m.shards[i].subs = make(map[string]streamSet)
	}
}

func (m *membership) hash(channel string) uint64 { return maphash.String(m.seed, channel) }

func (m *membership) shard(channel string) *shard {
	return &m.shards[m.hash(channel)%shardCount]
}

func (m *membership) stripe(channel string) *sync.Mutex {
	return &m.stripes[m.hash(channel)%stripeCount]
}

// attach makes s receive channel, subscribing Redis if s is its first
// stream. It does nothing when s is closed or has the channel already. The
// subscription is written, not confirmed: the caller waits on the feed's
// Sync for that.
func (h *Hub) attach(s *Stream, channel string) error {
	st := h.members.stripe(channel)
	st.Lock()
	defer st.Unlock()
	s.members.Lock()
	if s.flags&flagClosed != 0 || slices.Contains(s.channels, channel) {
		s.members.Unlock()
		return nil
	}
	s.channels = append(s.channels, channel)
	if s.flags&flagCounted != 0 {
		h.opts.Presence.arrive(channel, s.User)
	}
	s.members.Unlock()

	sh := h.members.shard(channel)
	sh.mu.Lock()
	set, had := sh.subs[channel]
	first := !had // an empty set still lingers subscribed
	set.add(s)
	sh.subs[channel] = set
	sh.mu.Unlock()
	if first {
		return h.backend.Subscribe(channel)
	}
	return nil
}

// detach stops s receiving channel, unsubscribing Redis if s was its last
// stream. It reports whether s had the channel.
func (h *Hub) detach(s *Stream, channel string) bool {
	st := h.members.stripe(channel)
	st.Lock()
	defer st.Unlock()
	s.members.Lock()
	i := slices.Index(s.channels, channel)
	if i >= 0 {
		last := len(s.channels) - 1
		s.channels[i] = s.channels[last]
		s.channels[last] = ""
		s.channels = s.channels[:last]
		if s.flags&flagCounted != 0 {
			h.opts.Presence.depart(channel, s.User, time.Now())
		}
	}
	s.members.Unlock()
	if i < 0 {
		return false
	}
	sh := h.members.shard(channel)
	sh.mu.Lock()
	set := sh.subs[channel]
	last := set.remove(s)
	linger := last && h.opts.UnsubscribeDelay > 0
	now := time.Now().UnixNano()
	switch {
	case linger:
		set.emptied = now
		sh.subs[channel] = set
	case last:
		delete(sh.subs, channel)
	default:
		sh.subs[channel] = set
	}
	sh.mu.Unlock()
	switch {
	case linger:
		h.members.idleMu.Lock()
		h.members.idle = append(h.members.idle, idleChannel{channel, now})
		h.members.idleMu.Unlock()
	case last:
		h.backend.Unsubscribe(channel)
	}
	return true
}

// sweepBatch bounds the channels one UNSUBSCRIBE of sweepIdle names.
const sweepBatch = 4096

// sweepIdle unsubscribes, in one command, up to sweepBatch of the channels
// that have been empty for Options.UnsubscribeDelay by now, and reports
// whether more may be due. Each is checked and unsubscribed under its
// stripe, as detach would, so that a stream attaching meanwhile either
// finds it still subscribed or subscribes it again after the UNSUBSCRIBE.
func (h *Hub) sweepIdle(now time.Time) (more bool) {
	m := &h.members
	cutoff := now.Add(-h.opts.UnsubscribeDelay).UnixNano()
	m.idleMu.Lock()
	due := 0
	for due < len(m.idle) && due < sweepBatch && m.idle[due].at <= cutoff {
		due++
	}
	channels := make([]string, due)
	for i, e := range m.idle[:due] {
		channels[i] = e.channel
	}
	m.idle = slices.Delete(m.idle, 0, due)
	m.idleMu.Unlock()
	if len(channels) == 0 {
		return false
	}
	// Stripes in ascending order, each once: no two sweeps or detaches
	// can wait on each other.
	stripes := make([]int, 0, len(channels))
	for _, c := range channels {
		stripes = append(stripes, int(m.hash(c)%stripeCount))
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	for _, i := range stripes {
		m.stripes[i].Lock()
	}
	var gone []string
	for _, c := range channels {
		sh := m.shard(c)
		sh.mu.Lock()
		// One attached again, or emptied since (a later entry stands for
		// it), stays.
		if set, ok := sh.subs[c]; ok && set.empty() && set.emptied <= cutoff {
			delete(sh.subs, c)
			gone = append(gone, c)
		}
		sh.mu.Unlock()
	}
	if len(gone) > 0 {
		h.backend.Unsubscribe(gone...)
	}
	for _, i := range stripes {
		m.stripes[i].Unlock()
	}
	return due == sweepBatch
}

// detachAll marks s closed, so that nothing attaches it again, and detaches
// it from every channel.
func (h *Hub) detachAll(s *Stream) {
	s.members.Lock()
	s.flags |= flagClosed
	channels := slices.Clone(s.channels)
	s.members.Unlock()
	for _, c := range channels {
		h.detach(s, c)
	}
}

// channelList returns the channels s is attached to.
func (s *Stream) channelList() []string {
	s.members.Lock()
	defer s.members.Unlock()
	return slices.Clone(s.channels)
}

// rooms returns the rooms a stream is attached to, sorted.
func (s *Stream) rooms() []string {
	var rooms []string
	for _, c := range s.channelList() {
		if r, ok := wire.RoomOf(c); ok {
			rooms = append(rooms, r)
		}
	}
	slices.Sort(rooms)
	return rooms
}

func (s *Stream) has(channel string) bool {
	s.members.Lock()
	defer s.members.Unlock()
	return slices.Contains(s.channels, channel)
}

// fanOut queues frame on every stream of channel. It never blocks on a
// stream: one whose queue is full is ended as slow.
func (h *Hub) fanOut(channel string, frame []byte, cursor wire.Cursor) {
	sh := h.members.shard(channel)
	var slow []*Stream
	sh.mu.RLock()
	set := sh.subs[channel]
	if s := set.one; s != nil && !s.offer(channel, frame, cursor) {
		slow = append(slow, s)
	}
	for s := range set.many {
		if !s.offer(channel, frame, cursor) {
			slow = append(slow, s)
		}
	}
	sh.mu.RUnlock()
	for _, s := range slow {
		h.endSlow(s)
	}
}

// allChannels returns every channel with streams.
func (h *Hub) allChannels() []string {
	var out []string
	for i := range h.members.shards {
		sh := &h.members.shards[i]
		sh.mu.RLock()
		for c, set := range sh.subs {
			if !set.empty() {
				out = append(out, c)
			}
		}
		sh.mu.RUnlock()
	}
	return out
}
