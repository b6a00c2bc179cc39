package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/internal/ssetest"
	"github.com/ssebridge/ssebridge/wire"
)

// churn is a bounded run in which streams keep dropping and resuming with
// their last id while durable events are published, and faults happen. At
// the end every stream must have every event of its channels exactly once,
// in order: run checks order across channels (one Redis: ids are totally
// ordered), runCluster (cluster_test.go) per channel.
type churn struct {
	rdb      redis.Cmdable                        // where the sessions go
	publish  func(channel, envelope string) error // a durable publish, as a backend does
	retryFor time.Duration                        // how long a publish may keep failing; 10s if 0
	grace    time.Duration                        // after publishing, for the streams to get what they are owed; 60s if 0
	targets  func() []string                      // base URLs of the instances up now
	streams  int
	duration time.Duration // of publishing
	faults   []fault
}

type fault struct {
	at   time.Duration
	what string
	do   func()
}

type delivery struct {
	id     wire.Cursor
	ch     string
	seq    int
	resets int
}

type msg struct {
	ch  string
	seq int
}

// churnChannels are the channels a churn publishes on; churnChannelsOf(i)
// those of stream i (session churn<i>).
func churnChannels() []string {
	all := []string{"broadcast", "room:r0", "room:r1", "room:r2"}
	for u := range 10 {
		all = append(all, fmt.Sprintf("user:u%d", u))
	}
	return all
}

func churnChannelsOf(i int) map[string]bool {
	return map[string]bool{fmt.Sprintf("user:u%d", i%10): true, fmt.Sprintf("room:r%d", i%3): true, "broadcast": true}
}

// churned is what a churn saw: what was published, and what each stream got.
type churned struct {
	acked   []msg        // acknowledged publishes, in order
	retried map[msg]bool // acknowledged after a failed try: maybe published twice
	got     [][]delivery // per stream, as they arrived
}

// drive runs the churn: the publisher, the faults on their schedule and the
// streams, until publishing has ended and every stream has every distinct
// event it is owed (or the grace is over).
func (c churn) drive(t *testing.T) churned {
	ctx := context.Background()
	retryFor, grace := cmp.Or(c.retryFor, 10*time.Second), cmp.Or(c.grace, 60*time.Second)
	for i := range c.streams {
		setSession(t, c.rdb, fmt.Sprintf("session:churn%d", i), fmt.Sprintf("u%d", i%10), fmt.Sprintf("r%d", i%3))
	}

	// Each stream connects once before publishing starts, so every event
	// published afterwards on its channels is owed to it.
	got := make([][]delivery, c.streams)
	// The distinct events each stream got: a publish retried after Redis
	// lost its reply (the restart) is there twice, under two ids, so the
	// length of got says nothing of whether a stream has all it is owed.
	distinct := make([]map[msg]bool, c.streams)
	last := make([]string, c.streams)
	for i := range c.streams {
		distinct[i] = map[msg]bool{}
		ts := c.targets()
		s, id, err := openReady(ctx, ts[i%len(ts)], bearer(fmt.Sprintf("churn%d", i)))
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		last[i] = id
		s.Close()
	}

	var (
		mu      sync.Mutex
		acked   []msg
		retried = map[msg]bool{}
		owed    = make([]int, c.streams) // set once publishing ends
		settled atomic.Bool
	)
	var wg sync.WaitGroup
	wg.Go(func() { // the publisher
		all := churnChannels()
		end := time.Now().Add(c.duration)
		for seq := 0; time.Now().Before(end); seq++ {
			ch := all[rand.IntN(len(all))]
			env := fmt.Sprintf(`{"event":"n","data":{"c":%q,"s":%d}}`, ch, seq)
			try := 0
			for ; ; try++ {
				if err := c.publish(ch, env); err == nil {
					break
				} else if time.Duration(try)*50*time.Millisecond > retryFor {
					t.Errorf("publish on %s failed for %v: %v", ch, retryFor, err)
					return
				}
				time.Sleep(50 * time.Millisecond) // Redis restarting: a backend would retry too
			}
			mu.Lock()
			acked = append(acked, msg{ch, seq})
			// A try whose reply was lost (Redis killed after it ran the
			// script) may have published the event: the retry publishes
			// it again, a second event with the same payload.
			retried[msg{ch, seq}] = try > 0
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	})
	wg.Go(func() { // the faults, on their schedule
		start := time.Now()
		for _, f := range c.faults {
			time.Sleep(time.Until(start.Add(f.at)))
			t.Logf("fault at %v: %s", time.Since(start).Round(time.Millisecond), f.what)
			f.do()
		}
	})

	var clients sync.WaitGroup
	deadline := time.Now().Add(c.duration + grace)
	for i := range c.streams {
		clients.Go(func() {
			for time.Now().Before(deadline) {
				if settled.Load() && len(distinct[i]) >= owed[i] {
					return
				}
				ts := c.targets()
				h := bearer(fmt.Sprintf("churn%d", i))
				h.Set("Last-Event-ID", last[i])
				s, err := ssetest.Open(ctx, ts[rand.IntN(len(ts))]+"/events", h)
				if err != nil {
					time.Sleep(time.Duration(20+rand.IntN(80)) * time.Millisecond)
					continue
				}
				keep := time.Now().Add(time.Duration(50+rand.IntN(700)) * time.Millisecond)
				for time.Now().Before(keep) || settled.Load() && len(distinct[i]) < owed[i] {
					ev, err := s.Next(200 * time.Millisecond)
					if err == ssetest.ErrTimeout {
						if settled.Load() && len(distinct[i]) >= owed[i] {
							break
						}
						continue
					}
					if err != nil {
						break // the instance went away: resume elsewhere
					}
					if ev.HasID {
						last[i] = ev.ID
					}
					switch ev.Event {
					case "reset":
						got[i] = append(got[i], delivery{resets: 1})
					case "n":
						var d struct {
							C string
							S int
						}
						_ = json.Unmarshal([]byte(ev.Data), &d)
						id, _ := wire.ParseCursor(ev.ID)
						got[i] = append(got[i], delivery{id: id, ch: d.C, seq: d.S})
						distinct[i][msg{d.C, d.S}] = true
					}
				}
				s.Close()
			}
		})
	}

	wg.Wait()
	mu.Lock()
	for i := range c.streams {
		mine := churnChannelsOf(i)
		for _, m := range acked {
			if mine[m.ch] {
				owed[i]++
			}
		}
	}
	mu.Unlock()
	settled.Store(true)
	clients.Wait()
	return churned{acked: acked, retried: retried, got: got}
}

// run returns per-stream lost, duplicated and reset counts, after logging the totals.
func (c churn) run(t *testing.T) (lost, dup, resets, published, delivered int) {
	r := c.drive(t)
	published = len(r.acked)
	twice := 0
	for i := range c.streams {
		mine := churnChannelsOf(i)
		seen := map[msg]wire.Cursor{}
		var prev wire.Cursor
		for _, d := range r.got[i] {
			if d.resets > 0 {
				resets++
				continue
			}
			delivered++
			m := msg{d.ch, d.seq}
			if old, ok := seen[m]; ok && old == d.id {
				dup++
			} else if ok {
				twice++ // published twice (a retry after a lost reply), under another id
			} else if !ok && !prev.IsZero() && !prev.Before(d.id) {
				t.Errorf("stream %d: event %s after %s: out of order", i, d.id, prev)
			}
			seen[m] = d.id
			prev = d.id
		}
		for _, m := range r.acked {
			if mine[m.ch] {
				if _, ok := seen[m]; !ok {
					lost++
				}
			}
		}
	}
	t.Logf("churn: %d streams, %d events published, %d deliveries, %d lost, %d duplicated, %d resets; %d deliveries of an event its publisher published twice",
		c.streams, published, delivered, lost, dup, resets, twice)
	return lost, dup, resets, published, delivered
}

// TestResumeSeam: one instance, streams that drop and resume all the time.
func TestResumeSeam(t *testing.T) {
	a := startApp(t, nil, map[string]string{"MAX_STREAMS_PER_USER": "100"})
	c := churn{
		rdb: a.rdb, publish: func(ch, env string) error { _, err := evalPublish(a.rdb, ch, env); return err },
		targets: func() []string { return []string{a.url} }, streams: 10, duration: 3 * time.Second,
	}
	lost, dup, resets, published, _ := c.run(t)
	if lost != 0 || dup != 0 || resets != 0 || published == 0 {
		t.Fatalf("lost %d, duplicated %d, resets %d (of %d published): want 0, 0, 0", lost, dup, resets, published)
	}
}

// TestChaos: two instances on one Redis, 50 streams resuming on either, a
// Redis restart and an instance killed with SIGKILL mid-run.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the chaos run")
	}
	r := redistest.Start(t)
	rdb := r.Client()
	vars := map[string]string{"REDIS_URL": r.URL(), "MAX_STREAMS_PER_USER": "100", "HISTORY_MAXLEN": "100000"}
	var mu sync.Mutex
	procs := []*proc{startBinary(t, vars), startBinary(t, vars)}
	targets := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var urls []string
		for _, p := range procs {
			if p != nil {
				urls = append(urls, "http://"+p.addr)
			}
		}
		return urls
	}
	c := churn{
		rdb: rdb, publish: func(ch, env string) error { _, err := evalPublish(rdb, ch, env); return err },
		targets: targets, streams: 50, duration: 10 * time.Second,
		faults: []fault{
			{2 * time.Second, "Redis killed (SIGKILL) and restarted", r.Restart},
			{5 * time.Second, "instance 2 killed with SIGKILL", func() {
				mu.Lock()
				p := procs[1]
				procs[1] = nil
				mu.Unlock()
				p.kill()
			}},
			{7 * time.Second, "instance 2 started again", func() {
				p := startBinary(t, vars)
				mu.Lock()
				procs[1] = p
				mu.Unlock()
			}},
		},
	}
	lost, dup, resets, published, delivered := c.run(t)
	fmt.Printf("chaos: published=%d delivered=%d lost=%d duplicated=%d resets=%d\n", published, delivered, lost, dup, resets)
	if lost != 0 || dup != 0 || resets != 0 {
		t.Fatalf("lost %d, duplicated %d, resets %d: want none", lost, dup, resets)
	}
}
