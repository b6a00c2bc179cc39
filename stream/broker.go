package stream

import (
	"context"
	"log/slog"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// Broker is what the hub needs of the backend that carries messages: one
// Redis, Sentinel and Redis Cluster (store.Redis, store.Cluster) are one.
// It subscribes the channels streams need (Subscriber), reads durable
// events back (History), and runs its connections, telling the hub what
// arrives and what a reconnection recovered or lost (Run). Each broker
// recovers its own gaps: how is a matter of how its ids are ordered.
type Broker interface {
	Backend
	// Run reads the backend until ctx ends, telling ev what it delivers.
	// After a lost connection is made again it delivers, before anything
	// later, what was published meanwhile (Events.Recovered), or tells ev
	// what was lost (Events.Lost); then Events.Reconnected.
	Run(ctx context.Context, ev Events)
	// Connected and Lag are its readiness: subscribed now, and how far
	// behind the backend its delivery is.
	Connected() bool
	Lag() time.Duration
}

// Backend is what the hub itself calls on a broker: its subscriptions
// and its history. Run, Connected and Lag are the application's to call.
type Backend interface {
	Subscriber
	History
}

// Events is what a Broker tells the hub as it runs; *Hub implements it.
// Every call for a channel comes from the goroutine that reads it, in the
// order the broker learnt of it. The first four report what happened; Gap
// and Channels answer what only the hub knows (the streams' positions and
// channels), which a single-log broker's recovery asks (RecoverLog).
type Events interface {
	// Publish hands over a message as it was published (in publish
	// order); err is set when it could not be read.
	Publish(channel string, m wire.Message, err error)
	// Recovered hands over a durable event read back from history to fill
	// a gap: fanned out, but not taken to be in publish order.
	Recovered(channel string, m wire.Message)
	// Lost says durable events were lost beyond recovery: every stream is
	// reset to pos (reason is the reset's), or, pos zero, ended with a
	// retry hint to resume by its own id.
	Lost(pos wire.Cursor, reason string)
	// Reconnected says a connection is back, its gap dealt with: recovered
	// events were delivered, up to upTo if known (zero otherwise).
	Reconnected(ctx context.Context, upTo wire.Cursor, recovered int)
	// Gap is where a gap of a single-log broker begins: the newest durable
	// id delivered, else the oldest stream's position (zero: none).
	Gap() wire.Cursor
	// Channels are every channel with streams.
	Channels() []string
}

// LogHistory is the history of a broker whose durable ids are one order:
// what RecoverLog reads a gap from.
type LogHistory interface {
	History
	// Active returns those of channels with events after a cursor.
	Active(ctx context.Context, channels []string, after wire.Cursor) ([]string, error)
}

// Recovered fans out a durable event a gap recovery read back.
func (h *Hub) Recovered(channel string, m wire.Message) {
	if frame, err := wire.EncodeDurable(m.Cursor, m.Body, h.opts.MaxEventBytes); err == nil {
		h.fanOut(channel, frame, m.Cursor)
	}
}

// Lost resets every stream to pos, or, pos zero, ends each with a retry
// hint: it comes back and resumes by its own id (or is reset).
func (h *Hub) Lost(pos wire.Cursor, reason string) {
	if !pos.IsZero() {
		h.resetAll(pos, reason)
		return
	}
	for _, s := range h.all() {
		h.endRetry(s, ReasonRedis)
	}
}

// resetAll tells every stream that durable events were lost while Redis
// was away, and moves its id (and the feed's) to pos.
func (h *Hub) resetAll(pos wire.Cursor, reason string) {
	h.log.Warn("durable events were lost while Redis was away: streams reset", "reason", reason)
	reset := h.resetFrame(pos, reason)
	for _, s := range h.all() {
		if !s.offerReset(reset, pos) {
			h.endSlow(s)
		}
	}
	h.seen.Store(&pos) // noteDelivered would keep a newer id of the epoch lost
	if reason == wire.ResetEpoch || reason == wire.ResetFuture {
		// Redis lost what the order was made of; control messages on
		// their way may be older than pos. (Trimmed history loses
		// nothing of the order.)
		h.inOrder.Store(&wire.Cursor{})
	}
}

// Reconnected counts what a gap recovery delivered and holds every stream
// to its session as it is now: control messages sent while the
// connection was down were lost.
func (h *Hub) Reconnected(_ context.Context, upTo wire.Cursor, recovered int) {
	if !upTo.IsZero() {
		h.noteDelivered(upTo)
	}
	h.metrics.Recovered.Add(float64(recovered))
	h.RecheckSoon()
}

// Gap is where a gap in a single-log feed begins.
func (h *Hub) Gap() wire.Cursor {
	from := *h.seen.Load()
	if !from.IsZero() {
		return from
	}
	// Nothing durable came through the feed yet: the oldest stream
	// position is where a gap could start.
	for _, s := range h.all() {
		if p := s.position(); !p.IsZero() && (from.IsZero() || p.Before(from)) {
			from = p
		}
	}
	return from
}

// Channels are every channel with streams.
func (h *Hub) Channels() []string { return h.allChannels() }

// RecoverLog fills a gap in the feed of a broker whose durable ids are in
// one order (one Redis, Sentinel): after its connection came back, it
// delivers the durable events published meanwhile on every channel with
// streams, from where ev's gap begins, page by page (ev.Recovered). If
// history cannot be read, every stream is told to resume by its own id
// (ev.Lost): none is moved silently past the gap. It runs on the feed's
// goroutine, before any later message, and returns what the broker tells
// ev.Reconnected: the position the feed is now at (zero: not known) and
// how many events it delivered. timeout bounds each read.
func RecoverLog(ctx context.Context, history LogHistory, ev Events, timeout time.Duration, log *slog.Logger) (upTo wire.Cursor, events int) {
	g := gapReader{history: history, ev: ev, timeout: timeout, log: log}
	from := ev.Gap()
	if from.IsZero() {
		// Nothing to recover. From here on the feed delivers what is
		// published: the position now is the newest id a join needs to
		// replay a room from (Hub.join), until the feed delivers a newer.
		// Read, not taken (see recover), unless Redis has none at all.
		if pos, err := positionNow(ctx, history, timeout); err == nil {
			return pos, 0
		}
		return wire.Cursor{}, 0
	}
	// Redis has just come back: a read may still fail for a moment (a
	// pool connection from before, a replica being promoted). A few tries,
	// then every stream resumes by itself; a retry fans out again what a
	// failed try did, and streams drop what they have.
	var err error
	for wait := 100 * time.Millisecond; wait <= 800*time.Millisecond; wait *= 2 {
		if upTo, events, err = g.recover(ctx, from); err == nil || ctx.Err() != nil {
			return upTo, events
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return wire.Cursor{}, 0
		}
	}
	log.Warn("durable events published while Redis was away could not be read: streams told to reconnect", "err", err)
	ev.Lost(wire.Cursor{}, "")
	return wire.Cursor{}, 0
}

// gapReader is one gap recovery of a single-log broker.
type gapReader struct {
	history LogHistory
	ev      Events
	timeout time.Duration
	log     *slog.Logger
}

// recover reads the gap after from once; upTo is zero when it reset
// every stream instead.
func (g gapReader) recover(ctx context.Context, from wire.Cursor) (upTo wire.Cursor, events int, err error) {
	// The bound first, then the look-up. Every event up to the bound is in
	// history before the look-up begins, so no channel that had one in the
	// gap is left out; what is published after the bound arrives live,
	// after the recovery and after all it delivered. (The other way round,
	// a channel quiet at the look-up and published on before the read was
	// neither read nor delivered: its live copy came behind events the
	// read had moved streams past, and was dropped as replayed.) The
	// bound is read, not taken (Position would write a new id): a read of
	// no channel is the position now.
	rctx, cancel := context.WithTimeout(ctx, g.timeout)
	now, err := g.history.Read(rctx, nil, nil, wire.Cursor{}, 0)
	cancel()
	if err != nil {
		return wire.Cursor{}, 0, err
	}
	until := now.Position
	switch {
	case now.Reset != "":
		g.ev.Lost(until, now.Reset)
		return wire.Cursor{}, 0, nil
	case until.Epoch != from.Epoch:
		// Redis lost its data: no channel's history says so (the look-up
		// would find the new epoch's events, or none).
		g.ev.Lost(until, wire.ResetEpoch)
		return wire.Cursor{}, 0, nil
	case until.Before(from):
		// Redis came back behind what the feed delivered (a restart from
		// an older snapshot, a replica that missed writes): the ids after
		// its position will be given out again.
		g.ev.Lost(until, wire.ResetFuture)
		return wire.Cursor{}, 0, nil
	}
	// Only the channels that had events read in pages: an instance may
	// have a hundred thousand channels, and a gap touches few.
	// Not bounded as one wait: a round trip per thousand channels, each
	// within the client's read timeout.
	channels, err := g.history.Active(ctx, g.ev.Channels(), from)
	if err != nil {
		return wire.Cursor{}, 0, err
	}
	if len(channels) == 0 {
		// As before the move: nothing read, the feed's position unmoved.
		return wire.Cursor{}, 0, nil
	}
	for {
		after := make([]wire.Cursor, len(channels))
		for i := range after {
			after[i] = from
		}
		rctx, cancel := context.WithTimeout(ctx, g.timeout)
		page, err := g.history.Read(rctx, channels, after, until, replayPageBytes)
		cancel()
		if err != nil {
			return wire.Cursor{}, 0, err
		}
		if page.Reset != "" {
			g.ev.Lost(page.Position, page.Reset)
			return wire.Cursor{}, 0, nil
		}
		for _, e := range page.Events {
			g.ev.Recovered(e.Channel, wire.Message{Cursor: e.Cursor, Body: e.Envelope})
			from = e.Cursor
		}
		events += len(page.Events)
		if !page.More {
			break
		}
		channels = without(channels, page.Finished)
	}
	g.log.Info("durable events published while Redis was away were delivered", "events", events)
	return until, events, nil
}

// positionNow reads the position now (a read of no channel, which writes
// nothing), and takes one only if Redis has none yet (a new Redis).
func positionNow(ctx context.Context, history History, timeout time.Duration) (wire.Cursor, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	now, err := currentPosition(ctx, history)
	if err != nil || !now.IsZero() {
		return now, err
	}
	return history.Position(ctx)
}

// currentPosition is the history's position now: a read of no channel,
// which writes nothing (Position takes a new id). Zero when Redis has
// none yet.
func currentPosition(ctx context.Context, history History) (wire.Cursor, error) {
	page, err := history.Read(ctx, nil, nil, wire.Cursor{}, 0)
	return page.Position, err
}
