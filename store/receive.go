package store

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/wire"
)

// subConn is what the single-Redis feed and each cluster partition share:
// a pub/sub connection that is made again when lost, the barrier that
// confirms subscriptions, and the marker durable messages carry. Its
// owner embeds it, writes its commands under mu, and reads it with
// receive.
type subConn struct {
	mu sync.Mutex // guards ps and the owner's subscription state; commands are written under it, in call order
	ps *redis.PubSub

	marker     atomic.Pointer[string] // the durable-framing marker
	markerRead time.Time              // when receive last read it from Redis; receive's own
	barrier    barrier
	connected  atomic.Bool
}

func (c *subConn) init(ps *redis.PubSub) {
	c.ps = ps
	c.marker.Store(new(string))
}

// ping writes a barrier PING: the returned channel gets nil once Redis has
// answered every command written before it, or an error if the
// connection is lost first.
func (c *subConn) ping(ctx context.Context) (<-chan error, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.barrier.send(ctx, c.ps)
}

// receiveHooks are what the owner of a subConn does as receive reads it.
type receiveHooks struct {
	log     *slog.Logger // with the owner's attributes
	metrics *FeedMetrics
	every   time.Duration // ping a connection quiet this long; take it as dead after as long again

	// redial replaces the connection with a new one, subscribed to
	// everything the owner needs.
	redial func(ctx context.Context)
	// lost runs when the connection was lost, before the backoff; it
	// reports whether to redial after it (go-redis otherwise dials again
	// by itself, to where it dialled before).
	lost func(ctx context.Context, err error) (redial bool)
	// up runs when the connection is up again (the first time, and after
	// every loss), on receive's goroutine, before any message that follows.
	up func(ctx context.Context)
	// message hands over a message with its full channel name, its framing
	// read (err set, m zero, when it cannot be).
	message func(channel string, m wire.Message, err error)
	// subscription, if set, sees the server's (un)subscribe replies.
	subscription func(ctx context.Context, s *redis.Subscription)
	// readMarker reads the marker from Redis, when a message does not carry
	// the one known: the deployment's config was lost and written again.
	readMarker func(ctx context.Context) (string, error)
}

// receive reads the connection until ctx ends. A read waits up to
// h.every whatever ctx says: closing the connection when ctx ends stops it
// at once.
func (c *subConn) receive(ctx context.Context, h receiveHooks) {
	closeConn := func() {
		c.mu.Lock()
		ps := c.ps
		c.mu.Unlock()
		_ = ps.Close() // not under mu: a Close waits for a command under way
	}
	stop := context.AfterFunc(ctx, closeConn)
	defer func() {
		stop()
		closeConn()
		c.barrier.releaseAll(ErrFeedLost)
	}()
	backoff := newBackoff(100*time.Millisecond, 2*time.Second)
	pingSent := false
	for ctx.Err() == nil {
		c.mu.Lock()
		ps := c.ps
		c.mu.Unlock()

		msg, err := ps.ReceiveTimeout(ctx, h.every)
		if ctx.Err() != nil {
			return
		}
		if isTimeout(err) {
			if !pingSent {
				pctx, cancel := context.WithTimeout(ctx, h.every)
				_ = ps.Ping(pctx, "health")
				cancel()
				pingSent = true
				continue
			}
			// The ping went unanswered: Redis is hung or the path to it is
			// gone without a reset. Start over on a new connection.
			h.log.Warn("redis pub/sub: no answer to ping, reconnecting")
			h.redial(ctx)
			err = errors.New("ping timeout")
		}
		pingSent = false
		if err != nil {
			if c.connected.Swap(false) {
				h.metrics.Reconnects.Inc()
				h.log.Warn("redis pub/sub connection lost; streams stay open, reconnecting", "err", err)
			}
			// Waiters would otherwise hang for a reply that will never
			// come; they learn that their subscriptions are not confirmed.
			c.barrier.releaseAll(ErrFeedLost)
			redial := h.lost(ctx, err)
			if !sleep(ctx, backoff.next()) {
				return
			}
			if redial {
				h.redial(ctx)
			}
			continue
		}
		backoff.reset()
		if c.connected.Load() && resubscribed(msg) {
			// go-redis made a new connection from a call that met the old
			// one dead (a Subscribe, a Sync) while this loop was not
			// reading: no error came here, but the gap is the same.
			c.connected.Store(false)
			h.metrics.Reconnects.Inc()
			h.log.Warn("redis pub/sub connection lost and made again meanwhile; streams stay open")
			c.barrier.releaseAll(ErrFeedLost)
			_ = h.lost(ctx, errors.New("connection replaced")) // already made again: no redial
		}
		if !c.connected.Swap(true) {
			h.up(ctx)
		}
		switch m := msg.(type) {
		case *redis.Message:
			h.metrics.Messages.Inc()
			w, err := wire.ParseMessage([]byte(m.Payload), *c.marker.Load())
			if errors.Is(err, wire.ErrForged) && c.refreshMarker(ctx, h) {
				// The marker changed under this instance (config lost and
				// written again by another): read with the new one.
				w, err = wire.ParseMessage([]byte(m.Payload), *c.marker.Load())
			}
			h.message(m.Channel, w, err)
		case *redis.Subscription:
			if h.subscription != nil {
				h.subscription(ctx, m)
			}
		case *redis.Pong:
			if seq, err := strconv.ParseUint(m.Payload, 10, 64); err == nil {
				c.barrier.release(seq, nil)
			}
		}
	}
}

// resubscribed reports whether msg is the first reply on a new
// connection: go-redis resubscribes every channel in one command, and the
// count in the first confirmation is 1. (An existing connection does not
// answer 1: the feed keeps the control channel, a partition its own.)
func resubscribed(msg any) bool {
	s, ok := msg.(*redis.Subscription)
	return ok && s.Count == 1 && (s.Kind == "subscribe" || s.Kind == "ssubscribe")
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

// barrier matches PING replies to the callers waiting for them.
type barrier struct {
	mu      sync.Mutex
	seq     uint64
	waiters map[uint64]chan error
}

// send writes a PING carrying a new sequence number and returns a channel
// that gets nil when its reply (or any later one) arrives, or an error when
// the connection is lost first.
func (b *barrier) send(ctx context.Context, ps *redis.PubSub) (<-chan error, error) {
	done := make(chan error, 1)
	if err := b.sendOn(ctx, ps, done); err != nil {
		return nil, err
	}
	return done, nil
}

// sendOn is send with the caller's channel (buffered, one slot), which
// gets nothing if the write fails.
func (b *barrier) sendOn(ctx context.Context, ps *redis.PubSub, done chan error) error {
	b.mu.Lock()
	b.seq++
	seq := b.seq
	if b.waiters == nil {
		b.waiters = make(map[uint64]chan error)
	}
	b.waiters[seq] = done
	b.mu.Unlock()
	if err := ps.Ping(ctx, strconv.FormatUint(seq, 10)); err != nil {
		b.mu.Lock()
		delete(b.waiters, seq)
		b.mu.Unlock()
		return err
	}
	return nil
}

func (b *barrier) release(upTo uint64, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for seq, ch := range b.waiters {
		if seq <= upTo {
			ch <- err
			delete(b.waiters, seq)
		}
	}
}

func (b *barrier) releaseAll(err error) { b.release(^uint64(0), err) }
