package stream

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/ssebridge/ssebridge/wire"
)

// The simulation's checker: once a run drains, what each stream received
// is judged against the model, by the rules of docs/protocol.md.

// simEpoch orders epochs: e1 < e2 < ...
func simEpoch(c wire.Cursor) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(c.Epoch, "e"))
	return n
}

// simAfter reports whether c comes after floor, epochs included: an event
// of a later epoch is after anything of an earlier one.
func simAfter(c, floor wire.Cursor) bool {
	if floor.IsZero() {
		return true
	}
	if simEpoch(c) != simEpoch(floor) {
		return simEpoch(c) > simEpoch(floor)
	}
	return floor.Before(c)
}

// check judges every stream against the model. The rules, from
// docs/protocol.md:
//
//   - every durable event received is one the model published, with its
//     id and on its channel, received once; durable ids (and marks) only
//     grow, and change epoch only after a reset;
//   - a fresh stream gets nothing of the channels it opened with at or
//     before its ready id (a resume: its Last-Event-ID, by the order rule);
//   - a channel is received only if the stream may have it: its user's,
//     broadcast, a room of its opening, a room joined by a control message
//     that reached it, or a room its session listed at or after its own
//     session read (a recheck's join); and never from before that
//     membership's grant;
//   - nothing of a room published after the hub took the stream out of it
//     (and did not put it back);
//   - a reset only where the model lost data (epoch, foreign: a restart) or
//     trimmed it (trimmed); never too_large (the limit is out of reach) or
//     malformed;
//   - once drained, a stream still open and caught up has every durable
//     event that was not lost of: its user's channel and broadcast after
//     its start (ready id, Last-Event-ID, or its last reset); the rooms of
//     its opening, likewise, if the room was never removed since (a leave
//     published, or its session rewritten without it); each room joined
//     by a control message that reached the hub, published after the join
//     was published, and after the stream's last id when the join was
//     applied (ids only grow: what it had passed it can no longer be
//     sent), if never removed since. Where the protocol allows either, the
//     event may arrive or not: one published before the join, after its
//     grant; one of a room later removed (a leave applied drops what the
//     stream held of the room, published before the leave or not: access
//     ended); a room a recheck joined.
func (s *sim) check() []string {
	s.r.mu.Lock() // r.mu before s.mu, as everywhere
	defer s.r.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, rec := range s.streams {
		for _, f := range s.checkStream(rec) {
			out = append(out, rec.label+" ("+rec.user+", "+rec.token+"): "+f)
		}
	}
	return out
}

func (s *sim) checkStream(rec *simStream) []string {
	l := s.r.log
	var out []string
	fail := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	var resume wire.Cursor
	if rec.resume != "" {
		resume, _ = wire.ParseCursor(rec.resume)
	}
	prev := resume
	var ready, reset wire.Cursor
	resets := 0
	got := map[string]bool{}
	for _, f := range rec.frames {
		var id wire.Cursor
		if f.hasID && f.id != "" {
			var err error
			if id, err = wire.ParseCursor(f.id); err != nil {
				fail("frame with a bad id %q", f.id)
				continue
			}
		}
		switch f.event {
		case "ready":
			ready = id
			continue
		case "reset":
			resets++
			reset, prev = id, id
			var why struct{ Reason string }
			_ = json.Unmarshal([]byte(f.data), &why)
			switch why.Reason {
			case wire.ResetEpoch, wire.ResetFuture:
				if len(l.restarts) == 0 || l.restarts[0] > f.tick {
					fail("reset %q at %s with no data lost", why.Reason, f.id)
				}
			case wire.ResetTrimmed:
				if l.trims == 0 {
					fail("reset trimmed at %s with nothing trimmed", f.id)
				}
			default:
				fail("reset %q at %s", why.Reason, f.id)
			}
			continue
		case "logout":
			continue
		case "":
			if f.data == "" { // a mark: an id alone
				if !simAfter(id, prev) {
					fail("mark %s after %s: ids must grow (a new epoch only after an older one)", id, prev)
				}
				prev = id
				continue
			}
		}
		e := l.events[f.data]
		if e == nil {
			fail("unknown event %q", f.data)
			continue
		}
		if got[e.token] {
			fail("%s (%s) received twice", e.token, e.channel)
		}
		got[e.token] = true
		if e.durable {
			if e.id != id {
				fail("%s sent with id %s, published as %s", e.token, f.id, e.id)
			}
			if !simAfter(id, prev) {
				fail("%s (%s) id %s after %s: ids must grow (a new epoch only after an older one)", e.token, e.channel, id, prev)
			}
			prev = id
			if !ready.IsZero() && resets == 0 && s.opened(rec, e.channel) && !simAfter(id, ready) {
				fail("%s (%s) id %s at or before the ready id %s", e.token, e.channel, id, ready)
			}
		}
		if why := s.mayHave(rec, e); why != "" {
			fail("%s (%s, published at tick %d, id %s): %s", e.token, e.channel, e.tick, e.id, why)
		}
	}
	// Must-have: only a stream still open, caught up, once drained.
	if rec.s == nil || rec.served || rec.s.ended() != "" || simCatching(rec.s) {
		return out
	}
	start := resume
	if !ready.IsZero() {
		start = ready
		if pos, ok := s.r.log.positions[rec.label]; ok && resume.IsZero() {
			start = pos // a room joined while it opened put its ready id before
		}
	}
	if resets > 0 {
		start = reset
	}
	for _, e := range l.order {
		if got[e.token] {
			continue
		}
		why := s.mustHave(rec, e, start, reset)
		switch {
		case why == "":
		case !e.lost:
			fail("missing %s (%s, published at tick %d, id %s): %s", e.token, e.channel, e.tick, e.id, why)
		}
		// An event lost with Redis's data before the stream had it is not
		// judged: when the instance never saw it (the suffix lost was
		// never delivered) and the position is ahead again by the time
		// it recovers, nothing tells it of the loss. A loss it can see
		// (the position behind its own, another epoch) is judged by the
		// reset and order rules.
	}
	return out
}

// simCatching reports whether s is still catching up (not live).
func simCatching(s *Stream) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.catching != nil
}

// opened reports whether the stream had channel from its opening.
func (s *sim) opened(rec *simStream, channel string) bool {
	if channel == wire.BroadcastChannel || channel == wire.UserChannel(rec.user) {
		return true
	}
	room, ok := wire.RoomOf(channel)
	return ok && slices.Contains(rec.spec.Rooms, room)
}

// after reports whether c comes after the grant g ("" or unparsable: no
// bound).
func simAfterGrant(c wire.Cursor, g string) bool {
	gc, err := wire.ParseCursor(g)
	if err != nil || gc.Epoch != c.Epoch {
		return true
	}
	return gc.Before(c)
}

// mayHave says why rec must not have received e, or "".
func (s *sim) mayHave(rec *simStream, e *simEvent) string {
	if e.channel == wire.BroadcastChannel || e.channel == wire.UserChannel(rec.user) {
		return ""
	}
	room, ok := wire.RoomOf(e.channel)
	if !ok {
		return "a channel the stream never had"
	}
	if last, ok := rec.lastHas[room]; ok && last < e.tick {
		return fmt.Sprintf("published after the hub took the stream out of the room (last seen in it at tick %d)", last)
	}
	// A basis for the membership, with its grant.
	if slices.Contains(rec.spec.Rooms, room) && (simAfterGrant(e.id, rec.spec.Granted[room]) || !e.durable) {
		return ""
	}
	for _, j := range rec.joins {
		if j.room == room && (!e.durable || simAfterGrant(e.id, j.since)) {
			return ""
		}
	}
	versions := s.r.log.sessions[rec.token]
	for i, v := range versions {
		inForceSinceRead := i+1 == len(versions) || versions[i+1].tick > rec.readTick
		if inForceSinceRead &&
			v.sess != nil && v.sess.Allows(room) && (!e.durable || simAfterGrant(e.id, v.sess.Granted[room])) {
			return ""
		}
	}
	if !rec.ticket || rec.readTick == 0 {
		return "a room of a stream that never read its session"
	}
	return "no membership allows it: not a room of its opening, no join reached it, its session has not listed the room since the stream read it (at tick " + strconv.Itoa(rec.readTick) + "), or the event is from before the grant"
}

// simNever is the tick of what never happened.
const simNever = 1 << 62

// removal returns the tick of the first removal of room from rec's user
// after tick: a leave or logout published, or rec's session rewritten
// without the room (or deleted); simNever if none.
func (s *sim) removal(rec *simStream, room string, after int) int {
	l := s.r.log
	at := simNever
	for _, c := range l.controls {
		if c.tick > after && c.c.User == rec.user && (c.c.Op == wire.OpLogout || c.c.Op == wire.OpLeave && c.c.Room == room) {
			at = min(at, c.tick)
		}
	}
	for _, v := range l.sessions[rec.token] {
		if v.tick > after && (v.sess == nil || !v.sess.Allows(room)) {
			at = min(at, v.tick)
		}
	}
	return at
}

// readEarly notes when rec read e's channel, after the join j reached the
// hub, while Redis did not have the channel subscribed, and e was
// published between that read and the SUBSCRIBE taking effect: the read
// could not have it, and its live copy never came.
func (s *sim) readEarly(rec *simStream, j simJoin, e *simEvent) string {
	l := s.r.log
	for _, rd := range l.reads[rec.label] {
		if rd.tick < j.applied || rd.tick > e.tick || !slices.Contains(rd.unsubscribed, e.channel) {
			continue
		}
		next := simNever
		for _, t := range l.subscribed[e.channel] {
			if t > rd.tick {
				next = min(next, t)
			}
		}
		if e.tick < next {
			return fmt.Sprintf("; read at tick %d while Redis did not have the channel subscribed (SUBSCRIBE in force at tick %d), the event published in between", rd.tick, next)
		}
	}
	return ""
}

// mustHave says why rec should have received e, or "".
func (s *sim) mustHave(rec *simStream, e *simEvent, start, reset wire.Cursor) string {
	if !e.durable {
		return ""
	}
	if !reset.IsZero() && !simAfter(e.id, reset) {
		return ""
	}
	if e.channel == wire.BroadcastChannel || e.channel == wire.UserChannel(rec.user) {
		if simAfter(e.id, start) {
			return "a channel of the stream, after its start " + start.String()
		}
		return ""
	}
	room, ok := wire.RoomOf(e.channel)
	if !ok {
		return ""
	}
	if slices.Contains(rec.spec.Rooms, room) && simAfter(e.id, start) && s.removal(rec, room, rec.readTick) == simNever &&
		simAfterGrant(e.id, rec.spec.Granted[room]) {
		return "a room of its opening, after its start " + start.String() + ", never removed since"
	}
	for _, j := range rec.joins {
		// A join published before the stream read its session is in the
		// session it opened with: the room is one of its opening, and the
		// join changes nothing.
		if j.room == room && !j.blind && j.tick > rec.readTick && e.tick > j.tick && s.removal(rec, room, j.tick) == simNever && simAfter(e.id, j.floor) && simAfterGrant(e.id, j.since) {
			floor := "none"
			if !j.floor.IsZero() {
				floor = j.floor.String()
			}
			again := ""
			for _, c := range s.r.log.controls {
				if c.c.Op == wire.OpLeave && c.c.User == rec.user && c.c.Room == room && c.delivered > rec.readTick && c.tick < j.tick {
					again = fmt.Sprintf("; a leave of the room reached the hub at tick %d, before: a re-join", c.delivered)
				}
			}
			return fmt.Sprintf("room joined by a control message published at tick %d (the stream's id then: %s), never removed since%s%s", j.tick, floor, again, s.readEarly(rec, j, e))
		}
	}
	return ""
}
