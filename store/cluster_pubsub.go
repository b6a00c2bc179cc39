package store

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
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
