package store

// A deployment's settings in every partition's config hash, and the
// check that every instance and backend runs with the same partition
// count.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// ErrPartitions means the cluster was set up for another number of
// partitions than CLUSTER_PARTITIONS.
var ErrPartitions = errors.New("CLUSTER_PARTITIONS differs from the deployment's")

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
