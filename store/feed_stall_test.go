package store_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// stallPing is REDIS_PING_INTERVAL in the stall tests: a stalled
// connection is taken as dead after twice that, and a redial waits for
// Redis's answers for at most that long (min(ping interval, 2 s)).
const stallPing = 500 * time.Millisecond

// stalledFeed is a feed through a linkProxy, running and subscribed to
// room:a; it returns what the feed delivers and how many times connected
// ran. The client is set up as main.go's is (a 2 s dial timeout, go-redis's
// other timeouts).
type stalledFeed struct {
	proxy     *linkProxy
	admin     *redis.Client // straight to Redis, not through the proxy
	feed      *store.Feed
	metrics   *store.FeedMetrics
	log       *syncBuffer
	delivered chan string
	connected atomic.Int32
}

func startStalledFeed(t *testing.T) *stalledFeed {
	t.Helper()
	return startLaggingFeed(t, stallPing, 0)
}

// startLaggingFeed is startStalledFeed with a ping interval and a
// PUBSUB_LAG_LIMIT (0: none); the feed's log is in s.log.
func startLaggingFeed(t *testing.T, every, lagLimit time.Duration) *stalledFeed {
	t.Helper()
	srv := redistest.Start(t)
	s := &stalledFeed{
		proxy:     startProxy(t, srv.Addr),
		admin:     srv.Client(),
		metrics:   store.NewFeedMetrics(prometheus.NewRegistry()),
		log:       &syncBuffer{},
		delivered: make(chan string, 1<<16),
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.proxy.Addr, DialTimeout: 2 * time.Second})
	t.Cleanup(func() { rdb.Close() })
	var w io.Writer = s.log
	if testing.Verbose() {
		w = io.MultiWriter(s.log, os.Stderr)
	}
	s.feed = store.NewFeed(rdb, "sse:", every, slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})), s.metrics)
	s.feed.SetLagLimit(lagLimit)
	if err := s.feed.Subscribe("room:a"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.feed.Run(ctx, func(_ string, m wire.Message, _ error) { s.delivered <- string(m.Body) }, func(context.Context) { s.connected.Add(1) })
	}()
	t.Cleanup(func() { cancel(); <-done })
	// Up first: a barrier before the connection was ever up fails at once.
	await(t, 5*time.Second, "the feed connected", s.feed.Connected)
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	if err := s.feed.Sync(sctx); err != nil {
		t.Fatal(err)
	}
	s.publish(t, "room:a", "before")
	s.expect(t, "before", 5*time.Second)
	return s
}

func (s *stalledFeed) publish(t *testing.T, channel, body string) {
	t.Helper()
	if err := s.admin.Publish(context.Background(), "sse:"+channel, body).Err(); err != nil {
		t.Fatal(err)
	}
}

// expect waits for body, skipping others, for up to d.
func (s *stalledFeed) expect(t *testing.T, body string, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case got := <-s.delivered:
			if got == body {
				return
			}
		case <-deadline:
			t.Fatalf("%q not delivered within %v", body, d)
		}
	}
}

// awaitLost waits until the feed reports its connection lost, and returns
// how long that took.
func (s *stalledFeed) awaitLost(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	for s.feed.Connected() {
		if time.Since(began) > limit {
			t.Fatalf("the feed still reports its connection up %v into a stall", limit)
		}
		time.Sleep(10 * time.Millisecond) // polling a state: nothing to await
	}
	return time.Since(began)
}

// deliveredWithin publishes a new message on channel every 50 ms until
// one is delivered, and returns how long that took, failing past limit.
// (Live messages published before the feed has resubscribed are lost: the
// first one delivered says when live delivery resumed.)
func (s *stalledFeed) deliveredWithin(t *testing.T, channel string, limit time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	sent := map[string]bool{}
	for i := 0; ; i++ {
		body := "fresh-" + strconv.Itoa(i)
		sent[body] = true
		s.publish(t, channel, body)
		for {
			select {
			case got := <-s.delivered:
				if sent[got] {
					return time.Since(began)
				}
				continue
			case <-tick.C:
			}
			break
		}
		if time.Since(began) > limit {
			t.Fatalf("no fresh message on %s delivered within %v", channel, limit)
		}
	}
}

// TestFeedRecoversAfterStall: a link to Redis that stops carrying
// anything, without a reset (a partition, a dead NAT entry). The feed must
// take its connection as dead within about two ping intervals, keep
// trying to make a new one with short deadlines, and once the link heals,
// deliver a fresh publish within its backoff (100 ms to 2 s). The bound
// asserted is 10 s after the heal: far from the tens of seconds the feed
// took before the redial had deadlines of its own (go-redis dialled inside
// the feed's read, with its own 3 s per read), and clear of a loaded
// machine's delays (3 s was missed once at a load average of 17).
func TestFeedRecoversAfterStall(t *testing.T) {
	s := startStalledFeed(t)
	s.proxy.Stall()
	noticed := s.awaitLost(t, 4*stallPing+2*time.Second)
	t.Logf("stall noticed after %v (ping interval %v)", noticed.Round(time.Millisecond), stallPing)
	// Stalled for a few redial attempts more (each ends at its deadline).
	for range 3 {
		<-s.proxy.Accepted
	}
	s.proxy.Heal()
	took := s.deliveredWithin(t, "room:a", 30*time.Second)
	t.Logf("after the heal, a fresh publish was delivered within %v", took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("live delivery resumed %v after the link healed, want within the backoff (asserting 10 s)", took.Round(time.Millisecond))
	}
	if s.connected.Load() < 2 {
		t.Errorf("connected ran %d times, want again after the stall (the gap's recovery)", s.connected.Load())
	}
}

// TestFeedCallersNotBlockedByRedial: while the feed is making a new
// connection over a link that takes it but answers nothing, a stream's
// Subscribe and Sync must not wait for that: Subscribe records the
// channel (the new connection subscribes it), Sync fails at once
// (ErrFeedLost: the stream is refused with a Retry-After, as when Redis is
// down). The bound asserted is the redial's own deadline (min(ping
// interval, 2 s)) plus 500 ms. Once the link heals, the channel is
// subscribed.
func TestFeedCallersNotBlockedByRedial(t *testing.T) {
	s := startStalledFeed(t)
	s.proxy.Stall()
	s.awaitLost(t, 4*stallPing+2*time.Second)
	// A connection accepted now is a redial's, whose set-up the stalled
	// link holds.
	<-s.proxy.Accepted
	bound := stallPing + 500*time.Millisecond
	began := time.Now()
	err := s.feed.Subscribe("room:b")
	took := time.Since(began)
	t.Logf("Subscribe during a redial: %v (err %v)", took.Round(time.Millisecond), err)
	if took > bound {
		t.Errorf("Subscribe waited %v during a redial, want at most %v", took.Round(time.Millisecond), bound)
	}
	<-s.proxy.Accepted
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began = time.Now()
	err = s.feed.Sync(ctx)
	took = time.Since(began)
	t.Logf("Sync during a redial: %v (err %v)", took.Round(time.Millisecond), err)
	if took > bound {
		t.Errorf("Sync waited %v during a redial, want at most %v", took.Round(time.Millisecond), bound)
	}
	s.proxy.Heal()
	s.deliveredWithin(t, "room:b", 10*time.Second)
}

// syncBuffer is a log the test reads while the feed writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// count is the number of lines holding every one of parts.
func (b *syncBuffer) count(parts ...string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for line := range strings.Lines(b.buf.String()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// gauge is ssebridge_pubsub_lag_seconds as scraped.
func (s *stalledFeed) gauge() time.Duration {
	return time.Duration(testutil.ToFloat64(s.metrics.Lag) * float64(time.Second))
}

// await polls cond (a state: nothing to await) every 10 ms for up to d.
func await(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFeedLagDuringStall: with PUBSUB_LAG_LIMIT at 1 s and a ping
// interval of 5 s (a probe a second; dead only after 10 s), a stalled
// link makes the lag gauge rise past the limit, which drops the
// connection (not the ping timeout: long before 10 s), with one warning
// naming the lag; the lag keeps counting while the link stays stalled
// (the feed is that far behind), and falls once a new connection is up
// and connected has run again (the gap's recovery), with one line saying
// so.
func TestFeedLagDuringStall(t *testing.T) {
	const limit = time.Second
	s := startLaggingFeed(t, 5*time.Second, limit)
	await(t, 5*time.Second, "a first lag measured", func() bool { return s.feed.Lag() > 0 })
	if lag := s.gauge(); lag > 500*time.Millisecond {
		t.Fatalf("lag %v on an idle loopback link", lag)
	}
	s.proxy.Stall()
	stalled := time.Now()
	await(t, 5*time.Second, "the lag gauge past the limit", func() bool { return s.gauge() > limit })
	await(t, 5*time.Second, "the late connection dropped", func() bool { return !s.feed.Connected() })
	if took := time.Since(stalled); took > 5*time.Second {
		t.Errorf("dropped %v into the stall, want about the limit (1 s) plus a probe interval", took)
	}
	// Still stalled: the lag keeps growing, and says so.
	before := s.feed.Lag()
	<-s.proxy.Accepted // a redial under way
	if after := s.feed.Lag(); after <= before || after <= limit {
		t.Errorf("lag %v then %v during the stall, want growing past the limit", before, after)
	}
	if n := s.log.count("level=WARN", "lags behind", "limit=1s"); n != 1 {
		t.Errorf("%d warnings of the lag, want 1 for the episode:\n%s", n, s.log.buf.String())
	}
	s.proxy.Heal()
	await(t, 5*time.Second, "connected run again after the heal", func() bool { return s.connected.Load() == 2 })
	await(t, 5*time.Second, "the lag back under the limit", func() bool { return s.gauge() < limit/2 })
	if n := s.log.count("level=INFO", "caught up"); n != 1 {
		t.Errorf("%d lines saying the lag is back under the limit, want 1:\n%s", n, s.log.buf.String())
	}
	if got := testutil.ToFloat64(s.metrics.Reconnects); got != 1 {
		t.Errorf("reconnects %v, want 1", got)
	}
	s.deliveredWithin(t, "room:a", 3*time.Second)
}

// TestFeedLagOnSlowLink: a link that carries less than is published (16
// KB/s, 100 KB/s published): the backlog grows, and with it the probes'
// round trip, while the connection is up and answering. Past the limit
// (1 s) the feed drops the late connection rather than drain the backlog
// through the streams, and connected runs again: the hub recovers the
// gap from history.
func TestFeedLagOnSlowLink(t *testing.T) {
	const limit = time.Second
	s := startLaggingFeed(t, 5*time.Second, limit)
	await(t, 5*time.Second, "a first lag measured", func() bool { return s.feed.Lag() > 0 })
	s.proxy.Limit(16 << 10)
	ctx, cancel := context.WithCancel(context.Background())
	var pub sync.WaitGroup
	pub.Go(func() {
		body := strings.Repeat("x", 1000)
		tick := time.NewTicker(10 * time.Millisecond) // the publisher's pace
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				_ = s.admin.Publish(ctx, "sse:room:a", body).Err()
			}
		}
	})
	defer pub.Wait()
	defer cancel()
	var seen time.Duration
	await(t, 10*time.Second, "the lag rising on a connection still up", func() bool {
		if s.feed.Connected() {
			seen = max(seen, s.gauge())
		}
		return seen > limit/2
	})
	await(t, 10*time.Second, "the late connection dropped and connected run again", func() bool { return s.connected.Load() >= 2 })
	cancel()
	pub.Wait()
	if n := s.log.count("level=WARN", "lags behind"); n < 1 {
		t.Errorf("no warning of the lag:\n%s", s.log.buf.String())
	}
	s.proxy.Heal()
	await(t, 10*time.Second, "the lag back under the limit", func() bool { return s.feed.Connected() && s.gauge() < limit/2 })
}
