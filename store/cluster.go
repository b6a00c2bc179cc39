package store

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/wire"
)

// ClusterPublishScript is the durable publish script of cluster mode, as a
// backend runs it: EVAL/EVALSHA with 1 key, the channel's history, then
// the shard channel, the envelope, the partition count and optionally an
// idempotency key (docs/CLUSTER.md).
//
//go:embed cluster_publish.lua
var ClusterPublishScript string

// cursorScript reads a partition's cursor, "<epoch>:<position>:<writer>:
// <ends>" (docs/CLUSTER.md, "Position scheme"), as the publish script
// would leave it before taking a position: on a node that is not the
// cursor's writer (a promoted replica, a restarted master, the target of
// a slot move) it starts a new term first, so that a position read here is
// one this node will not give out again. A partition with no cursor
// (first start, or its node lost its data) gets a new epoch.
const cursorScript = `local v = redis.call('GET', KEYS[1])
if not v then
  local t = redis.call('TIME')
  v = string.format('%x%05x', tonumber(t[1]), tonumber(t[2])) .. ':0::'
end
local epoch, p, writer, ends = string.match(v, '^(%w+):(%d+):(%x*):([%d=,]*)$')
if not epoch then
  epoch, p = string.match(v, '^(%w+):(%d+)$')
  writer, ends = '', ''
end
if not epoch then
  return redis.error_reply(KEYS[1] .. ' is not a position of ssebridge: ' .. v)
end
local TERM = 4294967296
p = tonumber(p)
local me = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
if writer ~= me then
  local term = math.floor(p / TERM)
  local ce = tonumber(string.match(redis.call('CLUSTER', 'INFO'), 'cluster_my_epoch:(%d+)')) or 0
  local e = {}
  for x in string.gmatch(ends, '[^,]+') do e[#e + 1] = x end
  e[#e + 1] = string.format('%d=%d', term, p)
  while #e > 16 do table.remove(e, 1) end
  p = math.max(term + 1, math.min(ce, 65535) * 32) * TERM
  v = string.format('%s:%d:%s:%s', epoch, p, me, table.concat(e, ','))
  redis.call('SET', KEYS[1], v)
end
return v`

// Cluster is ssebridge's Redis I/O on Redis Cluster: the pub/sub feed
// (sharded, one connection per partition), the durable history and its
// publish script, and the instance's vector of partition positions that
// makes the ids (docs/CLUSTER.md). It serves the hub as both its
// Subscriber and its History.
//
// Exactness rests on one lock: mu is held while a durable event's id is
// taken from the vector and while the hub fans the event out (deliver),
// so the ids every stream gets grow in every partition, and a stream that
// gets an id saying partition q is at x has got, or had replayed, every
// event of its channels in q up to x. Control messages are delivered
// under it too (a join reads the newest id delivered); live events are
// not (they have no id). Nothing holds mu, or a partition's own lock,
// while it waits for Redis: the hub subscribes from inside deliver (a
// join), so a Subscribe only queues its command for the partition's
// writer (partFeed.enqueueLocked), and every command has a deadline.
type Cluster struct {
	cc        *redis.ClusterClient
	prefix    string
	parts     int
	maxlen    int
	maxBytes  int
	ttl       time.Duration
	pingEvery time.Duration
	lagLimit  time.Duration
	log       *slog.Logger
	metrics   *FeedMetrics
	publish   *onceScript
	cursor    *redis.Script
	size      *redis.Script

	waitReplicas int           // WaitReplicas; 0: no WAIT
	waitTimeout  time.Duration // WaitReplicas
	idemWindow   time.Duration // IdempotencyWindow; 0: the script's default

	feeds []*partFeed

	mu      sync.Mutex // held across taking an id and delivering its event
	epochs  []string   // per partition; "" while unknown
	pos     []uint64   // per partition: the last position delivered
	tag     string     // digest of epochs
	deliver func(channel string, m wire.Message, err error)
	// live is deliver, for live events, which take no lock (set by Run).
	live  atomic.Pointer[func(channel string, m wire.Message, err error)]
	retry func() // ends every stream with a retry hint (a partition lost events)

	rounds  sync.Mutex     // guards next and running
	next    *positionRound // the round of Position that callers join; not started
	running bool           // a goroutine runs rounds
}

// ClusterOptions are a Cluster's settings, the same on every instance
// and backend of a deployment but for Log and Metrics.
type ClusterOptions struct {
	// Prefix begins every key and channel name (CHANNEL_PREFIX).
	Prefix string
	// Partitions is the number of partitions channels are spread over
	// (CLUSTER_PARTITIONS, 1 to wire.MaxPartitions).
	Partitions int
	// MaxLen is the number of events kept per channel (HISTORY_MAXLEN).
	MaxLen int
	// MaxEventBytes is the largest envelope the publish script takes
	// (MAX_EVENT_BYTES).
	MaxEventBytes int
	// TTL is how long a channel's history is kept after its last publish
	// (HISTORY_TTL).
	TTL time.Duration
	// PingEvery is how long a partition's connection may be silent before
	// it is pinged (REDIS_PING_INTERVAL).
	PingEvery time.Duration
	// Log gets the partitions' reconnections and recoveries.
	Log *slog.Logger
	// Metrics are the feed's metrics (NewFeedMetrics); required.
	Metrics *FeedMetrics
}

// NewCluster returns cluster-mode storage on cc, with the settings o.
func NewCluster(cc *redis.ClusterClient, o ClusterOptions) *Cluster {
	parts, m := o.Partitions, o.Metrics
	c := &Cluster{
		cc: cc, prefix: o.Prefix, parts: parts, maxlen: o.MaxLen, maxBytes: o.MaxEventBytes, ttl: o.TTL,
		pingEvery: o.PingEvery, log: o.Log, metrics: m,
		publish: newOnceScript(ClusterPublishScript),
		cursor:  redis.NewScript(cursorScript),
		size:    redis.NewScript(sizeScript),
		epochs:  make([]string, parts),
		pos:     make([]uint64, parts),
	}
	for k := range parts {
		// Each connection is always subscribed to its partition's own shard
		// channel "<prefix>{p<k>}:" (no logical channel has an empty name),
		// so it is always to the partition's master, and pings on it are
		// answered in order with the partition's messages.
		f := &partFeed{c: c, k: k, channels: make(map[string]struct{}), unsubscribing: make(map[string]int)}
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		f.addr = c.masterOf(ctx, k)
		f.init(cc.SSubscribe(ctx, c.tagOf(k)), o.PingEvery)
		cancel()
		c.feeds = append(c.feeds, f)
	}
	c.tag = c.digest()
	lag := c.Lag
	m.lag.Store(&lag)
	return c
}

// SetLagLimit sets PUBSUB_LAG_LIMIT for every partition's connection,
// before Run (see Feed.SetLagLimit).
func (c *Cluster) SetLagLimit(limit time.Duration) { c.lagLimit = limit }

// Lag is the greatest of the partitions' lags (see Feed.Lag): a stream
// reads partitions of its choosing, and readiness is about the worst.
func (c *Cluster) Lag() time.Duration {
	var lag time.Duration
	for _, f := range c.feeds {
		lag = max(lag, f.Lag())
	}
	return lag
}

// masterOf is the address of partition k's master as the slot map has
// it, "" if unknown.
func (c *Cluster) masterOf(ctx context.Context, k int) string {
	node, err := c.cc.MasterForKey(ctx, c.tagOf(k)+"cursor")
	if err != nil {
		return ""
	}
	return node.Options().Addr
}

// Partitions is the number of partitions (CLUSTER_PARTITIONS).
func (c *Cluster) Partitions() int { return c.parts }

// ParseCursor reads a Last-Event-ID of this deployment.
func (c *Cluster) ParseCursor(s string) (wire.Cursor, error) { return wire.ParseVector(s, c.parts) }

func (c *Cluster) tagOf(k int) string { return c.prefix + "{p" + strconv.Itoa(k) + "}:" }

func (c *Cluster) keys(channel string) (k int, cursor, config, history, trimmed, shard string) {
	k = wire.Partition(channel, c.parts)
	t := c.tagOf(k)
	return k, t + "cursor", t + "config", t + channel + ":history", t + channel + ":trimmed", t + channel
}

// digest is the tag of the current epochs. Guarded by mu (or before Run).
func (c *Cluster) digest() string {
	return strconv.FormatUint(uint64(crc32.ChecksumIEEE([]byte(strings.Join(c.epochs, ",")))), 36)
}

// readPosition reads partition k's epoch and position (cursorScript,
// which starts a new term on a new writer) and where its earlier terms
// ended.
func (c *Cluster) readPosition(ctx context.Context, k int) (epoch string, n uint64, ends map[uint64]uint64, err error) {
	s, err := c.cursor.Run(ctx, c.cc, []string{c.tagOf(k) + "cursor"}).Text()
	if err != nil {
		return "", 0, nil, fmt.Errorf("reading partition %d's position: %w", k, err)
	}
	return parsePosition(k, s)
}

// parsePosition reads a partition's cursor, "<epoch>:<n>:<writer>:<ends>"
// or an earlier version's "<epoch>:<n>" (docs/CLUSTER.md, "Position
// scheme").
func parsePosition(k int, s string) (string, uint64, map[uint64]uint64, error) {
	e, n, ok := wire.ParsePartitionPosition(s)
	if !ok {
		return "", 0, nil, fmt.Errorf("partition %d's position %q is not ssebridge's", k, s)
	}
	ends := map[uint64]uint64{}
	if parts := strings.SplitN(s, ":", 4); len(parts) == 4 {
		for end := range strings.SplitSeq(parts[3], ",") {
			t, p, _ := strings.Cut(end, "=")
			term, err1 := strconv.ParseUint(t, 10, 64)
			pos, err2 := strconv.ParseUint(p, 10, 64)
			if err1 == nil && err2 == nil {
				ends[term] = pos
			}
		}
	}
	return e, n, ends, nil
}

// termOf is the term of a position (term*2^32 + count).
func termOf(pos uint64) uint64 { return pos >> 32 }

// inLineage reports whether pos, a position of partition k at or before
// now, is one of the partition's history as it stands: in now's term, or
// at or before where its own term ended as the next writer had it. A
// position past that end, or of a term the partition's writers never
// handed on (lost with its writer, or older than the 16 ends kept), names
// events a failover lost.
func inLineage(pos, now uint64, ends map[uint64]uint64) bool {
	if termOf(pos) >= termOf(now) {
		return true
	}
	end, ok := ends[termOf(pos)]
	return ok && pos <= end
}

// lost reports, of positions (partition -> position, each in an earlier
// term than the partition's now), the partitions whose position is not in
// the partition's history: events a failover lost.
func (c *Cluster) lost(ctx context.Context, positions map[int]uint64) ([]int, error) {
	ks := make([]int, 0, len(positions))
	cmds := make([]*redis.StringCmd, 0, len(positions))
	_, err := c.cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for k := range positions {
			ks = append(ks, k)
			cmds = append(cmds, p.Get(ctx, c.tagOf(k)+"cursor"))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the partitions' terms: %w", err)
	}
	var out []int
	for i, k := range ks {
		_, now, ends, err := parsePosition(k, cmds[i].Val())
		if err != nil {
			return nil, err
		}
		if !inLineage(positions[k], now, ends) {
			out = append(out, k)
		}
	}
	return out, nil
}

// AfterGrant is Cluster mode's rule for a room's grant (wire.AfterGrant):
// the grant is the position of the room's partition when the room was
// granted, and a replay of the room reads that partition after it. A
// grant of an epoch the partition no longer has, or an after of another
// tag than the instance's, is left to the replay's own epoch check.
func (c *Cluster) AfterGrant(after wire.Cursor, channel, grant string) wire.Cursor {
	epoch, n, ok := wire.ParsePartitionPosition(grant)
	v := after.Vector()
	if !ok || v == nil {
		return after
	}
	k := wire.Partition(channel, c.parts)
	c.mu.Lock()
	current := v.Tag == c.tag && len(v.Pos) == c.parts && c.epochs[k] == epoch
	c.mu.Unlock()
	if !current || v.Pos[k] >= n {
		return after
	}
	w := &wire.Vector{Tag: v.Tag, Pos: append([]uint64(nil), v.Pos...), Own: -1, Time: v.Time}
	w.Pos[k] = n
	return wire.VectorCursor(w)
}

// adoptLocked takes partition k to be at n of epoch, as Redis has it.
func (c *Cluster) adoptLocked(k int, epoch string, n uint64) {
	if c.epochs[k] != epoch {
		c.epochs[k], c.pos[k] = epoch, n
		c.tag = c.digest()
	} else if n > c.pos[k] {
		c.moveLocked(k, n)
	}
}

// moveLocked moves partition k on to n, a later position of its epoch.
// When n is of a later term, the partition has a new writer: whether it
// has every event the instance delivered of the term before is checked
// apart (checkLineage), since that reads Redis and mu is held.
func (c *Cluster) moveLocked(k int, n uint64) {
	if old := c.pos[k]; termOf(n) > termOf(old) && old > 0 {
		go c.checkLineage(k, c.epochs[k], old)
	}
	c.pos[k] = n
}

// lineageTimeout bounds checkLineage's read.
const lineageTimeout = 10 * time.Second

// checkLineage checks that delivered, the last position the instance had
// delivered of partition k before the partition's term changed, is in the
// partition's history as the new writer has it. If not, a failover lost
// events the instance delivered: as one Redis does then, its streams
// start again, each resuming by its own id, which names lost events only
// if it had them (and is then reset, Read) and goes on exactly otherwise.
func (c *Cluster) checkLineage(k int, epoch string, delivered uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), lineageTimeout)
	defer cancel()
	lost, err := c.lost(ctx, map[int]uint64{k: delivered})
	if err != nil {
		// A resume's own read checks its id (Read): nothing is lost unseen.
		c.log.Warn("a partition has a new writer; could not check that it has every event delivered", "partition", k, "err", err)
		return
	}
	c.mu.Lock()
	same := c.epochs[k] == epoch
	c.mu.Unlock()
	if len(lost) > 0 && same {
		c.log.Warn("a partition's new writer does not have every event the instance delivered (a failover lost them): streams told to reconnect", "partition", k)
		c.retryAll()
	}
}

// stampLocked is the instance's vector now.
func (c *Cluster) stampLocked(own int) *wire.Vector {
	return &wire.Vector{Tag: c.tag, Pos: append([]uint64(nil), c.pos...), Own: own, Time: uint64(time.Now().UnixMilli())}
}

// Subscribe subscribes to channels, each on its partition's connection.
func (c *Cluster) Subscribe(names ...string) error {
	var errs []error
	for _, n := range names {
		if err := c.feeds[wire.Partition(n, c.parts)].subscribe(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Unsubscribe unsubscribes from channels.
func (c *Cluster) Unsubscribe(names ...string) {
	for _, n := range names {
		c.feeds[wire.Partition(n, c.parts)].unsubscribe(n)
	}
}

// Sync returns once every Subscribe written before it is in force, on
// every partition that has channels.
func (c *Cluster) Sync(ctx context.Context) error {
	var waits []<-chan error
	for _, f := range c.feeds {
		if f.channelCount() == 0 {
			continue
		}
		done, err := f.ping(ctx)
		if err != nil {
			return err
		}
		waits = append(waits, done)
	}
	for _, done := range waits {
		select {
		case err := <-done:
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Connected reports whether every partition's connection is up.
func (c *Cluster) Connected() bool {
	for _, f := range c.feeds {
		if !f.connected.Load() {
			return false
		}
	}
	return true
}
