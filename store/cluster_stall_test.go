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

// TestClusterFrozenMasterJoinDoesNotStall: a master that accepts TCP but
// answers nothing (SIGSTOP) must not stop the events of the other masters.
// A control message is delivered, as the hub does, by joining a room whose
// partition is on the frozen master (Subscribe inside deliver); durable
// events on a room of a healthy master are published every 20 ms
// meanwhile and must keep arriving: no gap of more than a second. (It
// failed with Cluster.mu held across deliver while the join dialled the
// frozen master and waited for its HELLO: seconds without any event.)
func TestClusterFrozenMasterJoinDoesNotStall(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// With a master down, the others go on serving their own slots.
	for _, n := range rc.Nodes {
		if err := n.Client().ConfigSet(ctx, "cluster-require-full-coverage", "no").Err(); err != nil {
			t.Fatal(err)
		}
	}
	const parts = 16
	c := newCluster(t, cc, parts, 1000)

	slotOf := func(ch string) int {
		t.Helper()
		s, err := cc.ClusterKeySlot(ctx, "sse:{p"+strconv.Itoa(wire.Partition(ch, parts))+"}:cursor").Result()
		if err != nil {
			t.Fatal(err)
		}
		return int(s)
	}
	control := rc.NodeOfSlot(slotOf(wire.ControlChannel))
	var frozen *redistest.ClusterNode
	for _, n := range rc.Nodes {
		if n != control {
			frozen = n
			break
		}
	}
	var healthy, stuck string
	for i := 0; healthy == "" || stuck == ""; i++ {
		ch := fmt.Sprintf("room:r%d", i)
		switch rc.NodeOfSlot(slotOf(ch)) {
		case frozen:
			if stuck == "" {
				stuck = ch
			}
		default:
			if healthy == "" {
				healthy = ch
			}
		}
	}

	var mu sync.Mutex
	var arrivals []time.Time
	joined := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		runCluster(ctx, c, func(ch string, m wire.Message, err error) {
			switch {
			case err != nil:
			case ch == wire.ControlChannel:
				// The hub's join: a Subscribe, from inside deliver.
				if err := c.Subscribe(stuck); err != nil {
					t.Logf("join %s: %v", stuck, err)
				}
				joined <- struct{}{}
			case ch == healthy && m.Durable() && len(m.Body) > 0:
				mu.Lock()
				arrivals = append(arrivals, time.Now())
				mu.Unlock()
			}
		}, func(context.Context, int) {}, func() {})
	})
	defer wg.Wait()
	defer cancel()
	defer frozen.Thaw()
	if err := c.Subscribe(wire.ControlChannel, healthy); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	publishing := make(chan struct{})
	var pub sync.WaitGroup
	pub.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-publishing:
				return
			case <-time.After(20 * time.Millisecond):
			}
			pctx, pcancel := context.WithTimeout(ctx, time.Second)
			if _, err := c.Publish(pctx, healthy, []byte(`{"data":`+strconv.Itoa(i)+`}`)); err != nil {
				t.Logf("publish %d: %v", i, err)
			}
			pcancel()
		}
	})
	time.Sleep(300 * time.Millisecond)
	frozen.Freeze()
	begin := time.Now()
	// The partition's connection to the frozen master is taken as dead
	// after two quiet ping periods (1 s each here) and dialled again; a
	// join now must not wait for that dial.
	time.Sleep(2500 * time.Millisecond)
	node := control.Client()
	tag := "sse:{p" + strconv.Itoa(wire.Partition(wire.ControlChannel, parts)) + "}:"
	if err := node.SPublish(ctx, tag+wire.ControlChannel, `{"op":"join","user":"alice","room":"x"}`).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-joined:
	case <-time.After(5 * time.Second):
		t.Error("the control message was not delivered within 5 s")
	}
	time.Sleep(4 * time.Second)
	close(publishing)
	pub.Wait()
	end := time.Now()
	frozen.Thaw()

	mu.Lock()
	defer mu.Unlock()
	last, worst := begin, time.Duration(0)
	n := 0
	for _, a := range arrivals {
		if a.Before(begin) {
			continue
		}
		n++
		worst = max(worst, a.Sub(last))
		last = a
	}
	worst = max(worst, end.Sub(last))
	t.Logf("with a master frozen for %v: %d events of %s arrived, longest gap %v", end.Sub(begin).Round(time.Millisecond), n, healthy, worst.Round(time.Millisecond))
	if worst > time.Second {
		t.Errorf("no event of %s (on a healthy master) arrived for %v while a join waited on the frozen master", healthy, worst.Round(time.Millisecond))
	}
}
