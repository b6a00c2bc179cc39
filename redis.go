package main

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisOptions are the settings every server-side go-redis client shares,
// whichever Redis it connects to (one, Sentinel or Cluster): the caller
// adds the addresses. The pool is held open at its full size: an instance
// holds the same Redis connections with ten streams or a hundred thousand.
func redisOptions(cfg Config) *redis.UniversalOptions {
	size := cfg.RedisPoolSize
	return &redis.UniversalOptions{
		Username: cfg.RedisUsername,
		Password: cfg.RedisPassword,
		PoolSize: size, MinIdleConns: size, MaxActiveConns: size,
		DialTimeout: 2 * time.Second,
		ReadTimeout: waitReadTimeout(cfg),
		ClientName:  "ssebridge", // so that CLIENT LIST shows what is ours
		// Bounded waits: a request's deadline (REDIS_TIMEOUT) bounds its
		// reads and writes on the socket too (go-redis otherwise waits its
		// own read timeout, and again for each retry), and the wait for a
		// free connection is no longer than a request may wait in all.
		ContextTimeoutEnabled: true,
		PoolTimeout:           cfg.RedisTimeout,
	}
}

// redisClient returns the client for sessions, pub/sub and the durable
// script: for the Redis at url, or, with REDIS_SENTINEL_ADDRS, go-redis's
// failover client, which asks the sentinels where the primary is at every
// dial and drops its connections to the old one when they announce a new
// one. Both are a *redis.Client, so nothing else knows which it is.
func redisClient(cfg Config, url string) (*redis.Client, error) {
	o := redisOptions(cfg)
	if len(cfg.RedisSentinelAddrs) > 0 {
		o.Addrs = cfg.RedisSentinelAddrs
		o.MasterName = cfg.RedisSentinelMaster
		o.SentinelUsername = cfg.RedisSentinelUsername
		o.SentinelPassword = cfg.RedisSentinelPassword
		return redis.NewFailoverClient(o.Failover()), nil
	}
	ropts, err := urlOptions(url, o)
	if err != nil {
		return nil, err
	}
	return redis.NewClient(ropts), nil
}

// urlOptions are the options REDIS_URL says, with the shared ones laid
// over them. The URL's own user, password and read timeout stand unless
// the shared ones set them (REDIS_USERNAME, REDIS_PASSWORD, a long
// DURABLE_WAIT_TIMEOUT).
func urlOptions(url string, shared *redis.UniversalOptions) (*redis.Options, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	o.PoolSize, o.MinIdleConns, o.MaxActiveConns = shared.PoolSize, shared.MinIdleConns, shared.MaxActiveConns
	o.DialTimeout = shared.DialTimeout
	o.ClientName = shared.ClientName
	o.ContextTimeoutEnabled = shared.ContextTimeoutEnabled
	o.PoolTimeout = shared.PoolTimeout
	if shared.Username != "" {
		o.Username = shared.Username
	}
	if shared.Password != "" {
		o.Password = shared.Password
	}
	if shared.ReadTimeout != 0 {
		o.ReadTimeout = shared.ReadTimeout
	}
	return o, nil
}

// probeClient is /readyz's own connection to Redis: a pool that every
// stream and publish share can be saturated while Redis answers, and a
// probe waiting its turn there would call Redis unreachable. Its waits
// end with the probe's context.
func probeClient(cfg Config, url string) (*redis.Client, error) {
	cfg.RedisPoolSize = 1
	c, err := redisClient(cfg, url)
	if err != nil {
		return nil, err
	}
	c.Options().ContextTimeoutEnabled = true
	return c, nil
}

// clusterClient is go-redis's cluster client over REDIS_CLUSTER_ADDRS: a
// pool per node held at its full size, so an instance holds the same
// connections whatever its number of streams.
func clusterClient(cfg Config) *redis.ClusterClient {
	return redis.NewClusterClient(clusterOptions(redisOptions(cfg), cfg.RedisClusterAddrs))
}

// clusterOptions are o's as a cluster client's of the nodes at addrs.
// go-redis reads the slot map again on MOVED, and otherwise once a minute
// by default: after a failover the dead master answers nothing, so no
// MOVED comes, and commands for its slots would fail for up to a minute.
// One CLUSTER SLOTS every 2 s bounds that.
func clusterOptions(o *redis.UniversalOptions, addrs []string) *redis.ClusterOptions {
	o.Addrs = addrs
	co := o.Cluster()
	co.ClusterStateReloadInterval = 2 * time.Second
	return co
}

// waitReadTimeout is the client's read timeout: go-redis's default (0: 3 s),
// unless DURABLE_WAIT_TIMEOUT needs longer. The durable publish and its WAIT
// go in one pipeline, and a pipeline's replies are read within the client's
// read timeout, not the WAIT's own.
func waitReadTimeout(cfg Config) time.Duration {
	if t := cfg.DurableWaitTimeout + time.Second; cfg.DurableWaitReplicas > 0 && t > 3*time.Second {
		return t
	}
	return 0
}
