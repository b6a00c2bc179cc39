package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// TestFeedConnectedAfterReplacedBehindItsBack: go-redis replaces a dead
// pub/sub connection from whichever call meets the failure, not only from
// the feed's read. If the connection dies while the feed is busy
// delivering (exactly when Redis drops a slow subscriber: its output
// buffer limit) and a stream's Subscribe or Sync meets the dead socket
// first, go-redis dials and resubscribes there; the feed's next read is on
// the new connection and never sees an error. connected must still run
// before anything the new connection delivers: what was published in the
// gap is recovered only there.
func TestFeedConnectedAfterReplacedBehindItsBack(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := redistest.Start(t)
	rdb, admin := srv.Client(), srv.Client()
	feed := store.NewFeed(rdb, "sse:", time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)), store.NewFeedMetrics(prometheus.NewRegistry()))
	if err := feed.Subscribe("room:a"); err != nil {
		t.Fatal(err)
	}

	type got struct {
		body      string
		connected int32
	}
	var connected atomic.Int32
	delivered := make(chan got, 16)
	gate := make(chan struct{})
	deliver := func(_ string, m wire.Message, _ error) {
		delivered <- got{string(m.Body), connected.Load()}
		if string(m.Body) == "busy" {
			<-gate // the feed is busy elsewhere: nobody reads the connection
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		feed.Run(ctx, deliver, func(context.Context) { connected.Add(1) })
	}()
	defer func() { cancel(); <-done }()
	if err := feed.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	if err := admin.Publish(ctx, "sse:room:a", "busy").Err(); err != nil {
		t.Fatal(err)
	}
	if g := <-delivered; g.body != "busy" || g.connected != 1 {
		t.Fatalf("first delivery %+v, want busy after one connected", g)
	}
	// Redis drops the subscriber while the feed is inside deliver.
	if err := admin.Do(ctx, "client", "kill", "type", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	// A stream subscribes meanwhile: the first write may still go out (the
	// socket has only a FIN), a later one fails and go-redis reconnects.
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		err = feed.Subscribe("user:bob")
	}
	if err == nil {
		t.Fatal("every SUBSCRIBE on the killed connection went through")
	}
	// Whatever was published between the kill and the new SUBSCRIBE is
	// recovered only if connected runs again.
	close(gate)
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	for {
		if err := feed.Sync(sctx); err == nil {
			break
		} else if !errors.Is(err, store.ErrFeedLost) {
			t.Fatal(err)
		}
	}
	if err := admin.Publish(ctx, "sse:room:a", "after").Err(); err != nil {
		t.Fatal(err)
	}
	if g := <-delivered; g.body != "after" || g.connected != 2 {
		t.Fatalf("after the connection was replaced: delivered %q after %d calls of connected, want after, 2: the gap is never recovered", g.body, g.connected)
	}
}

// TestFeedSubscribeThatReconnects: a Subscribe that meets a dead
// connection makes go-redis dial and resubscribe inside the call, from its
// set as it was before the call: the new channel is not in it. The feed
// must still be subscribed to the channel once a later Sync returns (a
// second stream of the user attached meanwhile relies on it).
func TestFeedSubscribeThatReconnects(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := redistest.Start(t)
	rdb, admin := srv.Client(), srv.Client()
	feed := store.NewFeed(rdb, "sse:", time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)), store.NewFeedMetrics(prometheus.NewRegistry()))
	if err := feed.Subscribe("room:a"); err != nil {
		t.Fatal(err)
	}
	delivered := make(chan string, 16)
	gate := make(chan struct{})
	deliver := func(_ string, m wire.Message, _ error) {
		delivered <- string(m.Body)
		if string(m.Body) == "busy" {
			<-gate
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		feed.Run(ctx, deliver, func(context.Context) {})
	}()
	defer func() { cancel(); <-done }()
	if err := feed.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := admin.Publish(ctx, "sse:room:a", "busy").Err(); err != nil {
		t.Fatal(err)
	}
	<-delivered
	if err := admin.Do(ctx, "client", "kill", "type", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	// The first writes may still go out (the socket has only a FIN): a
	// new channel each time, so that the one whose SUBSCRIBE failed is new.
	var err error
	bob := ""
	for i := 0; i < 100 && err == nil; i++ {
		bob = fmt.Sprintf("user:bob%d", i)
		err = feed.Subscribe(bob)
	}
	if err == nil {
		t.Fatal("every SUBSCRIBE on the killed connection went through")
	}
	close(gate)
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	for {
		if err := feed.Sync(sctx); err == nil {
			break
		} else if !errors.Is(err, store.ErrFeedLost) {
			t.Fatal(err)
		}
	}
	// One connection delivers in publish order: bob's message comes
	// before the room's, or not at all.
	for _, p := range [][2]string{{"sse:" + bob, "to-bob"}, {"sse:room:a", "to-room"}} {
		if err := admin.Publish(ctx, p[0], p[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if got := <-delivered; got != "to-bob" {
		t.Fatalf("after Sync returned: delivered %q first, want to-bob: %s is not subscribed on the new connection", got, bob)
	}
}
