package store_test

import (
	"context"
	"errors"
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
