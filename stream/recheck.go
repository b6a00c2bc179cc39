package stream

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// Sessions reads sessions back. store.Sessions is the real one.
type Sessions interface {
	// LookupMany reads the sessions of tokens in one round trip; errs holds
	// each one's wire.ErrNoSession or wire.ErrBadSession, err Redis's.
	LookupMany(ctx context.Context, tokens []string) (sessions []wire.Session, errs []error, err error)
}

// Recheck holds the open streams to their sessions as they are now. The
// session in Redis is the source of truth; control messages are only the
// fast path, and can be missed (published while this instance was away
// from Redis, or never sent). So every interval, and at once after the
// feed reconnects (RecheckSoon), the sessions of all open streams are read
// in pipelined round trips of a thousand, and:
//   - a stream whose session is gone or malformed ends with logout;
//   - a stream whose session now names another user ends with a retry
//     hint, to come back as whoever the session is now;
//   - a stream leaves every room its session no longer lists, and one
//     opened without ?rooms= joins every room its session gained; a
//     stream that Open is still attaching keeps its rooms until the next
//     recheck.
//
// A stream is judged only by a read newer than its own authorization: one
// registered by Open after the recheck began (its handler's read of the
// session may be newer than the recheck's) is left for the next recheck.
// Otherwise a read taken before the backend rewrote the session (a room
// removed or added, without a control message) would join a tab opened
// since to the removed room, or make it leave the added one, which with
// ?rooms= never comes back.
//
// While Redis is unreachable nothing is changed.
func (h *Hub) Recheck(ctx context.Context, sessions Sessions, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.recheckNow:
		}
		if err := h.recheck(ctx, sessions); err != nil && ctx.Err() == nil {
			h.log.Warn("session recheck skipped", "err", err)
		}
	}
}

// RecheckSoon asks Recheck to run now rather than at its next interval.
func (h *Hub) RecheckSoon() {
	select {
	case h.recheckNow <- struct{}{}:
	default:
	}
}

func (h *Hub) recheck(ctx context.Context, sessions Sessions) error {
	h.mu.Lock()
	// Every read of this recheck begins after this point, and every
	// stream registered before it had its session read before it: those,
	// stamped before, are the ones its reads may judge (judged).
	h.rechecks++
	epoch := h.rechecks
	tokens := make([]string, 0, len(h.sessions))
	for t := range h.sessions {
		tokens = append(tokens, t)
	}
	h.mu.Unlock()
	// In batches: a round trip each, and at most recheckBatch sessions
	// (each up to MAX_SESSION_BYTES) in memory at once.
	for batch := range slices.Chunk(tokens, recheckBatch) {
		if err := h.recheckBatch(ctx, sessions, batch, epoch); err != nil {
			return err
		}
	}
	return nil
}

const recheckBatch = 1000

func (h *Hub) recheckBatch(ctx context.Context, sessions Sessions, tokens []string, epoch uint32) error {
	// A control message applied after the read is newer than what was
	// read: those users' streams are left for the next recheck.
	ticket := h.controlPoint()
	// A room gained is replayed from before the read: what the feed had
	// delivered in publish order by then (Hub.inOrder).
	since := *h.inOrder.Load()
	found, errs, err := sessions.LookupMany(ctx, tokens)
	if err != nil {
		return err
	}
	for i, token := range tokens {
		switch {
		case errors.Is(errs[i], wire.ErrNoSession), errors.Is(errs[i], wire.ErrBadSession):
			for _, s := range h.judged(token, epoch) {
				if s.finish(ReasonSession, logoutFrame) {
					h.metrics.Rechecked.WithLabelValues("ended").Inc()
				}
			}
		case errs[i] != nil:
			// Unreadable now: judged at the next recheck.
		case h.controlledSince(ticket, found[i].User):
		default:
			h.applySession(h.judged(token, epoch), found[i], since)
		}
	}
	return nil
}

// controlledSince reports whether a control message for user came after t
// (or too many came to tell).
func (h *Hub) controlledSince(t ControlPoint, user string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	missed, ok := h.controls.since(t, user)
	return !ok || len(missed) > 0
}

// applySession brings the streams of a session in line with it: a stream leaves the
// rooms the session no longer lists, and one opened with all of its
// session's rooms joins those it gained (a join published while this
// instance was away from Redis is not lost).
func (h *Hub) applySession(streams []*Stream, sess wire.Session, since wire.Cursor) {
	for _, s := range streams {
		if s.User != sess.User {
			h.endRetry(s, ReasonSession)
			h.metrics.Rechecked.WithLabelValues("user_changed").Inc()
			continue
		}
		if h.attaching(s) {
			// Open is attaching it to the rooms of a session read moments
			// ago: a room not attached yet is no room gained, and joined
			// here it would be replayed from the join, not from the
			// stream's Last-Event-ID (what the room carried in between
			// was lost), and a room left here could be attached again
			// by Open. Judged at the next recheck.
			continue
		}
		for _, c := range s.channelList() {
			if room, ok := wire.RoomOf(c); ok && !sess.Allows(room) {
				h.leave(s, c)
				h.metrics.Rechecked.WithLabelValues("left_room").Inc()
			}
		}
		if !s.allRooms {
			continue
		}
		for _, room := range sess.Rooms {
			if c := wire.RoomChannel(room); !s.has(c) {
				h.join(s, c, sess.Granted[room], since)
				h.metrics.Rechecked.WithLabelValues("joined_room").Inc()
			}
		}
	}
}

// attaching reports whether Open is still attaching s to its channels.
func (h *Hub) attaching(s *Stream) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return s.attaching
}

// judged returns the streams of a session that a recheck begun at epoch
// may judge: those registered before it began (see recheck).
func (h *Hub) judged(token string, epoch uint32) []*Stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*Stream
	for _, s := range h.sessions[token] {
		if int32(epoch-s.authorized) > 0 {
			out = append(out, s)
		}
	}
	return out
}
