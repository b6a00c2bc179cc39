package store

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/stream"
	"github.com/ssebridge/ssebridge/wire"
)

// Run reads every partition's connection until ctx ends, each on its own
// goroutine, handing messages to ev with their logical channel (a durable
// one with its id, taken from the instance's vector under the lock that
// makes ids exact). After a partition's connection is lost and made again
// it delivers, before anything later of that partition, the durable events
// its channels had meanwhile, through ev.Publish as before the move (a
// partition's recovered events are in its own order), then calls
// ev.Reconnected with how many it delivered (0 on a first connection).
// When events were lost beyond recovery (a node lost its data, or trimmed
// past what the instance had) it calls ev.Lost with no position: every
// stream ends with a retry hint, and resumes by its own id, or is reset.
func (c *Cluster) Run(ctx context.Context, ev stream.Events) {
	deliver := ev.Publish
	c.mu.Lock()
	c.deliver, c.retry = deliver, func() { ev.Lost(wire.Cursor{}, "") }
	c.live.Store(&deliver)
	c.mu.Unlock()
	connected := func(ctx context.Context, recovered int) {
		ev.Reconnected(ctx, wire.Cursor{}, recovered)
	}
	var wg sync.WaitGroup
	for _, f := range c.feeds {
		wg.Add(1)
		go func() { defer wg.Done(); f.run(ctx, connected) }()
	}
	wg.Wait()
}

func (f *partFeed) run(ctx context.Context, connected func(context.Context, int)) {
	c := f.c
	everConnected := false
	f.receive(ctx, receiveHooks{
		log:            c.log.With("partition", f.k),
		metrics:        c.metrics,
		lagLimit:       c.lagLimit,
		redial:         f.redial,
		detachedLocked: f.detachedLocked,
		probe: func(_ context.Context, _ *redis.PubSub, payload string) error {
			// Queued as any command is (the writer owns the connection's
			// writes); one that cannot be written goes unanswered.
			f.mu.Lock()
			defer f.mu.Unlock()
			f.enqueueLocked(pubsubOp{gen: f.gen, run: func(ctx context.Context, ps *redis.PubSub) { _ = ps.Ping(ctx, payload) }})
			return nil
		},
		lost: func(ctx context.Context, err error) {
			f.forgetReplies()
			if errors.Is(err, errSlotMoved) {
				f.awaitMove(ctx)
				return
			}
			// The node may be gone for good (a failover) or the slot served
			// elsewhere (MOVED): have go-redis read the slot map again
			// (lazily, at most one read at a time) before the redial dials
			// the slot's master.
			c.cc.ReloadState(ctx)
		},
		up: func(ctx context.Context) {
			cctx, cancel := context.WithTimeout(ctx, configTimeout)
			err := c.configure(cctx, f.k)
			cancel()
			if err != nil && ctx.Err() == nil {
				c.log.Warn("partition config not written", "partition", f.k, "err", err)
			}
			recovered := 0
			if everConnected {
				recovered = c.recover(ctx, f)
			}
			everConnected = true
			connected(ctx, recovered)
		},
		message: func(channel string, m wire.Message, err error) {
			c.onMessage(f.k, strings.TrimPrefix(channel, c.tagOf(f.k)), m, err)
		},
		subscription: func(_ context.Context, m *redis.Subscription) error {
			if m.Kind == "sunsubscribe" && f.wants(strings.TrimPrefix(m.Channel, c.tagOf(f.k)), m.Channel) {
				// Redis dropped the subscription itself: the slot moved to
				// another node. Subscribe there, and recover the gap.
				return errSlotMoved
			}
			return nil
		},
		readMarker: func(ctx context.Context) (string, error) {
			ctx, cancel := context.WithTimeout(ctx, configTimeout)
			defer cancel()
			return c.cc.HGet(ctx, c.tagOf(f.k)+"config", "marker").Result()
		},
	})
}

// onMessage gives a durable event its id, the instance's vector with the
// event's partition at the event's position, and delivers it, under mu.
// A durable event at or before what the partition delivered already (one
// that a gap recovery delivered) is dropped.
//
// A live event (no id) takes no lock: it orders nothing across
// partitions, and a stream's live events of one channel come in order
// from the one goroutine of its partition. A control message does: a
// join reads the newest id delivered (its replay's start), which must
// not move under it.
func (c *Cluster) onMessage(k int, channel string, m wire.Message, err error) {
	if err != nil || !m.Durable() && channel != wire.ControlChannel {
		if deliver := c.live.Load(); deliver != nil {
			(*deliver)(channel, m, err)
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.Durable() {
		n := m.Cursor.MS // the frame's "<epoch>:<n>-<ms>"
		switch {
		case m.Cursor.Epoch != c.epochs[k]:
			// The partition's node lost its data: a new epoch. Ids of the
			// old one now reset.
			if c.epochs[k] != "" {
				c.log.Warn("a partition started a new epoch: its node lost its data", "partition", k)
			}
			c.epochs[k], c.pos[k] = m.Cursor.Epoch, n
			c.tag = c.digest()
		case n <= c.pos[k]:
			// Delivered already (by a gap recovery), or, of an earlier
			// term, written by a master that has since lost the slot:
			// positions are never given out twice.
			return
		default:
			c.moveLocked(k, n)
		}
		m.Cursor = wire.VectorCursor(c.stampLocked(k))
	}
	c.deliver(channel, m, err)
}

// recoverPatience bounds how long a partition's gap recovery retries;
// recoverTimeout one try, configTimeout writing a partition's config.
const (
	recoverPatience = 15 * time.Second
	recoverTimeout  = 10 * time.Second
	configTimeout   = 5 * time.Second
)

// recover delivers the durable events partition k's channels had while
// its connection was down, from the position the instance had delivered
// up to the partition's position now, then takes the partition to be
// there. It runs on the partition's goroutine before any later message.
func (c *Cluster) recover(ctx context.Context, f *partFeed) (events int) {
	// A node that has just restarted may answer CLUSTERDOWN or LOADING
	// for a while: retry with backoff, for up to recoverPatience, before
	// telling streams to resume by themselves.
	var err error
	deadline := time.Now().Add(recoverPatience)
	b := newBackoff(100*time.Millisecond, time.Second)
	for {
		var n int
		rctx, cancel := context.WithTimeout(ctx, recoverTimeout)
		n, err = c.recoverOnce(rctx, f)
		cancel()
		events += n // a failed try may have delivered pages: the next goes on after them
		if err == nil || ctx.Err() != nil {
			return events
		}
		if time.Now().After(deadline) || !sleep(ctx, b.next()) {
			break
		}
	}
	c.log.Warn("durable events published while a partition's connection was down could not be read: streams told to reconnect", "partition", f.k, "err", err)
	c.retryAll()
	return events
}

func (c *Cluster) recoverOnce(ctx context.Context, f *partFeed) (events int, err error) {
	k := f.k
	epoch, upTo, _, err := c.readPosition(ctx, k)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	known, from := c.epochs[k], c.pos[k]
	if known != epoch {
		c.adoptLocked(k, epoch, upTo)
		c.mu.Unlock()
		if known != "" {
			c.log.Warn("a partition lost its data while its connection was down: streams told to reconnect", "partition", k)
			c.retryAll()
		}
		return 0, nil
	}
	if upTo < from {
		c.pos[k] = upTo
		c.mu.Unlock()
		c.wentBack(ctx, k, upTo)
		return 0, nil
	}
	c.mu.Unlock()
	channels := f.channelList()
	for from < upTo && len(channels) > 0 {
		froms := make([]uint64, len(channels))
		for i := range froms {
			froms[i] = from
		}
		entries, complete, more, trimmed, err := c.readPartition(ctx, k, channels, froms, upTo)
		if err != nil {
			return events, err
		}
		if trimmed {
			c.log.Warn("durable events were trimmed while a partition's connection was down: streams told to reconnect", "partition", k)
			c.mu.Lock()
			c.adoptLocked(k, epoch, upTo)
			c.mu.Unlock()
			c.retryAll()
			return events, nil
		}
		c.mu.Lock()
		for _, e := range entries {
			if e.n <= c.pos[k] {
				continue
			}
			c.moveLocked(k, e.n)
			c.deliver(e.channel, wire.Message{Cursor: wire.VectorCursor(c.stampLocked(k)), Body: []byte(e.env)}, nil)
			events++
		}
		if len(entries) > 0 {
			from = max(from, entries[len(entries)-1].n)
		}
		c.mu.Unlock()
		if !more {
			break
		}
		// A channel read to the end is not read again, nor its trim mark
		// checked: trimmed since of events past upTo, it has lost nothing.
		left := channels[:0:0]
		for i, ch := range channels {
			if !complete[i] {
				left = append(left, ch)
			}
		}
		channels = left
	}
	c.mu.Lock()
	c.adoptLocked(k, epoch, upTo)
	c.mu.Unlock()
	if events > 0 {
		c.log.Info("durable events published while a partition's connection was down were delivered", "partition", k, "events", events)
	}
	return events, nil
}

// wentBack answers partition k's position going back within its term, to
// upTo (c.pos[k] set to it by the caller): its node has lost writes
// without a new writer taking over (data restored from an older copy),
// and will give out positions the instance delivered again. As one Redis
// does when its position is behind the feed's, the instance takes the
// partition's position, and its streams start again, each resuming by its
// own id, which is reset ("foreign") if it is past the partition's
// position. The writer is forgotten, so that the partition's next
// position starts a new term: the positions past upTo the instance
// delivered are never given out again, and ids naming them are told from
// later ones (Read resets them) however much is published before they
// resume.
func (c *Cluster) wentBack(ctx context.Context, k int, upTo uint64) {
	c.log.Warn("a partition's position went back while its connection was down (its node lost writes): streams told to reconnect", "partition", k)
	if err := forgetWriter.Run(ctx, c.cc, []string{c.tagOf(k) + "cursor"}, strconv.FormatUint(upTo, 10)).Err(); err != nil && !errors.Is(err, redis.Nil) {
		c.log.Warn("a partition's position went back; could not start a new term", "partition", k, "err", err)
	}
	c.retryAll()
}

// forgetWriter clears the writer of a partition's cursor (KEYS[1]) if it
// is still at position ARGV[1]: the next script to take or read a position
// starts a new term, as on a new writer.
var forgetWriter = redis.NewScript(`local v = redis.call('GET', KEYS[1])
if not v then return false end
local epoch, p, writer, ends = string.match(v, '^(%w+):(%d+):(%x*):([%d=,]*)$')
if not epoch or p ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], epoch .. ':' .. p .. '::' .. ends)
return 1`)

func (c *Cluster) retryAll() {
	c.mu.Lock()
	retry := c.retry
	c.mu.Unlock()
	if retry != nil {
		retry()
	}
}

var _ stream.Broker = (*Cluster)(nil)
