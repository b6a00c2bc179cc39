package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/wire"
)

// subConn is what the single-Redis feed and each cluster partition share:
// a pub/sub connection that is made again when lost, the barrier that
// confirms subscriptions, the lag probe, and the marker durable messages
// carry. Its owner embeds it, and reads it with receive, which alone
// replaces the connection.
type subConn struct {
	mu sync.Mutex // guards ps and the owner's subscription state; never held while Redis is waited for
	// ps is nil while the connection is being made again: callers do not
	// wait for that (a Subscribe is recorded, a Sync fails with
	// ErrFeedLost).
	ps *redis.PubSub

	every      time.Duration          // REDIS_PING_INTERVAL
	marker     atomic.Pointer[string] // the durable-framing marker
	markerRead time.Time              // when receive last read it from Redis; receive's own
	barrier    barrier
	lag        lagMeter
	connected  atomic.Bool
	wasUp      atomic.Bool // the connection was up once: until then a write would dial inside go-redis
	recovering atomic.Bool // receive runs up: the watchdog neither probes nor judges

	attempt uint64         // guarded by mu: the redial whose connection may be put in place
	dropped error          // guarded by mu: why the watchdog closed the connection
	dials   sync.WaitGroup // receive's redials, abandoned ones included
}

func (c *subConn) init(ps *redis.PubSub, every time.Duration) {
	c.ps = ps
	c.every = every
	c.marker.Store(new(string))
}

// dialTimeout bounds making a connection (dial, HELLO, subscriptions) and
// each command written on it by the feed: well under the time a stalled connection is
// taken as dead after (2 ping intervals), and at most the backoff's
// ceiling, so that a healed link is used again within about the backoff.
func (c *subConn) dialTimeout() time.Duration { return min(c.every, 2*time.Second) }

// probeEvery is how often receive writes a lag probe: once a second, so
// the lag is known to about a second, which is fine against
// PUBSUB_LAG_LIMIT's seconds, for one short PING a second on an idle
// connection; more often with a ping interval under 5 s, so that a stalled
// connection is noticed within about 2 ping intervals.
func (c *subConn) probeEvery() time.Duration { return min(time.Second, c.every/5) }

// current is the connection in place, nil while it is being made again.
func (c *subConn) current() *redis.PubSub {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ps
}

// Lag is how far the connection's reader is behind Redis: the round trip
// of the last lag probe, or the age of the oldest unanswered one if more
// (it grows during a stall). While the connection is being made again it
// counts from when the feed was last known current.
func (c *subConn) Lag() time.Duration { return c.lag.lag(time.Now()) }

// ping writes a barrier PING: the returned channel gets nil once Redis has
// answered every command written before it, or an error if the
// connection is lost first. With no connection in place it fails at once.
func (c *subConn) ping(ctx context.Context) (<-chan error, error) {
	ps := c.current()
	if ps == nil || !c.wasUp.Load() {
		// Down, or never up yet (Redis unreachable since the start): a
		// write would have go-redis dial inside it, past any deadline
		// (its handshake ignores the context).
		return nil, ErrFeedLost
	}
	// A write on a connection go-redis has dropped dials inside: bounded.
	ctx, cancel := context.WithTimeout(ctx, c.dialTimeout())
	defer cancel()
	return c.barrier.send(ctx, ps)
}

// detach takes the connection out (callers meet nil from then on) and
// closes it; locked, if set, runs under mu as it is taken out.
func (c *subConn) detach(locked func()) {
	c.mu.Lock()
	ps := c.ps
	c.ps = nil
	if locked != nil {
		locked()
	}
	c.mu.Unlock()
	if ps != nil {
		// Not under mu: a Close waits for a command under way on it (each
		// has a deadline).
		_ = ps.Close()
	}
}

// receiveHooks are what the owner of a subConn does as receive reads it.
type receiveHooks struct {
	log     *slog.Logger // with the owner's attributes
	metrics *FeedMetrics
	// lagLimit is PUBSUB_LAG_LIMIT: a connection further behind is
	// dropped and made again (0: no limit).
	lagLimit time.Duration

	// redial makes a new connection within timeout, subscribed to
	// everything the owner needs, and puts it in place (c.ps) if current
	// (called under mu) says it is still wanted, else closes it. It must
	// not hold mu while it waits for Redis.
	redial func(ctx context.Context, timeout time.Duration, current func() bool) error
	// detachedLocked, if set, runs under mu when the connection is taken
	// out.
	detachedLocked func()
	// probe writes the lag probe PING payload on ps (or queues it to be).
	probe func(ctx context.Context, ps *redis.PubSub, payload string) error
	// lost runs when the connection was lost (and taken out, unless it
	// was made again already), before the backoff.
	lost func(ctx context.Context, err error)
	// up runs when the connection is up again (the first time, and after
	// every loss), on receive's goroutine, before any message that follows.
	up func(ctx context.Context)
	// message hands over a message with its full channel name, its framing
	// read (err set, m zero, when it cannot be).
	message func(channel string, m wire.Message, err error)
	// subscription, if set, sees the server's (un)subscribe replies; an
	// error drops the connection, for that reason.
	subscription func(ctx context.Context, s *redis.Subscription) error
	// readMarker reads the marker from Redis, when a message does not carry
	// the one known: the deployment's config was lost and written again.
	readMarker func(ctx context.Context) (string, error)
}

// receive reads the connection until ctx ends, and makes it again when it
// is lost, stalled (a lag probe unanswered for 2 ping intervals) or too
// far behind (h.lagLimit). Reads have no deadline: one that expired in
// the middle of a reply would leave go-redis's reader out of step with
// the stream (a slow link then reads garbage). A watchdog goroutine writes
// the probes and closes a connection that must be dropped, which ends the
// read; closing the connection when ctx ends does too. A redial waits
// c.dialTimeout() at most.
func (c *subConn) receive(ctx context.Context, h receiveHooks) {
	stop := context.AfterFunc(ctx, func() {
		if ps := c.current(); ps != nil {
			_ = ps.Close()
		}
	})
	wctx, wstop := context.WithCancel(ctx)
	var watchdog sync.WaitGroup
	watchdog.Go(func() { c.watch(wctx, h) })
	defer func() {
		stop()
		wstop()
		watchdog.Wait()
		c.shutDown(h)
	}()
	r := &receiver{c: c, h: h, backoff: newBackoff(100*time.Millisecond, 2*time.Second)}
	for ctx.Err() == nil {
		ps := c.current()
		if ps == nil {
			if !r.reconnect(ctx) {
				return
			}
			continue
		}
		msg, err := ps.Receive(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !r.lose(ctx, err) {
				return
			}
			continue
		}
		if s, ok := msg.(*redis.Subscription); ok {
			r.countSubscriptions(ctx, s)
		}
		r.markConnected(ctx)
		switch msg := msg.(type) {
		case *redis.Message:
			r.deliver(ctx, msg)
		case *redis.Subscription:
			if h.subscription != nil {
				if err := h.subscription(ctx, msg); err != nil && !r.lose(ctx, err) {
					return
				}
			}
		case *redis.Pong:
			c.pong(msg.Payload)
		}
	}
}

// shutDown is receive's last step, once its watchdog has stopped: a
// redial under way is abandoned, the connection taken out and closed, and
// the callers waiting on it released.
func (c *subConn) shutDown(h receiveHooks) {
	c.mu.Lock()
	c.attempt++ // a redial under way puts nothing in place now
	c.mu.Unlock()
	c.detach(h.detachedLocked)
	c.barrier.releaseAll(ErrFeedLost)
	// An abandoned redial ends within go-redis's own timeouts.
	c.dials.Wait()
}

// receiver is one run of receive: what it keeps from one connection to
// the next.
type receiver struct {
	c       *subConn
	h       receiveHooks
	backoff *backoff
	lagging bool // a lag episode: logged once as it starts, once as it ends
	// subscribed is the channels the connection has, as its last
	// (un)subscribe reply said.
	subscribed int
}

// reconnect makes the connection again, or, failing that, waits the
// backoff; false: ctx ended.
func (r *receiver) reconnect(ctx context.Context) bool {
	if err := r.c.redialWithin(ctx, r.h, r.c.dialTimeout()); err != nil {
		if ctx.Err() != nil {
			return false
		}
		// go-redis logs dial errors itself; one line per attempt here
		// would be one every 2 s for an outage.
		r.h.log.Debug("redis pub/sub: not connected again yet", "err", err)
		return sleep(ctx, r.backoff.next())
	}
	r.subscribed = 0
	return true
}

// lose drops the connection for err (or the reason the watchdog closed
// it for) and waits the backoff; false: ctx ended.
func (r *receiver) lose(ctx context.Context, err error) bool {
	c, h := r.c, r.h
	c.mu.Lock()
	if c.dropped != nil {
		err, c.dropped = c.dropped, nil
	}
	c.mu.Unlock()
	c.detach(h.detachedLocked)
	c.lag.lost(time.Now())
	// Waiters would otherwise hang for a reply that will never come;
	// they learn that their subscriptions are not confirmed.
	c.barrier.releaseAll(ErrFeedLost)
	if c.connected.Swap(false) {
		h.metrics.Reconnects.Inc()
		var le *lagError
		if errors.As(err, &le) {
			r.lagging = true
			h.log.Warn("redis pub/sub lags behind: dropping the late connection; once it is made again, streams catch up from history",
				"lag", le.lag.Round(100*time.Millisecond), "limit", le.limit)
		} else {
			h.log.Warn("redis pub/sub connection lost; streams stay open, reconnecting", "err", err)
		}
	}
	h.lost(ctx, err)
	return sleep(ctx, r.backoff.next())
}

// countSubscriptions keeps the count of the connection's channels from
// an (un)subscribe reply, and tells from it a connection go-redis made
// again by itself.
func (r *receiver) countSubscriptions(ctx context.Context, s *redis.Subscription) {
	c, h := r.c, r.h
	if c.connected.Load() && resubscribed(s, r.subscribed) {
		// go-redis made a new connection from a call that met the
		// old one dead (a Subscribe, a Sync) while this loop was not
		// reading: no error came here, but the gap is the same.
		c.connected.Store(false)
		h.metrics.Reconnects.Inc()
		h.log.Warn("redis pub/sub connection lost and made again meanwhile; streams stay open")
		c.lag.lost(time.Now())
		c.barrier.releaseAll(ErrFeedLost)
		h.lost(ctx, errReplaced)
	}
	r.subscribed = s.Count
}

// markConnected takes a message read as the connection being up: the
// first one on a new connection has the gap before it recovered (h.up)
// before it is handled.
func (r *receiver) markConnected(ctx context.Context) {
	c, h := r.c, r.h
	if c.connected.Swap(true) {
		return
	}
	c.wasUp.Store(true)
	r.backoff.reset()
	// The gap's recovery delivers what was published while the feed
	// was behind; its own time is not the connection's lag (else a
	// recovery longer than the limit would drop every connection).
	c.recovering.Store(true)
	h.up(ctx)
	c.lag.caughtUp()
	c.recovering.Store(false)
	if r.lagging {
		r.lagging = false
		h.log.Info("redis pub/sub caught up: back under PUBSUB_LAG_LIMIT", "limit", h.lagLimit)
	}
}

// deliver reads a message's framing and hands it to h.message.
func (r *receiver) deliver(ctx context.Context, msg *redis.Message) {
	c := r.c
	r.h.metrics.Messages.Inc()
	w, err := wire.ParseMessage([]byte(msg.Payload), *c.marker.Load())
	if errors.Is(err, wire.ErrForged) && c.refreshMarker(ctx, r.h) {
		// The marker changed under this instance (config lost and
		// written again by another): read with the new one.
		w, err = wire.ParseMessage([]byte(msg.Payload), *c.marker.Load())
	}
	r.h.message(msg.Channel, w, err)
}

// pong takes a PING's answer: a lag probe's ("p<n>"), or a barrier's
// ("<n>").
func (c *subConn) pong(payload string) {
	if p, ok := strings.CutPrefix(payload, "p"); ok {
		if seq, err := strconv.ParseUint(p, 10, 64); err == nil {
			c.lag.answered(seq, time.Now())
		}
	} else if seq, err := strconv.ParseUint(payload, 10, 64); err == nil {
		c.barrier.release(seq, nil)
	}
}

// redialWithin runs h.redial on a goroutine and waits for it for about
// timeout. go-redis sets a new connection up (HELLO, AUTH, SELECT) with
// its own timeouts, whatever the context says (the clients do not enable
// ContextTimeoutEnabled, which would change every command's): an attempt
// that overruns, on a link that takes connections and answers nothing, is
// abandoned, and closes what it made when it ends.
func (c *subConn) redialWithin(ctx context.Context, h receiveHooks, timeout time.Duration) error {
	c.mu.Lock()
	c.attempt++
	mine := c.attempt
	c.mu.Unlock()
	done := make(chan error, 1)
	c.dials.Go(func() {
		done <- h.redial(ctx, timeout, func() bool { return c.attempt == mine })
	})
	t := time.NewTimer(timeout + timeout/10)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	case <-t.C:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ps != nil {
		return nil // in place just now
	}
	c.attempt++
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("no connection set up within %v", timeout)
}

// errAbandoned is a redial's connection made too late to be used.
var errAbandoned = errors.New("redial abandoned")

// errReplaced is the loss of a connection go-redis made again by itself.
var errReplaced = errors.New("connection replaced")

// resubscribed reports whether s is the first reply on a new connection:
// go-redis resubscribes every channel in one command, and the count in the
// first confirmation is 1, where the connection had some (had, the count
// of the reply before).
func resubscribed(s *redis.Subscription, had int) bool {
	return s.Count == 1 && had > 0 && (s.Kind == "subscribe" || s.Kind == "ssubscribe")
}

// refreshMarker reads the marker again, at most once a second (a flood of
// forged messages must not become a flood of reads), and reports whether
// it changed.
func (c *subConn) refreshMarker(ctx context.Context, h receiveHooks) bool {
	if time.Since(c.markerRead) < time.Second {
		return false
	}
	c.markerRead = time.Now()
	m, err := h.readMarker(ctx)
	if err != nil || m == "" || m == *c.marker.Load() {
		return false
	}
	h.log.Warn("the durable marker changed in Redis: reading with the new one")
	c.marker.Store(&m)
	return true
}
