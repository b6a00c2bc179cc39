package store

import (
	"cmp"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"slices"
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

// ErrPartitions means the cluster was set up for another number of
// partitions than CLUSTER_PARTITIONS.
var ErrPartitions = errors.New("CLUSTER_PARTITIONS differs from the deployment's")

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

// configScript writes a partition's config unless it names another
// partition count, atomically, so that no instance of another
// CLUSTER_PARTITIONS ever overwrites it: it returns {marker, partitions},
// the marker "" when it wrote nothing.
//
//	KEYS[1] config; ARGV maxlen, ttl, maxbytes, a new marker, partitions, idemttl
const configScript = `local p = redis.call('HGET', KEYS[1], 'partitions')
if p and p ~= ARGV[5] then
  return {'', p}
end
redis.call('HSET', KEYS[1], 'maxlen', ARGV[1], 'ttl', ARGV[2], 'maxbytes', ARGV[3], 'idemttl', ARGV[6])
redis.call('HSETNX', KEYS[1], 'marker', ARGV[4])
redis.call('HSETNX', KEYS[1], 'partitions', ARGV[5])
return {redis.call('HGET', KEYS[1], 'marker'), ARGV[5]}`

var configWrite = redis.NewScript(configScript)

// Configure writes the history settings, the partition count and a marker
// into every partition's config, and reads every partition's position; on
// the first call (or for a partition not known yet) the instance starts
// from there. It fails when the partitions' config names another
// partition count, having written nothing: it reads every partition's
// first, since an instance of another P must not change the running
// deployment's settings.
func (c *Cluster) Configure(ctx context.Context) error {
	parts := make([]*redis.StringCmd, c.parts)
	_, err := c.cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for k := range c.parts {
			parts[k] = p.HGet(ctx, c.tagOf(k)+"config", "partitions")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("reading the partitions' config: %w", err)
	}
	for k, cmd := range parts {
		if v := cmd.Val(); v != "" && v != strconv.Itoa(c.parts) {
			return c.errPartitions(k, v)
		}
	}
	var errs []error
	for k := range c.parts {
		if err := c.configure(ctx, k); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *Cluster) errPartitions(k int, found string) error {
	return fmt.Errorf("%w: CLUSTER_PARTITIONS is %d, but %sconfig says %s: every instance and backend must use the same", ErrPartitions, c.parts, c.tagOf(k), found)
}

// configure writes partition k's config (unless it names another
// partition count) and reads its position.
func (c *Cluster) configure(ctx context.Context, k int) error {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	v, err := configWrite.Run(ctx, c.cc, []string{c.tagOf(k) + "config"},
		c.maxlen, int(c.ttl.Seconds()), c.maxBytes, hex.EncodeToString(b), c.parts, idemSeconds(c.idemWindow)).StringSlice()
	if err == nil && len(v) != 2 {
		err = fmt.Errorf("unexpected reply %q", v)
	}
	if err != nil {
		return fmt.Errorf("writing partition %d's config: %w", k, err)
	}
	marker := v[0]
	if marker == "" {
		return c.errPartitions(k, v[1])
	}
	c.feeds[k].marker.Store(&marker)
	epoch, n, _, err := c.readPosition(ctx, k)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.epochs[k] == "" {
		c.adoptLocked(k, epoch, n)
	}
	c.mu.Unlock()
	return nil
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

// Position is where a stream starts, or up to where a replay reads: the
// instance's vector, once it has delivered every event each partition had
// when this was called. It reads each partition's position, then waits for
// a ping on each partition's connection to come back: whatever was
// published on a subscribed channel before the read came before the pong,
// so was delivered.
//
// Calls that arrive together share one round of reads and pings (a mass
// reconnect costs rounds, not P reads and P pings per stream): a call
// joins the next round to start, never one already under way, so the
// round's reads follow the call.
func (c *Cluster) Position(ctx context.Context) (wire.Cursor, error) {
	c.rounds.Lock()
	r := c.next
	if r == nil {
		r = &positionRound{done: make(chan struct{})}
		c.next = r
	}
	if !c.running {
		c.running, c.next = true, nil
		go c.runRounds(r)
	}
	c.rounds.Unlock()
	select {
	case <-r.done:
		return r.pos, r.err
	case <-ctx.Done():
		return wire.Cursor{}, ctx.Err()
	}
}

// positionRound is one shared round of Position.
type positionRound struct {
	done chan struct{} // closed when pos and err are set
	pos  wire.Cursor
	err  error
}

// positionTimeout bounds one round of Position.
const positionTimeout = 10 * time.Second

// runRounds runs r, then the rounds that callers joined meanwhile, one
// after the other, and returns when none is waiting.
func (c *Cluster) runRounds(r *positionRound) {
	for r != nil {
		ctx, cancel := context.WithTimeout(context.Background(), positionTimeout)
		r.pos, r.err = c.position(ctx)
		cancel()
		close(r.done)
		c.rounds.Lock()
		r, c.next = c.next, nil
		if r == nil {
			c.running = false
		}
		c.rounds.Unlock()
	}
}

func (c *Cluster) position(ctx context.Context) (wire.Cursor, error) {
	type read struct {
		epoch string
		n     uint64
	}
	reads := make([]read, c.parts)
	cmds := make([]*redis.Cmd, c.parts)
	// Each cursor is read on its slot's master as the slot map has it, the
	// node the partition's connection is subscribed on, and an ASK or MOVED
	// is not followed: while a slot migrates, its events go out on the node
	// that has its keys, and a position read on the target (through ASK)
	// would take the instance past events published there, which reach it
	// only once the slot is handed over, by the gap recovery, which starts
	// from that position. The round fails instead; streams retry.
	nodes := map[*redis.Client][]int{}
	for k := range c.parts {
		node, err := c.cc.MasterForKey(ctx, c.tagOf(k)+"cursor")
		if err != nil {
			return wire.Cursor{}, fmt.Errorf("reading partition %d's position: %w", k, err)
		}
		nodes[node] = append(nodes[node], k)
	}
	var wg sync.WaitGroup
	for node, ks := range nodes {
		wg.Go(func() {
			_, _ = node.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range ks {
					cmds[k] = c.cursor.EvalSha(ctx, p, []string{c.tagOf(k) + "cursor"})
				}
				return nil
			})
			for _, k := range ks {
				if redis.HasErrorPrefix(cmds[k].Err(), "NOSCRIPT") {
					// A node without the script (new, or restarted): with its text.
					cmds[k] = c.cursor.Run(ctx, node, []string{c.tagOf(k) + "cursor"})
				}
			}
		})
	}
	wg.Wait()
	for k, cmd := range cmds {
		s, err := cmd.Text()
		if redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK") {
			// The slot moved, or is moving: the next round reads the map again.
			c.cc.ReloadState(ctx)
		}
		if err != nil {
			return wire.Cursor{}, fmt.Errorf("reading partition %d's position: %w", k, err)
		}
		e, n, _, err := parsePosition(k, s)
		if err != nil {
			return wire.Cursor{}, err
		}
		reads[k] = read{e, n}
	}
	waits := make([]<-chan error, c.parts)
	for k, f := range c.feeds {
		done, err := f.ping(ctx)
		if err != nil {
			return wire.Cursor{}, fmt.Errorf("partition %d: %w", k, err)
		}
		waits[k] = done
	}
	for k, done := range waits {
		select {
		case err := <-done:
			if err != nil {
				return wire.Cursor{}, fmt.Errorf("partition %d: %w", k, err)
			}
		case <-ctx.Done():
			return wire.Cursor{}, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, r := range reads {
		if c.epochs[k] != "" && c.epochs[k] != r.epoch {
			// The partition lost its data and its feed has not met the new
			// epoch yet: its gap recovery deals with the streams.
			continue
		}
		c.adoptLocked(k, r.epoch, r.n)
	}
	return wire.VectorCursor(c.stampLocked(-1)), nil
}

// WaitReplicas makes Publish wait, after each durable event, until n
// replicas of the partition's master have it (Redis's WAIT, at most
// timeout), and fail when fewer did, as History.WaitReplicas does on one
// Redis.
func (c *Cluster) WaitReplicas(n int, timeout time.Duration) {
	c.waitReplicas, c.waitTimeout = n, timeout
}

// IdempotencyWindow sets how long the publish script remembers an
// idempotency key (IDEMPOTENCY_WINDOW): Configure writes it into every
// partition's config, where the script reads it.
func (c *Cluster) IdempotencyWindow(d time.Duration) { c.idemWindow = d }

// Publish appends envelope to channel's history and SPUBLISHes it, in one
// atomic call, and returns the event's position in its partition,
// "<epoch>:<n>-<ms>" (not an SSE id: see docs/CLUSTER.md). With
// WaitReplicas, an error may come with the position: the event is
// published, but not known to be on enough replicas.
func (c *Cluster) Publish(ctx context.Context, channel string, envelope []byte) (wire.Cursor, error) {
	id, _, err := c.PublishOnce(ctx, channel, envelope, "")
	return id, err
}

// PublishOnce is Publish with an idempotency key (key "": none), as
// History.PublishOnce; the key is remembered in the channel's partition.
func (c *Cluster) PublishOnce(ctx context.Context, channel string, envelope []byte, key string) (wire.Cursor, bool, error) {
	publish := (&ClusterPublisher{cc: c.cc, prefix: c.prefix, parts: c.parts, script: c.publish}).PublishOnce
	if c.waitReplicas > 0 && len(envelope) > 0 {
		publish = c.publishWait
	}
	id, replayed, err := publish(ctx, channel, envelope, key)
	if err != nil && id.IsZero() && strings.Contains(err.Error(), "has not written") {
		// The partition's config was lost under this instance (its node
		// restarted without data): write it again, publish once more (the
		// script refused, so it did not run).
		if cerr := c.configure(ctx, wire.Partition(channel, c.parts)); cerr == nil {
			id, replayed, err = publish(ctx, channel, envelope, key)
		}
	}
	return id, replayed, err
}

// publishWait runs the publish script and WAIT on one connection to the
// master of the channel's slot: WAIT counts the replicas that have that
// connection's writes, so it must not go to another node, as a cluster
// pipeline would send a command without keys.
func (c *Cluster) publishWait(ctx context.Context, channel string, envelope []byte, key string) (wire.Cursor, bool, error) {
	_, _, _, hist, _, shard := c.keys(channel)
	node, err := c.cc.MasterForKey(ctx, hist)
	if err != nil {
		return wire.Cursor{}, false, fmt.Errorf("durable publish on %s: %w", channel, err)
	}
	args := []any{shard, envelope, c.parts, key, "1"}
	id, replayed, err := publishWaiting(ctx, node, c.publish, []string{hist}, args, channel, c.waitReplicas, c.waitTimeout)
	if _, ask, ok := strings.Cut(fmt.Sprint(err), " ASK "); ok && id.IsZero() {
		// The slot is migrating and the history is on the target: there.
		if _, addr, ok := strings.Cut(ask, " "); ok {
			return c.publishWaitAsking(ctx, addr, hist, channel, args)
		}
	}
	if err != nil && id.IsZero() && (strings.Contains(err.Error(), "MOVED ") || strings.Contains(err.Error(), "CLUSTERDOWN")) {
		// The slot moved, or its master failed over, since the client last
		// read the slot map: read it again for the publisher's next try.
		c.cc.ReloadState(ctx)
	}
	return id, replayed, err
}

// publishWaitAsking is publishWait on addr, the target of a migrating slot
// that the source sent the call to (ASK): ASKING, then the script and
// WAIT, on one connection to it, as the cluster client does for one
// command. A target that serves no slot yet is not among the masters the
// client knows: the publish fails, and is retried once the slot is its.
func (c *Cluster) publishWaitAsking(ctx context.Context, addr, hist, channel string, args []any) (wire.Cursor, bool, error) {
	var mu sync.Mutex
	var target *redis.Client
	_ = c.cc.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
		if n.Options().Addr == addr {
			mu.Lock()
			target = n
			mu.Unlock()
		}
		return nil
	})
	if target == nil {
		return wire.Cursor{}, false, fmt.Errorf("durable publish on %s: ASK to %s, not a master known yet", channel, addr)
	}
	// ASKING holds for one command: the script must be there for EVALSHA.
	if err := target.ScriptLoad(ctx, c.publish.src).Err(); err != nil {
		return wire.Cursor{}, false, fmt.Errorf("durable publish on %s: %w", channel, err)
	}
	conn := target.Conn()
	defer conn.Close()
	if err := conn.Do(ctx, "asking").Err(); err != nil {
		return wire.Cursor{}, false, fmt.Errorf("durable publish on %s: %w", channel, err)
	}
	return publishWaiting(ctx, conn, c.publish, []string{hist}, args, channel, c.waitReplicas, c.waitTimeout)
}

// ClusterPublisher publishes durable events on Redis Cluster as a backend
// does, with no feed of its own (`ssebridge publish`).
type ClusterPublisher struct {
	cc     *redis.ClusterClient
	prefix string
	parts  int
	script *onceScript
}

// NewClusterPublisher returns a publisher for channels named prefix+name
// in parts partitions.
func NewClusterPublisher(cc *redis.ClusterClient, prefix string, parts int) *ClusterPublisher {
	return &ClusterPublisher{cc: cc, prefix: prefix, parts: parts, script: newOnceScript(ClusterPublishScript)}
}

// Publish runs the cluster publish script for channel.
func (p *ClusterPublisher) Publish(ctx context.Context, channel string, envelope []byte) (wire.Cursor, error) {
	id, _, err := p.PublishOnce(ctx, channel, envelope, "")
	return id, err
}

// PublishOnce runs the cluster publish script for channel with an
// idempotency key ("" for none), sent once: the cluster client follows
// MOVED and ASK (the script did not run), and retries nothing else.
func (p *ClusterPublisher) PublishOnce(ctx context.Context, channel string, envelope []byte, key string) (wire.Cursor, bool, error) {
	t := p.prefix + "{p" + strconv.Itoa(wire.Partition(channel, p.parts)) + "}:"
	id, replayed, err := scriptReply(p.script.run(ctx, p.cc, []string{t + channel + ":history"}, t+channel, envelope, p.parts, key, "1"))
	if err != nil {
		return wire.Cursor{}, false, fmt.Errorf("durable publish on %s: %w", channel, err)
	}
	return id, replayed, nil
}

// PublishBareID takes a new position in channel's partition and publishes it on
// the channel with no event: streams that get it move their id (and its
// time) on, so an idle stream's id never grows older than the retention.
func (c *Cluster) PublishBareID(ctx context.Context, channel string) error {
	_, _, _, hist, _, shard := c.keys(channel)
	ctx, cancel := context.WithTimeout(ctx, configTimeout)
	defer cancel()
	err := c.publish.run(ctx, c.cc, []string{hist}, shard, "", c.parts).Err()
	if err != nil {
		return fmt.Errorf("mark on %s: %w", channel, err)
	}
	return nil
}

// readBatch is how many entries of one channel a page reads at most.
const readBatch = 256

// Read returns one page of the durable events of channels, each after the
// position of its partition in its own cursor in after, up to until (zero
// on a first read: Position now), in order within each partition,
// partition after partition, up to about maxBytes of envelopes. Each
// event's id is the page's start (per partition, the earliest of after)
// moved on by the events before it and itself.
func (c *Cluster) Read(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, maxBytes int) (wire.Page, error) {
	if len(after) != len(channels) {
		return wire.Page{}, fmt.Errorf("reading history: %d cursors for %d channels", len(after), len(channels))
	}
	first := until.IsZero()
	if first {
		var err error
		if until, err = c.Position(ctx); err != nil {
			return wire.Page{}, fmt.Errorf("reading history: %w", err)
		}
	}
	u := until.Vector()
	if u == nil {
		return wire.Page{Position: until, Reset: wire.ResetEpoch}, nil
	}
	if len(channels) == 0 {
		return wire.Page{Position: until}, nil
	}
	var start wire.Cursor
	older := map[int]uint64{} // partition -> a position of an earlier term than until's
	for i, a := range after {
		v := a.Vector()
		k := wire.Partition(channels[i], c.parts)
		switch {
		case v == nil || v.Tag != u.Tag || len(v.Pos) != len(u.Pos):
			return wire.Page{Position: until, Reset: wire.ResetEpoch}, nil
		case v.Pos[k] > u.Pos[k]:
			return wire.Page{Position: until, Reset: wire.ResetFuture}, nil
		case first && v.Time+uint64(c.ttl.Milliseconds()) < uint64(time.Now().UnixMilli()):
			// An id made longer than HISTORY_TTL ago may be missing events
			// that expired with their channel's history.
			return wire.Page{Position: until, Reset: wire.ResetTooOld}, nil
		}
		if termOf(v.Pos[k]) < termOf(u.Pos[k]) {
			older[k] = max(older[k], v.Pos[k])
		}
		if i == 0 {
			start = a
		} else {
			start = start.Min(a)
		}
	}
	if len(older) > 0 {
		// The partition has had a new writer since the id: an id past
		// where its term ended for the new writer names events a failover
		// lost. As one Redis resets an id past its position ("foreign").
		lost, err := c.lost(ctx, older)
		if err != nil {
			return wire.Page{}, fmt.Errorf("reading history: %w", err)
		}
		if len(lost) > 0 {
			return wire.Page{Position: until, Reset: wire.ResetFuture}, nil
		}
	}

	p := wire.Page{Position: until}
	id := start.Vector()
	bytes := 0
	byPart := make([][]string, c.parts)
	fromPart := make([][]uint64, c.parts)
	for i, ch := range channels {
		k := wire.Partition(ch, c.parts)
		byPart[k] = append(byPart[k], ch)
		fromPart[k] = append(fromPart[k], after[i].Vector().Pos[k])
	}
	// The channels with nothing left up to until: with More, a later page
	// need not read them, and must not check their trim marks (a busy
	// channel trimmed since of events past until, which arrive live, has
	// lost nothing).
	var finished []string
	for k, chans := range byPart {
		if len(chans) == 0 {
			continue
		}
		entries, complete, more, trimmed, err := c.readPartition(ctx, k, chans, fromPart[k], u.Pos[k])
		if err != nil {
			return wire.Page{}, fmt.Errorf("reading history: %w", err)
		}
		if trimmed {
			return wire.Page{Position: until, Reset: wire.ResetTrimmed}, nil
		}
		for j, e := range entries {
			if bytes >= maxBytes || len(p.Events) >= pageEvents {
				p.More, p.Finished = true, append(finished, done(chans, complete, entries[j:])...)
				return p, nil
			}
			id = id.With(k, e.n)
			p.Events = append(p.Events, wire.Durable{Cursor: wire.VectorCursor(id), Channel: e.channel, Envelope: []byte(e.env)})
			bytes += len(e.env)
		}
		finished = append(finished, done(chans, complete, nil)...)
		if more {
			p.More, p.Finished = true, finished
			return p, nil
		}
	}
	return p, nil
}

// done returns those of channels read to the end (complete) that have no
// entry in rest, the entries a page left for the next.
func done(channels []string, complete []bool, rest []entry) []string {
	var out []string
	for i, ch := range channels {
		if complete[i] && !slices.ContainsFunc(rest, func(e entry) bool { return e.channel == ch }) {
			out = append(out, ch)
		}
	}
	return out
}

// entry is one durable event read back from a partition.
type entry struct {
	n       uint64
	channel string
	env     string
}

// readPartition reads the events of channels of partition k, each after
// its own position in from, up to upTo, merged in position order. more is
// set when a channel had more than one batch: the entries then stop at the
// last position every channel was read up to; complete[i] says that
// channels[i] has no event up to upTo beyond the entries. trimmed is set
// when a channel's history was trimmed past its position.
//
// One pipeline: per channel, its entries, then its trimmed marks, all on
// the partition's node in that order, so an event trimmed before the
// XRANGE read it has moved the mark before it is read. The mark is the
// history's own (trimmedScript); a :trimmed key, which the publish script
// wrote before, counts until it expires.
func (c *Cluster) readPartition(ctx context.Context, k int, channels []string, from []uint64, upTo uint64) (entries []entry, complete []bool, more, trimmed bool, err error) {
	ranges := make([]*redis.XMessageSliceCmd, len(channels))
	trims := make([]*redis.StringCmd, len(channels))
	marks := make([]*redis.Cmd, len(channels))
	_, err = c.cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, ch := range channels {
			_, _, _, hist, trim, _ := c.keys(ch)
			ranges[i] = p.XRangeN(ctx, hist, strconv.FormatUint(from[i]+1, 10)+"-0", strconv.FormatUint(upTo, 10), readBatch)
			marks[i] = p.Eval(ctx, trimmedScript, []string{hist})
			trims[i] = p.Get(ctx, trim)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, false, false, err
	}
	limit := upTo
	complete = make([]bool, len(channels))
	for i, ch := range channels {
		mark, _ := marks[i].Text()
		for _, t := range []string{mark, trims[i].Val()} {
			if n, ok := entryPos(t); ok && from[i] < n {
				return nil, nil, false, true, nil
			}
		}
		msgs := ranges[i].Val()
		for _, m := range msgs {
			n, ok := entryPos(m.ID)
			env, _ := m.Values["e"].(string)
			if !ok || env == "" {
				continue // not written by the publish script
			}
			entries = append(entries, entry{n, ch, env})
		}
		complete[i] = len(msgs) < readBatch
		if !complete[i] {
			if n, ok := entryPos(msgs[len(msgs)-1].ID); ok && n < limit {
				limit, more = n, true
			}
		}
	}
	slices.SortFunc(entries, func(a, b entry) int { return cmp.Compare(a.n, b.n) })
	for i, e := range entries {
		if e.n > limit {
			// Cut at the limit: a channel with entries past it is not read
			// to the end.
			for _, cut := range entries[i:] {
				complete[slices.Index(channels, cut.channel)] = false
			}
			return entries[:i], complete, more, false, nil
		}
	}
	return entries, complete, more, false, nil
}

// trimmedScript returns the id of the newest event trimmed from a
// history (KEYS[1]), "0-0" for none, nil for no history: the publish
// script keeps it as the stream's max-deleted-entry-id, which only XINFO
// shows; read here so that the entries XINFO holds are not sent.
const trimmedScript = `if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then return info[i + 1] end
end
return false`

// entryPos is the partition position of a history entry id "<n>-<ms>".
func entryPos(id string) (uint64, bool) {
	num, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseUint(num, 10, 64)
	return n, err == nil
}
