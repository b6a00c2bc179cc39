package store_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/wire"
)

// TestClusterPublishDuringSlotMigration: a durable publish goes through
// while its partition's slot migrates, keys and all, to another master:
// while the source still has the keys (marked MIGRATING), and once they
// are on the target (the slot not yet handed over), on a channel that has
// a history but was never trimmed, on a trimmed one, and on a brand new
// one (once the keys have moved: Redis creates no key on the source of a
// migrating slot), also with DURABLE_WAIT_REPLICAS. While a channel's history is on the target and its
// partition's keys are not, a publish is refused and writes nothing, and
// the migration ends. Afterwards every event reads back in order, and the
// trim marks of both kinds (in the history, and an old :trimmed key) reset
// a read from before them.
func TestClusterPublishDuringSlotMigration(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	const parts = 16
	c := newCluster(t, cc, parts, 5)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		runCluster(ctx, c, func(string, wire.Message, error) {}, func(context.Context, int) {}, func() {})
	})
	defer wg.Wait()
	defer cancel()

	// Channels of one partition, so of one slot.
	k := wire.Partition("room:old", parts)
	var same []string
	for i := 0; len(same) < 5; i++ {
		if ch := fmt.Sprintf("room:m%d", i); wire.Partition(ch, parts) == k {
			same = append(same, ch)
		}
	}
	old, full, fresh, fresh2, compat := "room:old", same[0], same[1], same[2], same[3]
	tag := "sse:{p" + strconv.Itoa(k) + "}:"
	slot, err := cc.ClusterKeySlot(ctx, tag+"cursor").Result()
	if err != nil {
		t.Fatal(err)
	}
	start, err := c.Position(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sent := map[string][]string{}
	publish := func(ch string) error {
		env := fmt.Sprintf(`{"data":"%s/%d"}`, ch, len(sent[ch]))
		if _, err := c.Publish(ctx, ch, []byte(env)); err != nil {
			return err
		}
		sent[ch] = append(sent[ch], env)
		return nil
	}
	mustPublish := func(phase, ch string) {
		t.Helper()
		if err := publish(ch); err != nil {
			t.Errorf("%s: publish on %s: %v", phase, ch, err)
		}
	}
	mustPublish("before", old)
	for range 7 { // HISTORY_MAXLEN 5: two trimmed
		mustPublish("before", full)
	}

	from := rc.NodeOfSlot(int(slot))
	to := rc.Nodes[0]
	if to == from {
		to = rc.Nodes[1]
	}
	m := rc.StartMove(int(slot), to)
	for _, ch := range []string{old, full} {
		mustPublish("migrating, keys on the source", ch)
	}
	// A channel's history moved apart from its partition's cursor and
	// config, as a migration in batches may leave them for a while: no
	// node can run the call; it must write nothing, or the keys' moves
	// would fail (BUSYKEY) or start a new epoch.
	m.Migrate(tag + old + ":history")
	for _, ch := range []string{old, fresh2} {
		if err := publish(ch); err == nil {
			t.Errorf("split: a publish on %s went through with its history and its partition's cursor on two nodes", ch)
		} else {
			t.Logf("split: publish on %s refused: %v", ch, err)
		}
	}
	m.Migrate()
	for _, ch := range []string{old, full, fresh, fresh2} {
		mustPublish("migrating, keys on the target", ch)
	}
	// DURABLE_WAIT_REPLICAS runs the script and WAIT on the slot's master,
	// here the source, which answers ASK: it must follow it. (No replica
	// here: the event is published, and an error says it has no replica.)
	c.WaitReplicas(1, 50*time.Millisecond)
	env := fmt.Sprintf(`{"data":"%s/%d"}`, old, len(sent[old]))
	if id, err := c.Publish(ctx, old, []byte(env)); id.IsZero() {
		t.Errorf("migrating, keys on the target, with DURABLE_WAIT_REPLICAS: not published: %v", err)
	} else {
		sent[old] = append(sent[old], env)
	}
	c.WaitReplicas(0, 0)
	m.Finish()
	for _, ch := range []string{old, fresh} {
		mustPublish("moved", ch)
	}

	// An old script's trim mark: a :trimmed key naming the first event.
	mustPublish("compat", compat)
	mustPublish("compat", compat)
	first, err := cc.XRange(ctx, tag+compat+":history", "-", "+").Result()
	if err != nil || len(first) == 0 {
		t.Fatal(first, err)
	}
	if err := cc.Set(ctx, tag+compat+":trimmed", first[0].ID, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}

	read := func(ch string) (envs []string, reset string) {
		t.Helper()
		// Right after the handover a read's position fails while the
		// partition's connection is made again on the slot's new master
		// (Redis unsubscribed it), or while the client's slot map still
		// names the old one (MOVED): as a stream's opening, it is retried.
		var page wire.Page
		var err error
		for deadline := time.Now().Add(20 * time.Second); ; {
			page, err = c.Read(ctx, []string{ch}, []wire.Cursor{start}, wire.Cursor{}, 1<<20)
			if err == nil || time.Now().After(deadline) {
				break
			}
			t.Logf("reading %s: %v; again", ch, err)
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("reading %s: %v", ch, err)
		}
		for _, e := range page.Events {
			envs = append(envs, string(e.Envelope))
		}
		return envs, page.Reset
	}
	for _, ch := range []string{old, fresh, fresh2} {
		got, reset := read(ch)
		if reset != "" || fmt.Sprint(got) != fmt.Sprint(sent[ch]) {
			t.Errorf("%s: read %v (reset %q), want %v", ch, got, reset, sent[ch])
		}
	}
	for _, ch := range []string{full, compat} {
		if got, reset := read(ch); reset != wire.ResetTrimmed {
			t.Errorf("%s: read %v (reset %q) from before its trimmed events, want reset %q", ch, got, reset, wire.ResetTrimmed)
		}
	}
}

// TestClusterPositionDuringSlotMigration: an event published while its
// slot migrates, once the keys are on the target, goes out on the target,
// where the instance is not subscribed until the slot is handed over. A
// stream's opening meanwhile (Position) must not take the partition to be
// past it, or the gap recovery after the handover skips it and no stream
// ever gets it: it must arrive, once.
func TestClusterPositionDuringSlotMigration(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	const parts = 16
	c := newCluster(t, cc, parts, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	got := map[string]int{}
	arrived := make(chan struct{}, 100)
	var wg sync.WaitGroup
	wg.Go(func() {
		runCluster(ctx, c, func(ch string, m wire.Message, err error) {
			if err != nil || !m.Durable() || len(m.Body) == 0 {
				return
			}
			mu.Lock()
			got[string(m.Body)]++
			mu.Unlock()
			arrived <- struct{}{}
		}, func(context.Context, int) {}, func() {})
	})
	defer wg.Wait()
	defer cancel()
	const ch = "room:old"
	if err := c.Subscribe(ch); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	await := func(n int) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			mu.Lock()
			have := len(got)
			mu.Unlock()
			if have >= n {
				return
			}
			select {
			case <-arrived:
			case <-deadline:
				t.Fatalf("%d events arrived, want %d: %v", have, n, got)
			}
		}
	}
	if _, err := c.Publish(ctx, ch, []byte(`{"data":"before"}`)); err != nil {
		t.Fatal(err)
	}
	await(1)

	slot, err := cc.ClusterKeySlot(ctx, "sse:{p"+strconv.Itoa(wire.Partition(ch, parts))+"}:cursor").Result()
	if err != nil {
		t.Fatal(err)
	}
	to := rc.Nodes[0]
	if to == rc.NodeOfSlot(int(slot)) {
		to = rc.Nodes[1]
	}
	m := rc.StartMove(int(slot), to)
	m.Migrate()
	if _, err := c.Publish(ctx, ch, []byte(`{"data":"on the target"}`)); err != nil {
		t.Fatal(err)
	}
	pos, err := c.Position(ctx) // a stream opening
	t.Logf("position while the keys are on the target: %v %v", pos, err)
	m.Finish()
	await(2)
	mu.Lock()
	defer mu.Unlock()
	for body, n := range got {
		if n != 1 {
			t.Errorf("%s arrived %d times", body, n)
		}
	}
}
