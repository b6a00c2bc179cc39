package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// StormResult is what -storm reports: every stream dropped at once, then
// reconnected with Last-Event-ID within the jitter, as browsers do after a
// deploy or a network cut, while durable events go on being published.
type StormResult struct {
	JitterSeconds float64 `json:"jitter_seconds"`
	// Resumed streams are live again; Intact ones, after the drain, have
	// every event once (their own count, next to the run's lost).
	Resumed int `json:"resumed"`
	Intact  int `json:"intact"`
	Resets  int `json:"resets"`
	// LastLiveSeconds runs from the drop to the last stream live again.
	LastLiveSeconds float64 `json:"last_live_seconds"`
	// Refused counts non-200 answers by status; those without Retry-After
	// or not 429/503 are also in Unexpected.
	Refused    map[string]int `json:"refused,omitempty"`
	Unexpected int            `json:"unexpected_refusals"`
	Errors     int            `json:"connect_errors"`
	// The server's RSS just before the drop and at its highest after it.
	RSSBeforeKiB int64 `json:"rss_before_kib,omitempty"`
	RSSPeakKiB   int64 `json:"rss_peak_kib,omitempty"`
	// Redis commands per second: over the second before the drop, from
	// the drop to the last stream live, and the highest over 100 ms.
	RedisBaselinePerS float64          `json:"redis_baseline_commands_per_s"`
	RedisPerS         float64          `json:"redis_commands_per_s"`
	RedisPeakPerS     float64          `json:"redis_peak_commands_per_s"`
	RedisCommands     map[string]int64 `json:"redis_commands"`
	// RedisCPUSeconds is Redis's CPU from the drop to the last stream live.
	RedisCPUSeconds float64 `json:"redis_cpu_seconds"`
}

// stormGiveUp bounds how long a stream keeps trying to come back.
const stormGiveUp = 60 * time.Second

// storm drops every stream at once and brings each back after a random
// delay within jitter, honouring Retry-After on a 429 or 503. It returns
// once every stream is live again or has given up; the streams' readers
// are added to readers.
func storm(ctx context.Context, c config, rdb *redis.Client, streams []*stream, readers *sync.WaitGroup, delivered *atomic.Int64) *StormResult {
	res := &StormResult{JitterSeconds: c.jitter.Seconds(), Refused: map[string]int{}}
	before := redisInfo(ctx, rdb, "stats")["total_commands_processed"]
	time.Sleep(time.Second)
	cmdsBefore := commandCalls(ctx, rdb)
	dropTotal := redisInfo(ctx, rdb, "stats")["total_commands_processed"]
	res.RedisBaselinePerS = dropTotal - before
	res.RSSBeforeKiB = rssKiB(c.pid)

	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // RSS and Redis commands, every 100 ms, until the storm is over
		defer close(sampled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		last, lastAt := dropTotal, time.Now()
		for {
			select {
			case <-sampling:
				return
			case now := <-tick.C:
				res.RSSPeakKiB = max(res.RSSPeakKiB, rssKiB(c.pid))
				total := redisInfo(ctx, rdb, "stats")["total_commands_processed"]
				res.RedisPeakPerS = max(res.RedisPeakPerS, (total-last)/now.Sub(lastAt).Seconds())
				last, lastAt = total, now
			}
		}
	}()

	cpuBefore := redisCPU(ctx, rdb)
	drop := time.Now()
	for _, s := range streams {
		if s != nil {
			s.conn.Close()
		}
	}
	var mu sync.Mutex
	var lastLive time.Duration
	var back sync.WaitGroup
	for k, s := range streams {
		if s == nil {
			continue
		}
		back.Go(func() {
			<-s.done // its reader has seen the drop
			time.Sleep(rand.N(c.jitter))
			u, path := streamURL(c, s.i)
			live, statuses, errs := reconnect(ctx, s, u, path, c.header, source(c, k), drop.Add(stormGiveUp))
			mu.Lock()
			defer mu.Unlock()
			for _, st := range statuses {
				res.Refused[strconv.Itoa(st.status)]++
				if (st.status != 429 && st.status != 503) || st.retryAfter == "" {
					res.Unexpected++
				}
			}
			res.Errors += errs
			if live {
				res.Resumed++
				lastLive = max(lastLive, time.Since(drop))
				s.done = make(chan struct{})
				readers.Go(func() { s.read(delivered) })
			}
		})
	}
	back.Wait()
	close(sampling)
	<-sampled
	res.LastLiveSeconds = lastLive.Seconds()
	res.RedisCPUSeconds = (redisCPU(ctx, rdb) - cpuBefore).Seconds()
	res.RedisPerS = (redisInfo(ctx, rdb, "stats")["total_commands_processed"] - dropTotal) / time.Since(drop).Seconds()
	res.RedisCommands = map[string]int64{}
	for name, n := range commandCalls(ctx, rdb) {
		if d := n - cmdsBefore[name]; d > 0 {
			res.RedisCommands[name] = d
		}
	}
	return res
}

// reconnect brings stream s back until it is live or until the deadline:
// after a refusal with Retry-After it waits that long, after a connection
// error one second; any other refusal is final. It returns whether the
// stream is live, the refusals and the connection errors met.
func reconnect(ctx context.Context, s *stream, u *url.URL, path string, header []string, src net.IP, deadline time.Time) (bool, []refusal, int) {
	var refusals []refusal
	errs := 0
	for time.Now().Before(deadline) {
		err := s.connect(ctx, u, path, header, src)
		if err == nil {
			return true, refusals, errs
		}
		var r *refusal
		if !errors.As(err, &r) {
			errs++
			time.Sleep(time.Second)
			continue
		}
		refusals = append(refusals, *r)
		secs, perr := strconv.Atoi(r.retryAfter)
		if perr != nil || (r.status != 429 && r.status != 503) {
			return false, refusals, errs
		}
		time.Sleep(time.Duration(secs) * time.Second)
	}
	return false, refusals, errs
}

// commandCalls reads INFO commandstats: calls per command.
func commandCalls(ctx context.Context, rdb *redis.Client) map[string]int64 {
	out := map[string]int64{}
	text, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return out
	}
	for _, line := range strings.Split(text, "\r\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
		if !ok {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		out[name], _ = strconv.ParseInt(calls, 10, 64)
	}
	return out
}
