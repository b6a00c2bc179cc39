package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// ErrControlBacklog means more control messages arrived while a stream was
// being opened than the hub remembers, so it cannot know which of them
// concern the stream: the stream is refused, to be retried.
var ErrControlBacklog = errors.New("too many control messages while the stream was opening")

// errTooManyRooms labels a join refused because the stream has MaxRooms.
var errTooManyRooms = errors.New("too_many_rooms")

// controlLogSize is how many control messages the hub remembers for the
// streams being opened.
const controlLogSize = 4096

// ControlPoint marks a point in the sequence of control messages.
type ControlPoint struct {
	seq uint64
	set bool
}

// ControlPoint returns the current point in the sequence of control messages.
// Taken before a session is read and given to Open, it lets Open apply to
// the new stream what was published in between. It waits first for the
// feed to have delivered every control message published before it (a
// barrier, Sync): one published before the session was read, and so
// already in it, but delivered late, would otherwise be applied again
// over the session (a stale leave taking away a room the session grants
// again).
func (h *Hub) ControlPoint(ctx context.Context) (ControlPoint, error) {
	ctx, cancel := h.bounded(ctx)
	defer cancel()
	if err := h.backend.Sync(ctx); err != nil {
		return ControlPoint{}, err
	}
	return h.controlPoint(), nil
}

func (h *Hub) controlPoint() ControlPoint {
	h.mu.Lock()
	defer h.mu.Unlock()
	return ControlPoint{seq: h.controls.seq, set: true}
}

// controlLog is a ring of the latest control messages. Guarded by Hub.mu.
type controlLog struct {
	seq  uint64 // of the newest message
	ring [controlLogSize]control
}

// control is a control message as the feed delivered it, with the newest
// durable id the feed had delivered before it: a join applied later (to a
// stream Open is still attaching) replays its room from there, not from
// what the feed delivered after the join.
type control struct {
	wire.Control
	seen wire.Cursor
}

func (l *controlLog) add(c control) {
	l.seq++
	l.ring[l.seq%controlLogSize] = c
}

// since returns the messages for user after t, and false if some of them
// are no longer in the ring.
func (l *controlLog) since(t ControlPoint, user string) ([]control, bool) {
	if !t.set {
		return nil, true
	}
	if l.seq-t.seq >= controlLogSize {
		return nil, false
	}
	var out []control
	for seq := t.seq + 1; seq <= l.seq; seq++ {
		if c := l.ring[seq%controlLogSize]; c.User == user {
			out = append(out, c)
		}
	}
	return out, true
}

// control applies a control message to the user's open streams, at once, on
// the feed's goroutine: nothing in it waits for Redis (a join's
// subscription is confirmed by the stream's own writer), so no message is
// queued, dropped or held behind another. Streams still being opened get it
// when Open has attached them.
func (h *Hub) control(m wire.Control) {
	c := control{Control: m, seen: *h.inOrder.Load()}
	h.mu.Lock()
	h.controls.add(c)
	var now []*Stream
	for _, s := range h.users[c.User] {
		if s.attaching {
			h.pending[s] = append(h.pending[s], c)
			continue
		}
		now = append(now, s)
	}
	h.mu.Unlock()
	h.metrics.Control.WithLabelValues(c.Op).Inc()
	for _, s := range now {
		h.apply(s, c)
	}
}

func (h *Hub) apply(s *Stream, c control) {
	switch c.Op {
	case wire.OpLogout:
		s.finish(ReasonLogout, logoutFrame)
	case wire.OpJoin:
		h.join(s, wire.RoomChannel(c.Room), c.Since, c.seen)
	case wire.OpLeave:
		h.leave(s, wire.RoomChannel(c.Room))
	}
}

// join attaches s to a room's channel. What the channel carries from the
// join on must reach the stream, durable events included, even those
// published before Redis has the subscription in force: so the stream
// holds live events and its writer, once the subscription is confirmed,
// replays the channel from since, the newest id the feed had delivered
// before the join, then lets live events flow again. grant, if set, is
// the position the room was granted at: the feed may not have delivered
// that far (it only sees the channels it subscribes to), and the replay
// reads nothing of the room from before it.
func (h *Hub) join(s *Stream, channel, grant string, since wire.Cursor) {
	if s.has(channel) {
		// Had from the session it opened with: a new stream not started
		// yet still owes the room's events from the join on.
		s.joinedEarly(channel, since)
		return
	}
	if len(s.rooms()) >= h.opts.MaxRooms {
		h.drop(wire.ControlChannel, fmt.Errorf("%w: user %s already has %d rooms on a stream (MAX_ROOMS)", errTooManyRooms, s.User, h.opts.MaxRooms))
		return
	}
	// Holding first, so that no live event of the channel is queued before
	// its replay; attached last, so that no pass of catch-up takes the
	// channel's subscription as confirmed before it was written.
	s.rewind(channel, since, grant)
	if err := h.attach(s, channel); err != nil {
		// The feed resubscribes once Redis is back; meanwhile the writer's
		// Sync fails and ends the stream, to resume from its own id.
		h.log.Warn("join: subscription not written", "channel", channel, "err", err)
	}
	s.attached()
}

// leave detaches s from a room's channel at once, and forgets what of it a
// catch-up was holding: nothing of the room published after the leave
// reaches the stream.
func (h *Hub) leave(s *Stream, channel string) {
	if h.detach(s, channel) {
		s.drop(channel)
	}
}

// Run moves idle streams' ids on every MarkInterval, through Redis, so that
// they arrive behind every event published before them and no connected
// stream's id grows older than the retention; and it unsubscribes the
// channels left without streams for UnsubscribeDelay. It returns when ctx
// ends.
func (h *Hub) Run(ctx context.Context) {
	mark := time.NewTicker(h.opts.MarkInterval)
	defer mark.Stop()
	var sweep <-chan time.Time
	if d := h.opts.UnsubscribeDelay; d > 0 {
		t := time.NewTicker(max(d/4, 50*time.Millisecond))
		defer t.Stop()
		sweep = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-sweep:
			for h.sweepIdle(now) {
			}
		case <-mark.C:
			if h.Len() == 0 {
				continue
			}
			mctx, cancel := h.bounded(ctx)
			err := h.backend.PublishBareID(mctx, wire.BroadcastChannel)
			cancel()
			if err != nil {
				h.log.Warn("moving stream ids on", "err", err)
			}
		}
	}
}

// Prime reads the position before the control channel is subscribed:
// every control message the feed delivers was published after it, so a
// join has a position to replay its room from before the feed delivered
// any durable event (Hub.inOrder). Not primed (Redis unreachable at
// start), a join before the first durable event the feed delivers is
// replayed from the stream's own id.
func (h *Hub) Prime(ctx context.Context) error {
	pos, err := positionNow(ctx, h.backend, h.opts.RedisTimeout)
	if err != nil {
		return err
	}
	h.inOrder.Store(&pos)
	return nil
}

// SubscribeControl makes Redis send the control channel, before any
// stream (and after Prime).
func (h *Hub) SubscribeControl() error { return h.backend.Subscribe(wire.ControlChannel) }
