package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/wire"
)

// TestSoak is the bounded soak (RELIABILITY.md): one ssebridge binary on a
// real redis-server (AOF), 2,000 streams of 400 users that keep closing and
// resuming with their last id, 200 durable events/s over user, room and
// broadcast channels, a Redis restart (SIGKILL) halfway; the server's and the
// test's goroutines, open files and RSS sampled every 10 s. It runs only with
// SSEBRIDGE_SOAK set: 1 for 10 minutes of churn and publishing, or a
// duration (90s while developing); set-up and the final catch-up add seconds
// (up to 90 s more if a client cannot catch up), so go test needs -timeout
// 20m for the full run.
//
// A logical client is a chain of streams: each stream of a chain reopens
// with the id of the last event the previous one got (Last-Event-ID, as
// EventSource does). Every durable event published on the chain's channels
// after its first stream's ready id, and before it ends, must reach the chain
// once, in id order, or the chain must get an `event: reset` (counted). The
// check runs as events arrive. Each of the 8 publishers publishes one event
// at a time, so its event numbers (in the data, with its own number) follow
// ids: its event s proves that its events before s were published before
// it, and any of those on the chain's channels that the chain has not got by
// then is counted lost. Across publishers, ids must simply grow. A publish
// whose answer was lost (the Redis restart) is looked up in the channel's
// history afterwards: if it was published, it is owed like any other.
func TestSoak(t *testing.T) {
	dur := soakDuration(t)
	if dl, ok := t.Deadline(); ok && time.Until(dl) < dur+4*time.Minute {
		t.Fatalf("SSEBRIDGE_SOAK=%v needs go test -timeout %v or more", dur, (dur + 5*time.Minute).Round(time.Minute))
	}
	r := redistest.Start(t)
	p := startPlainBinary(t, map[string]string{"REDIS_URL": r.URL()}) // a true memory figure
	// The publisher's own client: no retries inside go-redis, so one attempt
	// is at most one event (a retried EVALSHA whose first reply was lost
	// would publish it twice, under two ids).
	pub := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second})
	t.Cleanup(func() { pub.Close() })
	s := newSoak(t, "http://"+p.addr, p.cmd.Process.Pid, pub, dur)
	s.run(r)
}

// The soak's shape.
const (
	soakUsers          = 400
	soakRooms          = 40
	soakRoomsPerUser   = 3 // every room has 30 users, 150 streams
	soakStreamsPerUser = 5 // 2,000 streams; the fifth of each user asks ?rooms= for one room
	soakRate           = 200
	soakPublishers     = 8 // each at soakRate/8, side by side: a slow fsync or a busy core delays one, not the rate
	soakSampleEvery    = 10 * time.Second
	soakMinLife        = 5 * time.Second  // a stream's lifetime, uniform in [min, max)
	soakMaxLife        = 55 * time.Second // (the first one in [0, max), to spread them)
	soakMaxOffline     = 2 * time.Second  // between a stream's close and its reopening, uniform
	soakRetire         = 0.05             // chance that a closing stream's client leaves for good (a new one takes its place)
	soakDrain          = 90 * time.Second // to catch up once publishing stops
	soakShareBroadcast = 0.02             // of the events; rooms get 0.38, users the rest
	soakShareRooms     = 0.38
)

func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv("SSEBRIDGE_SOAK")
	if v == "" || testing.Short() {
		t.Skip("the soak runs only with SSEBRIDGE_SOAK=1 (10 minutes) or a duration (SSEBRIDGE_SOAK=90s); see RELIABILITY.md")
	}
	if v == "1" {
		return 10 * time.Minute
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 30*time.Second || d > 10*time.Minute {
		t.Fatalf("SSEBRIDGE_SOAK=%q: want 1 or a duration from 30s to 10m", v)
	}
	return d
}

type soak struct {
	t     *testing.T
	url   string
	pid   int
	pub   *redis.Client
	dur   time.Duration
	names []string // channel index -> logical name: broadcast, rooms, users
	logs  [soakPublishers]soakLog

	start     time.Time // publishing starts
	churnOver atomic.Bool
	final     chan struct{} // closed once publishing has stopped
	deadline  atomic.Int64  // UnixNano: the end of the catch-up, set before final is closed
	aborted   atomic.Bool   // the run failed early: every client stops at once

	chainNo    atomic.Int64
	open       atomic.Int64 // streams the test holds open
	opens      atomic.Int64 // streams opened
	resumes    atomic.Int64 // of which with a Last-Event-ID
	srvEnded   atomic.Int64 // streams the server ended
	received   atomic.Int64
	pubErrors  atomic.Int64
	givenUp    atomic.Int64 // events not attempted: the publisher was over a second behind
	retired    atomic.Int64
	retireMiss atomic.Int64 // a leaving client that did not see the id it waited for

	restartAt     atomic.Int64                // UnixNano of the Redis kill
	firstOK       atomic.Pointer[wire.Cursor] // the first event published after it
	firstOKAt     atomic.Int64
	firstDelivery atomic.Int64

	mu       sync.Mutex
	total    soakStats
	chains   int
	refused  map[string]int
	resetWhy map[string]int
	resetAt  []time.Duration
	problems int
	uncaught int // chains that did not catch up in time
	samples  []soakSample
	deferred []deferredCheck // failed publishes a client did not get, settled once their outcome is known

	failed    chan [2]int            // failed publishes, for the resolver
	outcome   map[[2]int]wire.Cursor // their outcome: the id, or zero if not published
	resolved  chan struct{}          // closed when the resolver is done
	ownedSeen int                    // owed deliveries: received (not duplicated) + lost
}

func newSoak(t *testing.T, url string, pid int, pub *redis.Client, dur time.Duration) *soak {
	s := &soak{t: t, url: url, pid: pid, pub: pub, dur: dur, final: make(chan struct{}),
		refused: map[string]int{}, resetWhy: map[string]int{},
		failed: make(chan [2]int, soakRate*int(dur/time.Second)+soakRate), outcome: map[[2]int]wire.Cursor{}, resolved: make(chan struct{})}
	s.names = append(s.names, "broadcast")
	for r := range soakRooms {
		s.names = append(s.names, fmt.Sprintf("room:r%d", r))
	}
	for u := range soakUsers {
		s.names = append(s.names, fmt.Sprintf("user:u%d", u))
	}
	for p := range s.logs {
		s.logs[p].e = make([]soakEvent, (soakRate*int(dur/time.Second)+soakRate)/soakPublishers)
	}
	return s
}

func (s *soak) problem(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.problemLocked(format, args...)
}

func (s *soak) problemLocked(format string, args ...any) {
	s.problems++
	if s.problems <= 30 && !s.aborted.Load() {
		s.t.Logf("soak problem: "+format, args...)
	}
}

func (s *soak) run(r *redistest.Server) {
	t := s.t
	base, err := s.scrape()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before any stream: server %v goroutines, %v fds, RSS %.1f MiB", base["go_goroutines"], base["process_open_fds"], base["process_resident_memory_bytes"]/(1<<20))

	// Every client connects once; then the clock starts.
	slots := soakUsers * soakStreamsPerUser
	var connected, done sync.WaitGroup
	begin := make(chan struct{})
	connected.Add(slots)
	t0 := time.Now()
	for j := range slots {
		done.Go(func() { s.slot(j, &connected, begin) })
		if j%50 == 49 {
			time.Sleep(50 * time.Millisecond) // a ramp, not 2,000 handshakes at once
		}
	}
	ok := make(chan struct{})
	go func() { connected.Wait(); close(ok) }()
	select {
	case <-ok:
	case <-time.After(2 * time.Minute):
		close(begin)
		s.abort(&done, fmt.Sprintf("only %d of %d streams open after 2 minutes", s.open.Load(), slots))
	}
	t.Logf("%d streams open in %v", slots, time.Since(t0).Round(time.Millisecond))

	s.start = time.Now()
	close(begin)
	end := s.start.Add(s.dur)
	var publishers sync.WaitGroup
	for p := range soakPublishers {
		publishers.Go(func() { s.publish(p, end) })
	}
	go s.resolve()

	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(soakSampleEvery)
		defer tick.Stop()
		t.Log("\n" + soakHeader)
		for {
			x := s.sample()
			s.mu.Lock()
			before := x
			if n := len(s.samples); n > 0 {
				before = s.samples[n-1]
			}
			s.samples = append(s.samples, x)
			s.mu.Unlock()
			t.Log(x.row(before))
			select {
			case <-tick.C:
			case <-stopSampling:
				return
			}
		}
	}()

	// The Redis restart, halfway.
	time.Sleep(time.Until(s.start.Add(s.dur / 2)))
	var recovery struct{ up, ready, published, delivered time.Duration }
	r.Stop() // SIGKILL, and wait for the process to be gone: Restart would do the same
	kill := time.Now()
	s.restartAt.Store(kill.UnixNano())
	r.Restart()
	recovery.up = time.Since(kill)
	for {
		resp, err := http.Get(s.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Since(kill) > time.Minute {
			s.abort(&done, "readyz not 200 a minute after the Redis restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	recovery.ready = time.Since(kill)
	t.Logf("Redis killed at %v and restarted: answering after %v, /readyz 200 after %v",
		kill.Sub(s.start).Round(time.Second), recovery.up.Round(time.Millisecond), recovery.ready.Round(time.Millisecond))
	s.redisStartLog()

	publishers.Wait()
	close(s.failed)
	s.deadline.Store(time.Now().Add(soakDrain).UnixNano())
	s.churnOver.Store(true)
	close(s.final)
	pubEnd := time.Now() // (clients check the failed publishes' outcomes only at the end)
	t.Logf("publishing stopped after %v: %d attempts", pubEnd.Sub(s.start).Round(time.Millisecond), s.published())
	done.Wait()
	<-s.resolved
	t.Logf("every client caught up %v after publishing stopped", time.Since(pubEnd).Round(time.Millisecond))
	close(stopSampling)
	<-sampled
	if at := s.firstOKAt.Load(); at > 0 {
		recovery.published = time.Duration(at - kill.UnixNano())
	}
	if at := s.firstDelivery.Load(); at > 0 {
		recovery.delivered = time.Duration(at - kill.UnixNano())
	}

	// Every stream is closed: the server must come back to where it started.
	var after map[string]float64
	settled := time.Now().Add(30 * time.Second)
	for {
		after, err = s.scrape()
		if err == nil && after["ssebridge_streams_open"] == 0 && after["go_goroutines"] <= base["go_goroutines"]+10 &&
			after["process_open_fds"] <= base["process_open_fds"]+10 || time.Now().After(settled) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	s.report(base, after, recovery.up, recovery.ready, recovery.published, recovery.delivered, kill.Sub(s.start))
}

// redisStartLog logs what the restarted redis-server wrote while starting
// (how long it took to load its AOF).
func (s *soak) redisStartLog() {
	dir, err := s.pub.ConfigGet(context.Background(), "dir").Result()
	if err != nil {
		s.t.Logf("redis dir: %v", err)
		return
	}
	b, err := os.ReadFile(dir["dir"] + "/redis.log")
	if err != nil {
		s.t.Logf("redis log: %v", err)
		return
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	from := 0
	for i, l := range lines {
		if strings.Contains(l, "oO0OoO0OoO0Oo") { // the banner's first line, once per start
			from = i
		}
	}
	s.t.Logf("the restarted redis-server's log:\n%s", strings.Join(lines[from:], "\n"))
}

// abort ends a run that cannot go on: every client stops, then the test.
func (s *soak) abort(clients *sync.WaitGroup, why string) {
	s.aborted.Store(true)
	s.deadline.Store(time.Now().UnixNano())
	s.churnOver.Store(true)
	close(s.final)
	clients.Wait()
	s.t.Fatal(why)
}
