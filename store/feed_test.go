package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// delivery is what a feed handed on, with how many times connected had
// run by then.
type delivery struct {
	body      string
	connected int32
}

// replacedFeed runs a feed subscribed to room:a, kills its connection
// while the feed is inside deliver (busy elsewhere: nobody reads the
// connection), then subscribes new channels until go-redis has made a new
// connection from within one of those calls, and lets the feed read
// again. It returns the deliveries from then on and the channel whose
// SUBSCRIBE met the dead connection.
func replacedFeed(t *testing.T) (ctx context.Context, admin *redis.Client, feed *store.Feed, delivered <-chan delivery, met string) {
	ctx, cancel := context.WithCancel(context.Background())
	srv := redistest.Start(t)
	rdb, admin := srv.Client(), srv.Client()
	feed = store.NewFeed(rdb, "sse:", time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)), store.NewFeedMetrics(prometheus.NewRegistry()))
	if err := feed.Subscribe("room:a"); err != nil {
		t.Fatal(err)
	}
	var connected atomic.Int32
	out := make(chan delivery, 16)
	gate := make(chan struct{})
	var open sync.Once
	deliver := func(_ string, m wire.Message, _ error) {
		out <- delivery{string(m.Body), connected.Load()}
		if string(m.Body) == "busy" {
			<-gate
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		feed.Run(ctx, deliver, func(context.Context) { connected.Add(1) })
	}()
	t.Cleanup(func() { open.Do(func() { close(gate) }); cancel(); <-done })
	// Up first: a barrier before the connection was ever up fails at once.
	await(t, 5*time.Second, "the feed connected", feed.Connected)
	if err := feed.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := admin.Publish(ctx, "sse:room:a", "busy").Err(); err != nil {
		t.Fatal(err)
	}
	if d := <-out; d.body != "busy" || d.connected != 1 {
		t.Fatalf("first delivery %+v, want busy after one connected", d)
	}
	if err := admin.Do(ctx, "client", "kill", "type", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	// The first writes still go out (the socket has only had a FIN); one
	// fails, and go-redis dials and resubscribes inside that call. A new
	// channel each time, so that the one that met the dead socket is new.
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("no new pub/sub connection after 100 SUBSCRIBEs")
		}
		met = fmt.Sprintf("user:bob%d", i)
		_ = feed.Subscribe(met)
		if clients, err := admin.Do(ctx, "client", "list", "type", "pubsub").Text(); err != nil {
			t.Fatal(err)
		} else if clients != "" {
			break
		}
	}
	open.Do(func() { close(gate) })
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	for {
		if err := feed.Sync(sctx); err == nil {
			break
		} else if !errors.Is(err, store.ErrFeedLost) {
			t.Fatal(err)
		}
	}
	return ctx, admin, feed, out, met
}

// TestFeedConnectedAfterReplacedBehindItsBack: go-redis replaces a dead
// pub/sub connection from whichever call meets the failure, not only from
// the feed's read. If the connection dies while the feed is busy
// delivering (as when Redis drops a slow subscriber at its output buffer
// limit) and a stream's Subscribe or Sync meets the dead socket first,
// go-redis dials and resubscribes there; the feed's next read is on the
// new connection and never sees an error. connected must still run
// before anything the new connection delivers: what was published in the
// gap is recovered only there.
func TestFeedConnectedAfterReplacedBehindItsBack(t *testing.T) {
	ctx, admin, _, delivered, _ := replacedFeed(t)
	if err := admin.Publish(ctx, "sse:room:a", "after").Err(); err != nil {
		t.Fatal(err)
	}
	if d := <-delivered; d.body != "after" || d.connected != 2 {
		t.Fatalf("after the connection was replaced: delivered %q after %d calls of connected, want after, 2: the gap is never recovered", d.body, d.connected)
	}
}

// TestFeedSubscribeThatReconnects: a Subscribe that meets a dead
// connection makes go-redis dial and resubscribe inside the call, from its
// set as it was before the call: the new channel is not in it. The feed
// must still be subscribed to the channel once a later Sync returns (a
// second stream of the user attached meanwhile relies on it, and so does
// a join, which does not end the stream when its Subscribe fails).
func TestFeedSubscribeThatReconnects(t *testing.T) {
	ctx, admin, _, delivered, bob := replacedFeed(t)
	// One connection delivers in publish order: bob's message comes
	// before the room's, or not at all.
	for _, p := range [][2]string{{"sse:" + bob, "to-bob"}, {"sse:room:a", "to-room"}} {
		if err := admin.Publish(ctx, p[0], p[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if d := <-delivered; d.body != "to-bob" {
		t.Fatalf("after Sync returned: delivered %q first, want to-bob: %s is not subscribed on the new connection", d.body, bob)
	}
}
