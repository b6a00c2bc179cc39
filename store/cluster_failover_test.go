package store_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// TestClusterFailoverDoesNotReissuePositions: a burst of durable events on
// one partition (10,000, pipelined: far more than one per millisecond)
// that the master's replica never gets (its link is cut), then the
// replica is promoted (CLUSTER FAILOVER TAKEOVER). The events published
// after the failover must reach the instance: positions the old master
// gave out must not be given again (with max(n+1, now_ms) they were, the
// burst having taken them seconds ahead of the clock, and the instance
// dropped the new events as ones it had delivered). The instance, whose
// streams got events the cluster no longer has, tells its streams to
// reconnect, and a resume from the last id it delivered before the
// failover, an id naming lost events, gets a reset, as with one Redis.
func TestClusterFailoverDoesNotReissuePositions(t *testing.T) {
	rc := redistest.StartClusterReplicas(t, 3, 1)
	cc := rc.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const parts = 16
	c := newCluster(t, cc, parts, 100000)
	const ch = "room:burst"
	var mu sync.Mutex
	got := map[string]int{}
	var last wire.Cursor // the id of the last event delivered
	var retried atomic.Int32
	var wg sync.WaitGroup
	wg.Go(func() {
		runCluster(ctx, c, func(channel string, m wire.Message, err error) {
			if err != nil || channel != ch || !m.Durable() || len(m.Body) == 0 {
				return
			}
			mu.Lock()
			got[string(m.Body)]++
			last = m.Cursor
			mu.Unlock()
		}, func(context.Context, int) {}, func() { retried.Add(1) })
	})
	defer wg.Wait()
	defer cancel()
	if err := c.Subscribe(ch); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	count := func(prefix string) (n int) {
		mu.Lock()
		defer mu.Unlock()
		for body := range got {
			if strings.HasPrefix(body, `{"data":"`+prefix) {
				n++
			}
		}
		return n
	}
	await := func(prefix string, want int) bool {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); count(prefix) < want; {
			if time.Now().After(deadline) {
				t.Errorf("%d events %s… arrived, want %d", count(prefix), prefix, want)
				return false
			}
			time.Sleep(20 * time.Millisecond)
		}
		return true
	}

	k := wire.Partition(ch, parts)
	tag := "sse:{p" + strconv.Itoa(k) + "}:"
	slot, err := cc.ClusterKeySlot(ctx, tag+"cursor").Result()
	if err != nil {
		t.Fatal(err)
	}
	master := rc.NodeOfSlot(int(slot))
	replicas := rc.ReplicasOfSlot(int(slot))
	if len(replicas) == 0 {
		t.Fatal("the slot's master has no replica")
	}
	replica := replicas[0]
	for i := range 10 {
		if _, err := c.Publish(ctx, ch, []byte(fmt.Sprintf(`{"data":"before/%d"}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	if !await("before/", 10) {
		return
	}
	// The replica has them all: its offset is the master's.
	m, r := master.Client(), replica.Client()
	offset := func(cl *redis.Client, field string) string {
		info, _ := cl.Info(ctx, "replication").Result()
		for line := range strings.SplitSeq(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, field+":"); ok {
				return v
			}
		}
		return ""
	}
	for deadline := time.Now().Add(10 * time.Second); offset(r, "slave_repl_offset") != offset(m, "master_repl_offset"); {
		if time.Now().After(deadline) {
			t.Fatal("the replica did not catch up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Cut the replica off: it cannot authenticate again, and the master
	// acknowledges the burst alone, as a master whose replica lags.
	for _, kv := range [][2]string{{"masteruser", "nobody-here"}, {"masterauth", "wrong"}} {
		if err := r.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Do(ctx, "CLIENT", "KILL", "TYPE", "replica").Err(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); offset(r, "master_link_status") != "down"; {
		if time.Now().After(deadline) {
			t.Fatal("the replica's link did not go down")
		}
		time.Sleep(20 * time.Millisecond)
	}
	const burst = 10000
	script := redis.NewScript(store.ClusterPublishScript)
	if err := script.Load(ctx, m).Err(); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if _, err := m.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range burst {
			script.EvalSha(ctx, p, []string{tag + ch + ":history"}, tag+ch, fmt.Sprintf(`{"data":"lost/%d"}`, i), parts)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("burst of %d published in %v", burst, time.Since(began).Round(time.Millisecond))
	if !await("lost/", burst) {
		return
	}
	mu.Lock()
	lastBefore := last
	mu.Unlock()
	if offset(r, "master_link_status") != "down" {
		t.Fatal("the replica's link came back: the burst is not lost")
	}

	// The lagging replica takes over; the old master becomes its replica.
	if err := r.Do(ctx, "CLUSTER", "FAILOVER", "TAKEOVER").Err(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); rc.NodeOfSlot(int(slot)) != replica; {
		if time.Now().After(deadline) {
			t.Fatal("the replica did not take over")
		}
		time.Sleep(20 * time.Millisecond)
	}
	const after = 20
	for i := range after {
		for deadline := time.Now().Add(10 * time.Second); ; {
			_, err := c.Publish(ctx, ch, []byte(fmt.Sprintf(`{"data":"after/%d"}`, i)))
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("publishing after the failover: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Logf("failover and %d publishes %v after the burst", after, time.Since(began).Round(time.Millisecond))
	if !await("after/", after) {
		mu.Lock()
		for i := range after {
			if got[fmt.Sprintf(`{"data":"after/%d"}`, i)] == 0 {
				t.Logf("after/%d did not arrive", i)
			}
		}
		mu.Unlock()
	}
	mu.Lock()
	for body, n := range got {
		if n != 1 {
			t.Errorf("%s arrived %d times", body, n)
		}
	}
	mu.Unlock()

	// The instance delivered events the cluster has lost: its streams are
	// told to reconnect, and one resuming from the last id it got before
	// the failover is reset.
	for deadline := time.Now().Add(10 * time.Second); retried.Load() == 0; {
		if time.Now().After(deadline) {
			t.Error("the instance delivered events the failover lost, and did not tell its streams to reconnect")
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	var page wire.Page
	for deadline := time.Now().Add(10 * time.Second); ; {
		page, err = c.Read(ctx, []string{ch}, []wire.Cursor{lastBefore}, wire.Cursor{}, 1<<20)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if page.Reset == "" {
		t.Errorf("a resume from %s, the id of a lost event, read %d events and no reset", lastBefore, len(page.Events))
	} else {
		t.Logf("a resume from the id of a lost event: reset %q", page.Reset)
	}
}

// TestClusterPositionBackwardsResets: a partition's position goes back
// within its term while the instance's connection to it is down (its node
// lost writes without a new writer taking over: data restored from an
// older copy). As one Redis does when its position is behind the feed's,
// the instance takes the partition's position, tells its streams to
// reconnect, delivers the events published afterwards (whose positions it
// had delivered before), and a resume from the last id delivered before
// gets a reset. (The gap recovery skipped it silently: no reset, and with
// positions ahead of the clock the new events were dropped as delivered.)
func TestClusterPositionBackwardsResets(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const parts = 16
	c := newCluster(t, cc, parts, 1000)
	const ch = "room:back"
	var mu sync.Mutex
	var bodies []string
	var last wire.Cursor
	var retried atomic.Int32
	var wg sync.WaitGroup
	wg.Go(func() {
		runCluster(ctx, c, func(channel string, m wire.Message, err error) {
			if err != nil || channel != ch || !m.Durable() || len(m.Body) == 0 {
				return
			}
			mu.Lock()
			bodies = append(bodies, string(m.Body))
			last = m.Cursor
			mu.Unlock()
		}, func(context.Context, int) {}, func() { retried.Add(1) })
	})
	defer wg.Wait()
	defer cancel()
	if err := c.Subscribe(ch); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	await := func(n int) bool {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; {
			mu.Lock()
			have := len(bodies)
			mu.Unlock()
			if have >= n {
				return true
			}
			if time.Now().After(deadline) {
				t.Errorf("%d events arrived, want %d", have, n)
				return false
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	tag := "sse:{p" + strconv.Itoa(wire.Partition(ch, parts)) + "}:"
	var saved, cursor string
	for i := range 5 {
		if i == 2 {
			// A copy of the partition's keys after two events.
			var err error
			if saved, err = cc.Dump(ctx, tag+ch+":history").Result(); err != nil {
				t.Fatal(err)
			}
			if cursor, err = cc.Get(ctx, tag+"cursor").Result(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Publish(ctx, ch, []byte(fmt.Sprintf(`{"data":"first/%d"}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	if !await(5) {
		return
	}
	mu.Lock()
	lastBefore := last
	mu.Unlock()

	// The copy restored (the last three events lost), and the instance's
	// connection to the node cut.
	if err := cc.RestoreReplace(ctx, tag+ch+":history", 0, saved).Err(); err != nil {
		t.Fatal(err)
	}
	if err := cc.Set(ctx, tag+"cursor", cursor, 0).Err(); err != nil {
		t.Fatal(err)
	}
	slot, err := cc.ClusterKeySlot(ctx, tag+"cursor").Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.NodeOfSlot(int(slot)).Client().Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); retried.Load() == 0; {
		if time.Now().After(deadline) {
			t.Error("the partition's position went back, and the instance did not tell its streams to reconnect")
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range 3 {
		if _, err := c.Publish(ctx, ch, []byte(fmt.Sprintf(`{"data":"again/%d"}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	await(8)
	// The kill cut every partition's connection on that node, and Read's
	// position needs them all: the others may still be being made again
	// (ErrFeedLost at once), which a stream meets as a 503 to retry.
	var page wire.Page
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		page, err = c.Read(ctx, []string{ch}, []wire.Cursor{lastBefore}, wire.Cursor{}, 1<<20)
		if !errors.Is(err, store.ErrFeedLost) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if page.Reset != wire.ResetFuture {
		t.Errorf("a resume from %s, past the partition's position now, read %d events, reset %q; want reset %q", lastBefore, len(page.Events), page.Reset, wire.ResetFuture)
	}
}

// TestClusterEarlierIDsResume: a deployment upgraded from the earlier
// position scheme (cursors "<epoch>:<n>", n a millisecond clock; ids with
// no time part): a resume from an id of before the upgrade goes on
// exactly, with the events after it from before the upgrade and those
// published since, in order, and no reset.
func TestClusterEarlierIDsResume(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	ctx := context.Background()
	const parts = 16
	const ch = "room:upgraded"
	k := wire.Partition(ch, parts)
	n0 := uint64(time.Now().UnixMilli()) - 1000
	// The earlier scheme's keys: every partition's cursor, and three events
	// of ch at positions n0-2, n0-1 and n0 of its partition.
	for j := range parts {
		tag := "sse:{p" + strconv.Itoa(j) + "}:"
		if err := cc.Set(ctx, tag+"cursor", fmt.Sprintf("e%d:%d", j, n0), 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	tag := "sse:{p" + strconv.Itoa(k) + "}:"
	for i := range 3 {
		id := fmt.Sprintf("%d-%d", n0-2+uint64(i), n0)
		if err := cc.XAdd(ctx, &redis.XAddArgs{Stream: tag + ch + ":history", ID: id, Values: []any{"e", fmt.Sprintf(`{"data":"old/%d"}`, i)}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	c := newCluster(t, cc, parts, 1000)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		runCluster(rctx, c, func(string, wire.Message, error) {}, func(context.Context, int) {}, func() {})
	})
	defer wg.Wait()
	defer cancel()
	now, err := c.Position(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cursor after the upgrade: %s", cc.Get(ctx, tag+"cursor").Val())
	// An id of the earlier scheme: every partition at n0, ch's one event
	// short of it (old/2 not received); no time part.
	old := now.Vector().Tag + "." + strconv.FormatUint(n0, 36)
	for j := range parts {
		d := uint64(0)
		if j == k {
			d = 1
		}
		old += "." + strconv.FormatUint(d, 36)
	}
	from, err := c.ParseCursor(old)
	if err != nil {
		t.Fatalf("an id of the earlier scheme, %s: %v", old, err)
	}
	if _, err := c.Publish(ctx, ch, []byte(`{"data":"new/0"}`)); err != nil {
		t.Fatal(err)
	}
	page, err := c.Read(ctx, []string{ch}, []wire.Cursor{from}, wire.Cursor{}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range page.Events {
		got = append(got, string(e.Envelope))
	}
	if want := []string{`{"data":"old/2"}`, `{"data":"new/0"}`}; page.Reset != "" || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("a resume from %s read %v (reset %q), want %v", old, got, page.Reset, want)
	}
	// An id of the earlier scheme older than the 2^32 ms before the
	// upgrade names a term no writer handed on: reset, not skipped.
	stale := now.Vector().Tag + "." + strconv.FormatUint(n0, 36)
	for j := range parts {
		d := uint64(0)
		if j == k {
			d = n0 - (n0>>32<<32 - 5)
		}
		stale += "." + strconv.FormatUint(d, 36)
	}
	if from, err = c.ParseCursor(stale); err != nil {
		t.Fatal(err)
	}
	page, err = c.Read(ctx, []string{ch}, []wire.Cursor{from}, wire.Cursor{}, 1<<20)
	if err != nil || page.Reset != wire.ResetFuture {
		t.Errorf("a resume from %s, of a term before the last, read %d events, reset %q (%v); want reset %q", stale, len(page.Events), page.Reset, err, wire.ResetFuture)
	}
}
