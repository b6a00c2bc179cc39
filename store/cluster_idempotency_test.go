package store_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// TestClusterPublishOnce: on a real three-master cluster, a key repeated
// answers the first position and publishes nothing, another envelope
// under it is refused, and the key is remembered per partition: reused
// on a channel of another partition it is not recognised (documented).
// A backend's raw EVAL with the key does the same. While the slot
// migrates, a new key is refused on the source (its record would be a
// key the source does not have) with TRYAGAIN, which clients retry on,
// having written nothing (ssebridge's own tries, a few in a second, fail
// while the test holds the migration), and goes through
// once the keys are on the target; a repeat is recognised in every phase.
func TestClusterPublishOnce(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	const parts = 16
	c := newCluster(t, cc, parts, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		runCluster(ctx, c, func(string, wire.Message, error) {}, func(context.Context, int) {}, func() {})
	})
	defer wg.Wait()
	defer cancel()

	k := wire.Partition("room:a", parts)
	tag := "sse:{p" + strconv.Itoa(k) + "}:"
	var other string // a channel of another partition
	for i := 0; other == ""; i++ {
		if ch := fmt.Sprintf("room:o%d", i); wire.Partition(ch, parts) != k {
			other = ch
		}
	}
	xlen := func(ch string) int64 {
		return cc.XLen(ctx, "sse:{p"+strconv.Itoa(wire.Partition(ch, parts))+"}:"+ch+":history").Val()
	}
	env := []byte(`{"data":1}`)

	first, replayed, err := c.PublishOnce(ctx, "room:a", env, "k1")
	if err != nil || replayed {
		t.Fatal(err, replayed)
	}
	again, replayed, err := c.PublishOnce(ctx, "room:a", env, "k1")
	if err != nil || !replayed || again != first {
		t.Fatalf("the repeat: %v replayed %v err %v; want %v replayed", again, replayed, err, first)
	}
	if _, _, err := c.PublishOnce(ctx, "room:a", []byte(`{"data":2}`), "k1"); !errors.Is(err, store.ErrIdempotencyKeyReused) {
		t.Fatalf("another envelope: %v, want ErrIdempotencyKeyReused", err)
	}
	if n := xlen("room:a"); n != 1 {
		t.Fatalf("room:a: %d events, want 1", n)
	}
	// Per partition: another partition has no record of k1.
	if _, replayed, err := c.PublishOnce(ctx, other, env, "k1"); err != nil || replayed {
		t.Fatalf("k1 on %s (another partition): replayed %v err %v; want a publish", other, replayed, err)
	}
	if n := xlen(other); n != 1 {
		t.Fatalf("%s: %d events, want 1", other, n)
	}
	if v := cc.HGet(ctx, tag+"config", "idemttl").Val(); v != "300" {
		t.Fatalf("config idemttl %q, want 300 (the default window)", v)
	}
	// A mark takes no key, and still goes through the script.
	if err := c.PublishBareID(ctx, "room:a"); err != nil {
		t.Fatal(err)
	}

	// A backend's EVAL, with the key after the partition count.
	eval := func(key string) (string, error) {
		return cc.Eval(ctx, store.ClusterPublishScript, []string{tag + "room:a:history"}, tag+"room:a", `{"data":"raw"}`, parts, key).Text()
	}
	a, err := eval("order-17")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := eval("order-17"); err != nil || b != a {
		t.Fatalf("the backend's repeat: %q %v, want %q", b, err, a)
	}
	if n := xlen("room:a"); n != 2 {
		t.Fatalf("room:a: %d events, want 2", n)
	}

	// A slot migration.
	slot, err := cc.ClusterKeySlot(ctx, tag+"cursor").Result()
	if err != nil {
		t.Fatal(err)
	}
	from := rc.NodeOfSlot(int(slot))
	to := rc.Nodes[0]
	if to == from {
		to = rc.Nodes[1]
	}
	m := rc.StartMove(int(slot), to)
	if _, replayed, err := c.PublishOnce(ctx, "room:a", env, "k1"); err != nil || !replayed {
		t.Fatalf("migrating, keys on the source: the repeat: replayed %v err %v", replayed, err)
	}
	if _, _, err := c.PublishOnce(ctx, "room:a", env, "k2"); !strings.Contains(fmt.Sprint(err), "TRYAGAIN") {
		t.Fatalf("migrating, keys on the source: a new key: %v, want TRYAGAIN (what clients retry on; nothing written)", err)
	}
	m.Migrate()
	if _, replayed, err := c.PublishOnce(ctx, "room:a", env, "k1"); err != nil || !replayed {
		t.Fatalf("migrating, keys on the target: the repeat: replayed %v err %v", replayed, err)
	}
	k2, replayed, err := c.PublishOnce(ctx, "room:a", env, "k2")
	if err != nil || replayed {
		t.Fatalf("migrating, keys on the target: a new key: replayed %v err %v", replayed, err)
	}
	m.Finish()
	if again, replayed, err := c.PublishOnce(ctx, "room:a", env, "k2"); err != nil || !replayed || again != k2 {
		t.Fatalf("moved: the repeat of k2: %v replayed %v err %v, want %v", again, replayed, err, k2)
	}
	if n := xlen("room:a"); n != 3 {
		t.Fatalf("room:a: %d events, want 3", n)
	}
}
