package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// TestScale5000Streams: 5,000 streams on one process (built without the
// race detector, whose goroutine limit it would pass, and for a true memory
// figure): a handful of Redis connections, one subscription per channel.
func TestScale5000Streams(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the 5,000-stream test")
	}
	const n = 5000
	r := redistest.Start(t)
	p := startPlainBinary(t, map[string]string{"REDIS_URL": r.URL(), "UNSUBSCRIBE_DELAY": "200ms"})
	rdb := r.Client()
	ctx := context.Background()

	// Sessions for n distinct users, pipelined.
	_, err := rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i := range n {
			pl.Set(ctx, fmt.Sprintf("session:s%d", i), fmt.Sprintf(`{"user":"u%d","rooms":["r%d"]}`, i, i%10), time.Hour)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 32 {
		wg.Go(func() {
			for i := range next {
				conns[i] = rawStream(t, p.addr, fmt.Sprintf("s%d", i))
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()

	clients, err := rdb.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	ours := strings.Count(clients, "name=ssebridge ")
	channels := len(rdb.PubSubChannels(ctx, "sse:*").Val())
	rss := rssKiB(t, p.cmd.Process.Pid)
	t.Logf("%d streams: %d Redis connections, %d Redis channels, RSS %d MiB (%.1f KiB per stream)",
		n, ours, channels, rss/1024, float64(rss)/n)
	// The pub/sub connection and REDIS_POOL_SIZE (8) others, and one more
	// that go-redis may dial while it fills the pool at start: a constant.
	if ours < 1 || ours > 10 {
		t.Errorf("%d Redis connections for %d streams; want a handful", ours, n)
	}
	if want := n + 10 + 2; channels != want { // users, rooms, broadcast, control
		t.Errorf("%d Redis channels subscribed, want %d", channels, want)
	}

	// The last stream of a channel leaving unsubscribes it in Redis.
	conns[0].Close()
	eventually(t, 10*time.Second, "u0's channel to be unsubscribed", func() bool {
		return rdb.PubSubNumSub(ctx, "sse:user:u0").Val()["sse:user:u0"] == 0
	})
	if rdb.PubSubNumSub(ctx, "sse:room:r0").Val()["sse:room:r0"] != 1 {
		t.Error("room r0 lost its subscription while 499 streams still need it")
	}
}

func rssKiB(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no VmRSS")
	}
	kb, _ := strconv.Atoi(string(m[1]))
	return kb
}
