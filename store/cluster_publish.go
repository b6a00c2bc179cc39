package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/wire"
)

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
