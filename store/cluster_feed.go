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

// partFeed is one partition's sharded pub/sub connection. Every channel of
// a partition hashes to one slot, so the connection is to that slot's
// master, and go-redis dials the slot's master again when it reconnects (a
// slot moved, a failover): a bounded number of connections per node,
// whatever the number of streams and channels.
type partFeed struct {
	subConn // its mu also guards channels and unsubscribing

	c        *Cluster
	k        int
	channels map[string]struct{}
	// unsubscribing counts, per channel, the SUNSUBSCRIBEs written whose
	// reply has not come: a reply beyond them is the server's own (the
	// slot moved away).
	unsubscribing map[string]int

	// The writer's queue (enqueueLocked), guarded by mu: every command
	// written on ps after the connection's first goes through it.
	queue   []pubsubOp
	writing bool   // a goroutine writes the queue
	down    bool   // no connection in place (ps nil): the queue waits for the redial
	addr    string // the master the connection was dialled to, as the slot map had it
	gen     uint64 // incremented as a connection is taken out and as a redial starts
}

// writeTimeout bounds each command a partition's writer writes on its
// pub/sub connection (a write that meets the connection dead has go-redis
// dial inside it), and the dial of the first connection: a master that
// accepts TCP but answers nothing must not hold a write for longer.
const writeTimeout = 3 * time.Second

// pubsubOp is a command to write on a partition's pub/sub connection. gen
// is the connection it was meant for: one queued before a redial is stale
// (the redial subscribes every channel itself, and a ping written on the
// new connection before that would confirm subscriptions not in force).
type pubsubOp struct {
	gen   uint64
	run   func(ctx context.Context, ps *redis.PubSub)
	stale func() // nil: nothing to tell
}

// enqueue queues op for the partition's writer, which writes the queue in
// order, each command with its own deadline, on a goroutine of its own
// (started when there is work, ended when there is none): no caller
// waits for Redis, and none holds a lock while Redis is written to.
// Guarded by mu.
func (f *partFeed) enqueueLocked(op pubsubOp) {
	f.queue = append(f.queue, op)
	if !f.writing && !f.down {
		f.writing = true
		go f.write()
	}
}

func (f *partFeed) write() {
	for {
		f.mu.Lock()
		if len(f.queue) == 0 || f.down {
			// Empty, or held until a redial has the new connection in
			// place (it starts the writer again).
			f.writing = false
			f.mu.Unlock()
			return
		}
		op := f.queue[0]
		f.queue[0] = pubsubOp{}
		f.queue = f.queue[1:]
		ps, current := f.ps, op.gen == f.gen
		f.mu.Unlock()
		if !current {
			if op.stale != nil {
				op.stale()
			}
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		op.run(ctx, ps)
		cancel()
	}
}

// tell gives a ping's waiter err, unless it has had its answer (a release
// may have come between the write and its failure).
func tell(done chan error, err error) {
	select {
	case done <- err:
	default:
	}
}

// subscribe adds name to the partition's channels and queues its
// SSUBSCRIBE: it writes nothing itself, so the hub may call it while it
// fans out (a join), whatever state the partition's master is in. Sync
// confirms it.
func (f *partFeed) subscribe(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.channels[name]; !ok {
		f.channels[name] = struct{}{}
		f.c.metrics.Channels.Inc()
	}
	full := f.c.tagOf(f.k) + name
	f.enqueueLocked(pubsubOp{gen: f.gen, run: func(ctx context.Context, ps *redis.PubSub) {
		if err := ps.SSubscribe(ctx, full); err != nil {
			// go-redis resubscribed inside the failed call without name:
			// once more (see Feed.Subscribe). Still failing, the
			// connection is lost, and the redial subscribes everything.
			_ = ps.SSubscribe(ctx, full)
		}
	}})
	return nil
}

// unsubscribe drops name from the partition's channels and queues its
// SUNSUBSCRIBE, writing nothing itself (as subscribe).
func (f *partFeed) unsubscribe(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.channels[name]; ok {
		delete(f.channels, name)
		f.c.metrics.Channels.Dec()
	}
	full := f.c.tagOf(f.k) + name
	f.enqueueLocked(pubsubOp{gen: f.gen, run: func(ctx context.Context, ps *redis.PubSub) {
		// Counted before the write, under mu as wants reads it: the reply
		// may be read before this goroutine runs again. A lost connection
		// clears the counts.
		f.mu.Lock()
		f.unsubscribing[name]++
		f.mu.Unlock()
		_ = ps.SUnsubscribe(ctx, full)
	}})
}

// ping queues a barrier PING behind every command queued before it: the
// returned channel gets nil once Redis has answered them all, or an error
// if the connection is lost (or made again) first, at once if it is
// being made again now.
func (f *partFeed) ping(context.Context) (<-chan error, error) {
	done := make(chan error, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		done <- ErrFeedLost
		return done, nil
	}
	f.enqueueLocked(pubsubOp{gen: f.gen,
		run: func(ctx context.Context, ps *redis.PubSub) {
			if err := f.barrier.sendOn(ctx, ps, done); err != nil {
				tell(done, err)
			}
		},
		stale: func() { tell(done, ErrFeedLost) },
	})
	return done, nil
}

// wants reports whether the partition must be subscribed to a shard
// channel (full) of logical name.
func (f *partFeed) wants(name, full string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := f.unsubscribing[name]; n > 0 {
		if n == 1 {
			delete(f.unsubscribing, name)
		} else {
			f.unsubscribing[name] = n - 1
		}
		return false // the reply to our own SUNSUBSCRIBE
	}
	if full == f.c.tagOf(f.k) {
		return true
	}
	_, ok := f.channels[name]
	return ok
}

// forgetReplies forgets the replies still awaited on a lost connection.
func (f *partFeed) forgetReplies() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.unsubscribing)
}

func (f *partFeed) channelCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.channels)
}

func (f *partFeed) channelList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.channels))
	for n := range f.channels {
		out = append(out, n)
	}
	return out
}

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
		// The partition's position went back within its term: its node
		// has lost writes without a new writer taking over (data restored
		// from an older copy), and will give out positions the instance
		// delivered again. As one Redis does when its position is behind
		// the feed's: the instance takes the partition's position, and
		// its streams start again, each resuming by its own id, which is
		// reset ("foreign") if it is past the partition's position.
		// The writer is forgotten, so that the partition's next position
		// starts a new term: the positions past upTo the instance
		// delivered are never given out again, and ids naming them are
		// told from later ones (Read resets them) however much is
		// published before they resume.
		c.pos[k] = upTo
		c.mu.Unlock()
		c.log.Warn("a partition's position went back while its connection was down (its node lost writes): streams told to reconnect", "partition", k)
		if err := forgetWriter.Run(ctx, c.cc, []string{c.tagOf(k) + "cursor"}, strconv.FormatUint(upTo, 10)).Err(); err != nil && !errors.Is(err, redis.Nil) {
			c.log.Warn("a partition's position went back; could not start a new term", "partition", k, "err", err)
		}
		c.retryAll()
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

// moveTimeout bounds how long a partition whose node gave its slot up
// waits for the slot map to name another master.
const moveTimeout = 3 * time.Second

// awaitMove has go-redis read the slot map again until it names another
// master for the partition's slot than the node the connection was on,
// which has just given the slot up (its sunsubscribe), or for up to
// moveTimeout. Dialled by the map as it was, the connection would go back
// to that node, which, made a replica of the slot's new master (a
// takeover), accepts the subscription, but is sent the master's messages
// only once the master knows it as its replica: messages published
// meanwhile never arrive, and the gap recovery has already run.
func (f *partFeed) awaitMove(ctx context.Context) {
	f.mu.Lock()
	was := f.addr
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, moveTimeout)
	defer cancel()
	for {
		f.c.cc.ReloadState(ctx)
		if !sleep(ctx, 50*time.Millisecond) {
			return
		}
		if node, err := f.c.cc.MasterForKey(ctx, f.c.tagOf(f.k)+"cursor"); err == nil && node.Options().Addr != was {
			return
		}
	}
}

// errSlotMoved is a partition's connection dropped because its node gave
// the slot up.
var errSlotMoved = errors.New("a shard channel was unsubscribed by the server (slot moved)")

// detachedLocked: the connection is taken out. Commands queued for it are
// stale (the redial subscribes every channel itself); their waiters learn
// now, and the queue waits for the new connection.
func (f *partFeed) detachedLocked() {
	f.down = true
	clear(f.unsubscribing)
	f.flushLocked()
}

// flushLocked makes every command queued so far stale, and tells their
// waiters.
func (f *partFeed) flushLocked() {
	f.gen++
	for _, op := range f.queue {
		if op.stale != nil {
			op.stale()
		}
	}
	clear(f.queue)
	f.queue = f.queue[:0]
}

// redial makes a new connection, subscribed to every channel of the
// partition, to the slot's master as the cluster has it, within timeout,
// and puts it in place. It runs on the partition's receive goroutine and
// does not hold mu while it waits for Redis (a join queues its command
// meanwhile: the writer writes it once the new connection is in place).
// The new connection is dialled with its channels: go-redis sends a PubSub
// without any to a random node.
func (f *partFeed) redial(ctx context.Context, timeout time.Duration, current func() bool) error {
	f.mu.Lock()
	// Queued before the channels are read here: stale.
	f.flushLocked()
	gen := f.gen
	channels := []string{f.c.tagOf(f.k)}
	for n := range f.channels {
		channels = append(channels, f.c.tagOf(f.k)+n)
	}
	f.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr := f.c.masterOf(dctx, f.k)
	ps := f.c.cc.SSubscribe(context.Background()) // dials with its first command
	if err := ps.SSubscribe(dctx, channels...); err != nil {
		_ = ps.Close()
		f.mu.Lock()
		if current() {
			// Queued during the attempt (a Subscribe): the next one reads
			// the channels again.
			f.flushLocked()
		}
		f.mu.Unlock()
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !current() || f.gen != gen {
		go func() { _ = ps.Close() }() // not under mu; ends by itself
		return errAbandoned
	}
	f.down = false
	f.ps, f.addr = ps, addr
	if len(f.queue) > 0 && !f.writing {
		f.writing = true
		go f.write()
	}
	return nil
}

var _ stream.Broker = (*Cluster)(nil)
