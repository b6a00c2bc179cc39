package store_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

type got struct {
	channel string
	m       wire.Message
}

// TestClusterPublishReadResume: on a real three-master cluster, the
// cluster publish script SPUBLISHes inside the script to the shard channel
// of its slot (Redis 7.0 allows it), the feed delivers the event with a
// vector id, and a history read from an earlier id returns it.
func TestClusterPublishReadResume(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	c := newCluster(t, cc, 16, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var msgs []got
	arrived := make(chan struct{}, 100)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runCluster(ctx, c, func(ch string, m wire.Message, err error) {
			if err != nil {
				t.Errorf("%s: %v", ch, err)
			}
			mu.Lock()
			msgs = append(msgs, got{ch, m})
			mu.Unlock()
			arrived <- struct{}{}
		}, func(context.Context, int) {}, func() {})
	}()
	defer wg.Wait()
	defer cancel()

	channels := []string{"room:a", "room:b", "user:alice", "broadcast"}
	if err := c.Subscribe(channels...); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	start, err := c.Position(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, ch := range channels {
		if _, err := c.Publish(ctx, ch, []byte(`{"data":`+string(rune('0'+i))+`}`)); err != nil {
			t.Fatal(err)
		}
	}
	for range channels {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("an event did not arrive")
		}
	}
	mu.Lock()
	last := msgs[len(msgs)-1].m.Cursor
	for _, g := range msgs {
		v := g.m.Cursor.Vector()
		if v == nil || v.Own != wire.Partition(g.channel, 16) {
			t.Fatalf("%s: id %v", g.channel, g.m.Cursor)
		}
		back, err := c.ParseCursor(g.m.Cursor.String())
		if err != nil || back.String() != g.m.Cursor.String() {
			t.Fatalf("%q does not parse back: %v", g.m.Cursor, err)
		}
	}
	mu.Unlock()
	t.Logf("id after 4 events: %s (%d bytes)", last, len(last.String()))

	after := make([]wire.Cursor, len(channels))
	for i := range after {
		after[i] = start
	}
	page, err := c.Read(ctx, channels, after, wire.Cursor{}, 1<<20)
	if err != nil || page.Reset != "" {
		t.Fatal(err, page.Reset)
	}
	if len(page.Events) != len(channels) {
		t.Fatalf("read %d events, want %d", len(page.Events), len(channels))
	}
	for i := range after {
		after[i] = last
	}
	page, err = c.Read(ctx, channels, after, wire.Cursor{}, 1<<20)
	if err != nil || page.Reset != "" || len(page.Events) != 0 {
		t.Fatalf("from the last id: %v %q %d events", err, page.Reset, len(page.Events))
	}

	// A backend's raw EVAL of the script, as documented.
	k := wire.Partition("room:a", 16)
	tag := "sse:{p" + itoa(k) + "}:"
	res, err := cc.Eval(ctx, store.ClusterPublishScript, []string{tag + "room:a:history"},
		tag+"room:a", `{"data":"raw"}`, 16).Text()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wire.ParseCursor(res); err != nil {
		t.Fatal(res, err)
	}
	_, err = cc.Eval(ctx, store.ClusterPublishScript, []string{tag + "room:a:history"},
		tag+"room:a", `{"data":"raw"}`, 8).Result()
	if err == nil {
		t.Fatal("a publish assuming 8 partitions was accepted")
	}

	// A grant (docs/CLUSTER.md): the room's partition's position when the
	// room was granted. A read from before it, moved on by AfterGrant,
	// returns only what followed; a grant of another epoch bounds nothing.
	grant, err := cc.Get(ctx, tag+"cursor").Result()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "room:a", []byte(`{"data":"granted"}`)); err != nil {
		t.Fatal(err)
	}
	from := c.AfterGrant(start, "room:a", grant)
	page, err = c.Read(ctx, []string{"room:a"}, []wire.Cursor{from}, wire.Cursor{}, 1<<20)
	if err != nil || page.Reset != "" || len(page.Events) != 1 || string(page.Events[0].Envelope) != `{"data":"granted"}` {
		t.Fatalf("read after the grant %s: %v %q %d events", grant, err, page.Reset, len(page.Events))
	}
	if got := c.AfterGrant(start, "room:a", "zz:1"); got.String() != start.String() {
		t.Fatalf("a grant of another epoch moved %s to %s", start, got)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// newCluster is a store.Cluster of parts partitions on cc, keeping maxlen
// events a channel, with its config written into every partition. Its log
// is discarded, or written to stderr with CLUSTER_DEBUG set.
func newCluster(t *testing.T, cc *redis.ClusterClient, parts, maxlen int) *store.Cluster {
	t.Helper()
	var w io.Writer = io.Discard
	if os.Getenv("CLUSTER_DEBUG") != "" {
		w = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(w, nil))
	c := store.NewCluster(cc, store.ClusterOptions{
		Prefix: "sse:", Partitions: parts, MaxLen: maxlen, MaxEventBytes: 1 << 16, TTL: time.Hour,
		PingEvery: time.Second, Log: log, Metrics: store.NewFeedMetrics(prometheus.NewRegistry()),
	})
	if err := c.Configure(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}
