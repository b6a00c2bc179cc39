package stream

import (
	"context"
	"fmt"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// Spec says whose stream to open.
type Spec struct {
	User    string
	Session string // the session token, to end the stream when the session goes
	Rooms   []string
	// AllRooms says Rooms are all of the session's (no ?rooms=): the
	// session recheck then also joins rooms the session gained.
	AllRooms bool
	Resume   string // Last-Event-ID: the id of the last event the browser got, if any
	// Granted is the session's grant positions per room: a resume never
	// replays a room from before its grant.
	Granted map[string]string
	// ControlPoint, taken before the session was read, lets Open apply the
	// control messages that arrived between that read and the stream's
	// registration, which would otherwise miss it.
	ControlPoint ControlPoint
}

// Admits says whether Open would take a stream of user now: nil, or the
// error Open would return for a limit or a shutdown. It takes the stream
// to be a resume (as a page's reconnection is): a user out of resumes gets
// a *ResumeLimitError.
func (h *Hub) Admits(user string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.admitsLocked(user); err != nil {
		return err
	}
	if wait, ok := h.resumes.allow(user, time.Now(), false); !ok {
		return &ResumeLimitError{Wait: wait}
	}
	return nil
}

func (h *Hub) admitsLocked(user string) error {
	switch {
	case h.stopping:
		return ErrShuttingDown
	case h.open >= h.opts.MaxStreams:
		return ErrTooManyStreams
	case len(h.users[user]) >= h.opts.MaxStreamsPerUser:
		return ErrTooManyForUser
	}
	return nil
}

// Open registers a stream for spec's user, attached to the user's channel,
// the broadcast channel and spec's rooms, and returns once Redis has
// confirmed the subscriptions: from then on nothing published on them can
// miss the stream. What the stream sends first (ready, then a replay or a
// reset) is written by its writer. Open fails when a limit is reached, when
// the hub is shutting down, or when Redis does not confirm.
func (h *Hub) Open(ctx context.Context, spec Spec) (*Stream, error) {
	sl, err := h.opts.Openings.claim(ctx)
	if err != nil {
		return nil, err
	}
	s := newStream(h, spec.User, spec.Session)
	s.catching.slot = sl
	s.resume = spec.Resume
	// A resume reads its rooms from its Last-Event-ID, and a new stream may
	// too, from before its position (a room joined before it was taken):
	// never from before the room's grant.
	s.catching.grants = grantsOf(spec.Rooms, spec.Granted)
	s.allRooms = spec.AllRooms
	s.channels = make([]string, 0, 2+len(spec.Rooms)) // its user's, broadcast, rooms

	missed, err := h.register(s, spec)
	if err != nil {
		sl.free(slotClaimed)
		return nil, err
	}
	channels := []string{wire.UserChannel(spec.User), wire.BroadcastChannel}
	for _, r := range spec.Rooms {
		channels = append(channels, wire.RoomChannel(r))
	}
	var subErr error
	for _, c := range channels {
		if err := h.attach(s, c); err != nil && subErr == nil {
			subErr = err
		}
	}
	h.applyMissed(s, missed)
	if subErr == nil {
		// Bounded: a stream is better refused with a Retry-After than left
		// waiting on a Redis that does not answer.
		gen, _ := s.generation()
		sctx, cancel := h.bounded(ctx)
		subErr = h.backend.Sync(sctx)
		cancel()
		s.confirm(gen)
	}
	if subErr != nil {
		h.Close(s, "")
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %w", ErrNotSubscribed, subErr)
	}
	h.count(s)
	return s, nil
}

// count makes presence count s, confirmed, in its channels: from now on
// attach and detach tell presence of its changes. A stream closed
// meanwhile is not counted.
func (h *Hub) count(s *Stream) {
	if h.opts.Presence == nil {
		return
	}
	s.members.Lock()
	defer s.members.Unlock()
	if s.flags&flagClosed != 0 {
		return
	}
	s.flags |= flagCounted
	for _, c := range s.channels {
		h.opts.Presence.arrive(c, s.User)
	}
}

// register counts s against the limits and indexes it by user and
// session, marked as attaching; it returns the control messages for s
// logged since spec's control point, which s missed.
func (h *Hub) register(s *Stream, spec Spec) (missed []control, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.admitsLocked(spec.User); err != nil {
		return nil, err
	}
	missed, ok := h.controls.since(spec.ControlPoint, spec.User)
	if !ok {
		return nil, ErrControlBacklog
	}
	if spec.Resume != "" {
		wait, ok := h.resumes.allow(spec.User, time.Now(), true)
		h.metrics.ResumeUsers.Set(float64(h.resumes.users()))
		if !ok {
			return nil, &ResumeLimitError{Wait: wait}
		}
	}
	h.open++
	h.streams.Add(1)
	// The handler read the session before Open: a recheck begun from here
	// on may have read it before that read, and does not judge the stream.
	s.authorized = h.rechecks
	addTo(h.users, spec.User, s)
	addTo(h.sessions, spec.Session, s)
	s.attaching = true // control messages for it wait in h.pending until it is attached
	h.metrics.Open.Inc()
	return missed, nil
}

// applyMissed applies the control messages logged before s registered,
// then those that came while it attached, in the order they were
// published: s stays "attaching" (so newer ones keep queueing behind)
// until none is left.
func (h *Hub) applyMissed(s *Stream, missed []control) {
	for {
		for _, c := range missed {
			h.apply(s, c)
		}
		h.mu.Lock()
		missed = h.pending[s]
		delete(h.pending, s)
		if len(missed) == 0 {
			s.attaching = false
		}
		h.mu.Unlock()
		if len(missed) == 0 {
			return
		}
	}
}
