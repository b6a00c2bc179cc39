package store_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
	delivered chan string
	connected atomic.Int32
	up        chan struct{} // a value (if room) each time connected runs
}

func startStalledFeed(t *testing.T) *stalledFeed {
	t.Helper()
	srv := redistest.Start(t)
	s := &stalledFeed{
		proxy:     startProxy(t, srv.Addr),
		admin:     srv.Client(),
		metrics:   store.NewFeedMetrics(prometheus.NewRegistry()),
		delivered: make(chan string, 1024),
		up:        make(chan struct{}, 1),
	}
	rdb := redis.NewClient(&redis.Options{Addr: s.proxy.Addr, DialTimeout: 2 * time.Second})
	t.Cleanup(func() { rdb.Close() })
	var w io.Writer = io.Discard
	if testing.Verbose() {
		w = os.Stderr
	}
	s.feed = store.NewFeed(rdb, "sse:", stallPing, slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})), s.metrics)
	if err := s.feed.Subscribe("room:a"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.feed.Run(ctx, func(_ string, m wire.Message, _ error) { s.delivered <- string(m.Body) }, func(context.Context) {
			s.connected.Add(1)
			select {
			case s.up <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
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
// deliver a fresh publish within its backoff (100 ms to 2 s): the bound
// asserted is 3 s after the heal. (Before the redial had deadlines of its
// own, go-redis dialled inside the feed's read, with its own timeouts
// (3 s per read), and the feed took tens of seconds.)
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
	if took > 3*time.Second {
		t.Errorf("live delivery resumed %v after the link healed, want within the backoff (asserting 3 s)", took.Round(time.Millisecond))
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
