package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/internal/ssetest"
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

// soakEvent is one publish attempt, numbered by its index in soakLog.
type soakEvent struct {
	id    wire.Cursor
	ch    int16
	acked bool // the script returned its id; an attempt that failed may or may not be published
}

// soakLog is one publisher's attempts, append-only, written by that
// publisher alone: entry k is written before n moves past k, so a reader
// that loaded n reads entries below it without a lock.
type soakLog struct {
	e []soakEvent
	n atomic.Int64
}

type soakStats struct {
	received, lost, dup, disorder, foreign, mismatch, resets int
}

func (a *soakStats) add(b soakStats) {
	a.received += b.received
	a.lost += b.lost
	a.dup += b.dup
	a.disorder += b.disorder
	a.foreign += b.foreign
	a.mismatch += b.mismatch
	a.resets += b.resets
}

// soakChain is a logical client: its streams, one after another.
type soakChain struct {
	no      int
	token   string
	query   string
	chans   []int16
	started bool
	floor   wire.Cursor         // events at or before it are not owed (the first ready id, or the last reset's)
	prev    wire.Cursor         // the last id received
	last    string              // the Last-Event-ID to resume with
	next    [soakPublishers]int // by publisher, the first event number not yet accounted for
	lostSet map[[2]int]bool     // publisher, number
	pending map[[2]int]bool     // failed publishes on its channels that it did not get: owed if they were published
	st      soakStats
}

func (c *soakChain) has(ch int16) bool {
	for _, x := range c.chans {
		if x == ch {
			return true
		}
	}
	return false
}

// deferredCheck is a failed publish that a client did not get: lost if it
// was published after the client's floor and before the last event it got
// (a client that left before such an event could reach it was not owed it).
type deferredCheck struct {
	chain       int
	event       [2]int
	floor, last wire.Cursor
}

type soakSample struct {
	at                                  time.Duration
	srvGoroutines, srvFDs, srvRSSKiB    int
	srvStreams                          int
	testGoroutines, testFDs, testRSSKiB int
	testHeapKiB                         int
	open                                int
	published, received                 int
	load1                               float64
	srvCPU, testCPU                     float64 // seconds, cumulative
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

func soakRoomsOf(u int) []int {
	rooms := make([]int, soakRoomsPerUser)
	for k := range rooms {
		rooms[k] = (u + k*13) % soakRooms
	}
	return rooms
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

// newChain makes a logical client for slot j: a session of its own (a new
// login) for the slot's user.
func (s *soak) newChain(j int) *soakChain {
	u := j / soakStreamsPerUser
	no := int(s.chainNo.Add(1))
	c := &soakChain{no: no, token: fmt.Sprintf("soak-%d", no), chans: []int16{0, int16(1 + soakRooms + u)}}
	rooms := soakRoomsOf(u)
	if j%soakStreamsPerUser == soakStreamsPerUser-1 {
		c.query = fmt.Sprintf("?rooms=r%d", rooms[0])
		rooms = rooms[:1]
	}
	for _, r := range rooms {
		c.chans = append(c.chans, int16(1+r))
	}
	return c
}

func (s *soak) sessionValue(j int) string {
	u := j / soakStreamsPerUser
	var rooms []string
	for _, r := range soakRoomsOf(u) {
		rooms = append(rooms, fmt.Sprintf("%q", fmt.Sprintf("r%d", r)))
	}
	return fmt.Sprintf(`{"user":"u%d","rooms":[%s]}`, u, strings.Join(rooms, ","))
}

type soakStream struct {
	*ssetest.Stream
	cancel context.CancelFunc
}

func (st soakStream) close() {
	st.Stream.Close()
	st.cancel()
}

// connect opens a stream for c (resuming from c.last) and reads its ready
// event, retrying with jittered backoff as ssebridge.js does after a
// refusal. It returns false once the catch-up deadline has passed.
func (s *soak) connect(j int, c *soakChain) (soakStream, bool) {
	for {
		if s.aborted.Load() || s.pastDeadline() {
			return soakStream{}, false
		}
		if !c.started {
			// The session is written on the chain's first attempt, and again
			// after an unknown-session refusal (Redis was down when it was).
			err := s.pub.Set(context.Background(), "session:"+c.token, s.sessionValue(j), 2*time.Hour).Err()
			if err != nil {
				s.countRefusal("session write failed")
				s.backoff(0)
				continue
			}
		}
		h := bearer(c.token)
		if c.last != "" {
			h.Set("Last-Event-ID", c.last)
		}
		before := s.ends() // every event below these has its id before this stream's position
		ctx, cancel := context.WithCancel(context.Background())
		timer := time.AfterFunc(10*time.Second, cancel)
		st, err := ssetest.Open(ctx, s.url+"/events"+c.query, h)
		timer.Stop()
		if err != nil {
			cancel()
			var se *ssetest.StatusError
			retryAfter := 0
			if errors.As(err, &se) {
				s.countRefusal(fmt.Sprintf("%d %s", se.Response.StatusCode, strings.TrimSpace(se.Body)))
				retryAfter, _ = strconv.Atoi(se.Response.Header.Get("Retry-After"))
			} else {
				s.countRefusal("network: " + err.Error())
			}
			s.backoff(retryAfter)
			continue
		}
		ss := soakStream{st, cancel}
		ev, err := st.NextEvent(10 * time.Second)
		if err != nil || ev.Event != "ready" {
			s.countRefusal("no ready event")
			s.problem("chain %d: want ready first, got %+v %v", c.no, ev, err)
			ss.close()
			s.backoff(0)
			continue
		}
		s.opens.Add(1)
		if c.started {
			s.resumes.Add(1)
			if ev.HasID {
				s.problem("chain %d: a resumed stream's ready carries id %q", c.no, ev.ID)
			}
		} else {
			id, err := wire.ParseCursor(ev.ID)
			if !ev.HasID || err != nil {
				s.problem("chain %d: a new stream's ready has no position: %+v", c.no, ev)
				ss.close()
				s.backoff(0)
				continue
			}
			c.started, c.floor, c.prev, c.last, c.next = true, id, id, ev.ID, before
		}
		s.open.Add(1)
		return ss, true
	}
}

// ends returns how many attempts each publisher has made.
func (s *soak) ends() (n [soakPublishers]int) {
	for p := range s.logs {
		n[p] = int(s.logs[p].n.Load())
	}
	return n
}

func (s *soak) pastDeadline() bool {
	d := s.deadline.Load()
	return d != 0 && time.Now().UnixNano() > d
}

func (s *soak) countRefusal(why string) {
	if len(why) > 80 {
		why = why[:80]
	}
	s.mu.Lock()
	s.refused[why]++
	s.mu.Unlock()
}

func (s *soak) backoff(retryAfter int) {
	d := time.Duration(500+rand.IntN(2000)) * time.Millisecond
	if retryAfter > 0 {
		d = time.Duration(float64(min(retryAfter, 5)) * float64(time.Second) * (0.5 + rand.Float64()))
	}
	time.Sleep(d)
}

// receive checks one block of c's stream.
func (s *soak) receive(c *soakChain, ev ssetest.Event) {
	if ev.HasID {
		c.last = ev.ID
	}
	switch ev.Event {
	case "n":
		s.received.Add(1)
		f := strings.Fields(ev.Data)
		var num [3]int
		var err error
		for i := range num {
			if len(f) != len(num) {
				err = errors.New("not three numbers")
				break
			}
			if num[i], err = strconv.Atoi(f[i]); err != nil {
				break
			}
		}
		id, err2 := wire.ParseCursor(ev.ID)
		if err != nil || err2 != nil || num[0] < 0 || num[0] >= soakPublishers || num[2] < 0 || num[2] >= len(s.names) {
			c.st.mismatch++
			s.problem("chain %d: unreadable event %+v", c.no, ev)
			return
		}
		p, seq, ch := num[0], num[1], num[2]
		if at := s.firstOK.Load(); at != nil && !id.Before(*at) {
			s.firstDelivery.CompareAndSwap(0, time.Now().UnixNano())
		}
		if !c.has(int16(ch)) {
			c.st.foreign++
			s.problem("chain %d: event %d/%d of %s, not one of its channels", c.no, p, seq, s.names[ch])
		}
		log := &s.logs[p]
		if n := int(log.n.Load()); seq > n {
			c.st.mismatch++
			s.problem("chain %d: event %d/%d before the publisher's attempt %d", c.no, p, seq, n)
			return
		} else if seq < n {
			if e := log.e[seq]; e.acked && (e.id != id || int(e.ch) != ch) {
				c.st.mismatch++
				s.problem("chain %d: event %d/%d has id %s on %s; published as %s on %s", c.no, p, seq, id, s.names[ch], e.id, s.names[e.ch])
			}
		}
		if !c.prev.Before(id) {
			c.st.disorder++
			s.problem("chain %d: event %d/%d (%s) after %s", c.no, p, seq, id, c.prev)
		}
		c.prev = id
		switch {
		case seq >= c.next[p]:
			s.skip(c, p, seq)
			c.next[p] = seq + 1
			c.st.received++
		case c.pending[[2]int{p, seq}]: // a failed publish that was published, after later ones
			delete(c.pending, [2]int{p, seq})
			c.st.received++
			c.st.disorder++
			s.problem("chain %d: event %d/%d (a failed publish) arrived after later ones", c.no, p, seq)
		case c.lostSet[[2]int{p, seq}]: // counted lost, and here it is, late
			delete(c.lostSet, [2]int{p, seq})
			c.st.lost--
			c.st.received++
			c.st.disorder++
			s.problem("chain %d: event %d/%d arrived after later ones", c.no, p, seq)
		default:
			c.st.dup++
			s.problem("chain %d: event %d/%d (%s) a second time", c.no, p, seq, id)
		}
	case "reset":
		c.st.resets++
		id, err := wire.ParseCursor(ev.ID)
		if err != nil {
			s.problem("chain %d: reset without a position: %+v", c.no, ev)
		} else {
			c.floor, c.prev = id, id
		}
		s.mu.Lock()
		s.resetWhy[ev.Data]++
		s.resetAt = append(s.resetAt, time.Since(s.start))
		s.mu.Unlock()
		s.problem("chain %d: reset %s at %v (id %s)", c.no, ev.Data, time.Since(s.start).Round(time.Second), ev.ID)
	default:
		if ev.HasID && ev.Event == "" { // an id-only mark
			if id, err := wire.ParseCursor(ev.ID); err == nil {
				if !c.prev.Before(id) {
					c.st.disorder++
					s.problem("chain %d: mark %s after %s", c.no, id, c.prev)
				}
				c.prev = id
			}
		} else if ev.Event != "" {
			s.problem("chain %d: unexpected event %+v", c.no, ev)
		}
	}
}

// skip accounts for publisher p's events numbered from c.next[p] up to
// (not including) upto that c did not get: those on its channels published
// after its floor are lost.
func (s *soak) skip(c *soakChain, p, upto int) {
	log := &s.logs[p]
	upto = min(upto, int(log.n.Load()))
	for k := c.next[p]; k < upto; k++ {
		e := log.e[k]
		if !e.acked && c.has(e.ch) {
			if c.pending == nil {
				c.pending = map[[2]int]bool{}
			}
			c.pending[[2]int{p, k}] = true
		}
		if e.acked && c.has(e.ch) && c.floor.Before(e.id) {
			c.st.lost++
			if c.lostSet == nil {
				c.lostSet = map[[2]int]bool{}
			}
			c.lostSet[[2]int{p, k}] = true
			s.problem("chain %d: event %d/%d (%s on %s) missed", c.no, p, k, e.id, s.names[e.ch])
		}
	}
	c.next[p] = max(c.next[p], upto)
}

// caughtUp reports, once publishing has stopped, whether c has every event
// it is owed.
func (s *soak) caughtUp(c *soakChain) bool { return s.caughtUpTo(c, s.ends()) }

// caughtUpTo reports whether c has every event it is owed below upto.
func (s *soak) caughtUpTo(c *soakChain, upto [soakPublishers]int) bool {
	for p := range s.logs {
		log := &s.logs[p]
		for k := upto[p] - 1; k >= c.next[p]; k-- {
			if e := log.e[k]; e.acked && c.has(e.ch) && c.floor.Before(e.id) {
				return false
			}
		}
	}
	return true
}

// finish closes c's books: everything owed below upto that it did not get
// is lost.
func (s *soak) finish(c *soakChain, upto [soakPublishers]int) {
	if c.started {
		for p := range upto {
			s.skip(c, p, upto[p])
		}
	}
	s.mu.Lock()
	for k := range c.pending {
		s.deferred = append(s.deferred, deferredCheck{c.no, k, c.floor, c.prev})
	}
	s.total.add(c.st)
	s.chains++
	s.ownedSeen += c.st.received + c.st.lost
	s.mu.Unlock()
}

// read reads st until the deadline, the stream's end (true), or the end of
// publishing.
func (s *soak) read(c *soakChain, st soakStream, until time.Time, stopAt func() bool) (ended bool) {
	for !stopAt() {
		wait := min(time.Until(until), time.Second)
		if wait <= 0 {
			return false
		}
		ev, err := st.Next(wait)
		if err == ssetest.ErrTimeout {
			continue
		}
		if err != nil {
			s.srvEnded.Add(1)
			return true
		}
		s.receive(c, ev)
	}
	return false
}

// slot runs slot j's clients until the catch-up is over.
func (s *soak) slot(j int, connected *sync.WaitGroup, begin <-chan struct{}) {
	c := s.newChain(j)
	first := true
	for {
		st, ok := s.connect(j, c)
		if !ok {
			s.mu.Lock()
			s.uncaught++
			s.mu.Unlock()
			s.problem("chain %d: no stream before the catch-up deadline", c.no)
			s.finish(c, s.ends())
			return
		}
		life := soakMinLife + rand.N(soakMaxLife-soakMinLife)
		if first {
			connected.Done()
			first = false
			<-begin
			life = rand.N(soakMaxLife)
		}
		if !s.churnOver.Load() {
			ended := s.read(c, st, time.Now().Add(life), s.churnOver.Load)
			if !ended && !s.churnOver.Load() && rand.Float64() < soakRetire {
				if s.retire(c, st) {
					s.closeStream(st)
					_ = s.pub.Del(context.Background(), "session:"+c.token).Err()
					c = s.newChain(j)
					continue
				}
				ended = true
			}
			if ended || !s.churnOver.Load() {
				s.closeStream(st)
				time.Sleep(rand.N(soakMaxOffline))
				continue
			}
		}
		// Publishing is over: read until every event owed has come.
		<-s.final
		caught, ended := false, false
		for !ended && !s.pastDeadline() {
			if s.caughtUp(c) {
				caught = true
				break
			}
			ended = s.read(c, st, time.Now().Add(time.Second), func() bool { return s.caughtUp(c) })
		}
		s.closeStream(st)
		if caught || !ended {
			if !caught {
				s.mu.Lock()
				s.uncaught++
				s.mu.Unlock()
				s.problem("chain %d: not caught up by the deadline (next %v of %v)", c.no, c.next, s.ends())
			}
			s.finish(c, s.ends())
			return
		}
		// The stream ended during the catch-up: resume it.
	}
}

func (s *soak) closeStream(st soakStream) {
	st.close()
	s.open.Add(-1)
}

// retire ends a client for good, once it has got every event published
// before it decided to leave. It returns false if its stream ended first.
func (s *soak) retire(c *soakChain, st soakStream) bool {
	upto := s.ends()
	deadline := time.Now().Add(30 * time.Second)
	reached := func() bool { return s.caughtUpTo(c, upto) }
	for !reached() {
		if time.Now().After(deadline) {
			s.retireMiss.Add(1)
			s.problem("chain %d: leaving, not caught up with %v in 30s (at %v)", c.no, upto, c.next)
			break
		}
		if s.read(c, st, time.Now().Add(time.Second), reached) {
			return false
		}
	}
	s.retired.Add(1)
	s.finish(c, upto)
	return true
}

// publish is publisher p: durable events at soakRate/soakPublishers until
// end, one at a time, paced by a ticker. A tick that finds it behind (a slow
// fsync, a busy machine) publishes up to 10 to catch up, but never more than
// a second's worth: what is further behind is given up (and counted), so a
// stall is not followed by a burst.
func (s *soak) publish(p int, end time.Time) {
	const rate = soakRate / soakPublishers
	log := &s.logs[p]
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	given := 0 // events given up
	for now := range tick.C {
		if now.After(end) || s.aborted.Load() {
			return
		}
		due := int(now.Sub(s.start)*rate/time.Second) + 1 - given
		if behind := due - int(log.n.Load()); behind > rate {
			given += behind - rate
			due -= behind - rate
			s.givenUp.Add(int64(behind - rate))
		}
		for k := 0; k < 10 && int(log.n.Load()) < min(due, len(log.e)); k++ {
			s.publishOne(p)
		}
	}
}

func (s *soak) publishOne(p int) {
	log := &s.logs[p]
	seq := int(log.n.Load())
	var ch int
	switch x := rand.Float64(); {
	case x < soakShareBroadcast:
		ch = 0
	case x < soakShareBroadcast+soakShareRooms:
		ch = 1 + rand.IntN(soakRooms)
	default:
		ch = 1 + soakRooms + rand.IntN(soakUsers)
	}
	env := fmt.Sprintf(`{"event":"n","data":"%d %d %d"}`, p, seq, ch)
	e := soakEvent{ch: int16(ch)}
	began := time.Now().UnixNano()
	id, err := evalPublish(s.pub, s.names[ch], env)
	if err == nil {
		e.id, err = wire.ParseCursor(id)
		e.acked = err == nil
	}
	if err != nil {
		if s.pubErrors.Add(1) <= 5 {
			s.t.Logf("publish %d/%d failed: %v", p, seq, err)
		}
		s.failed <- [2]int{p, seq}
	} else if at := s.restartAt.Load(); at > 0 && began > at && s.firstOK.CompareAndSwap(nil, &e.id) {
		s.firstOKAt.Store(time.Now().UnixNano())
	}
	log.e[seq] = e
	log.n.Store(int64(seq + 1))
}

// resolve finds out, for each failed publish, whether the script ran all
// the same: it looks for the event in its channel's history (read soon
// after, well within HISTORY_MAXLEN), with the epoch of the ids around it.
func (s *soak) resolve() {
	defer close(s.resolved)
	ctx := context.Background()
	for ev := range s.failed {
		e := s.logs[ev[0]].e[ev[1]] // written before n moved past it, which happened before the send
		want := fmt.Sprintf(`"data":"%d %d %d"`, ev[0], ev[1], e.ch)
		for try := 0; ; try++ {
			msgs, err := s.pub.XRevRangeN(ctx, "sse:{"+s.names[e.ch]+"}:history", "+", "-", 2000).Result()
			if err != nil {
				if try > 300 { // a minute
					s.problem("failed publish %v: history unreadable: %v", ev, err)
					break
				}
				time.Sleep(200 * time.Millisecond)
				continue
			}
			epoch := ""
			for p := range s.logs {
				for k := int(s.logs[p].n.Load()) - 1; k >= 0 && epoch == ""; k-- {
					if x := s.logs[p].e[k]; x.acked {
						epoch = x.id.Epoch
					}
				}
			}
			var id wire.Cursor
			for _, m := range msgs {
				if v, _ := m.Values["e"].(string); strings.Contains(v, want) {
					id, err = wire.ParseEntryID(epoch, m.ID)
					if err != nil {
						s.problem("failed publish %v: entry %s: %v", ev, m.ID, err)
					}
				}
			}
			s.mu.Lock()
			s.outcome[ev] = id
			s.mu.Unlock()
			break
		}
	}
}

var metricLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$`)

// scrape reads every sample of the server's /metrics.
func (s *soak) scrape() (map[string]float64, error) {
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if g := metricLine.FindStringSubmatch(sc.Text()); g != nil {
			m[g[1]], _ = strconv.ParseFloat(g[2], 64)
		}
	}
	return m, sc.Err()
}

func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func load1() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return f
}

func selfFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

func (s *soak) published() int {
	n := 0
	for _, k := range s.ends() {
		n += k
	}
	return n
}

func (s *soak) sample() soakSample {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m, err := s.scrape()
	if err != nil {
		s.problem("scraping /metrics: %v", err)
	}
	return soakSample{
		at:             time.Since(s.start),
		srvGoroutines:  int(m["go_goroutines"]),
		srvFDs:         int(m["process_open_fds"]),
		srvRSSKiB:      int(m["process_resident_memory_bytes"] / 1024),
		srvStreams:     int(m["ssebridge_streams_open"]),
		testGoroutines: runtime.NumGoroutine(),
		testFDs:        selfFDs(),
		testRSSKiB:     rssKiB(s.t, os.Getpid()),
		testHeapKiB:    int(ms.HeapInuse / 1024),
		open:           int(s.open.Load()),
		published:      s.published(),
		received:       int(s.received.Load()),
		load1:          load1(),
		srvCPU:         m["process_cpu_seconds_total"],
		testCPU:        selfCPU(),
	}
}

// row is x as a line of the table; CPU is the share of one core since the
// sample before.
func (x soakSample) row(before soakSample) string {
	cpu := func(now, then float64) float64 {
		if x.at <= before.at {
			return 0
		}
		return 100 * (now - then) / (x.at - before.at).Seconds()
	}
	return fmt.Sprintf("| %4ds | %7d | %6d | %11.1f | %11d | %7.0f | %8d | %7d | %12.1f | %13.1f | %8.0f | %9d | %9d | %9d | %5.1f |",
		int(x.at.Round(time.Second)/time.Second), x.srvGoroutines, x.srvFDs, float64(x.srvRSSKiB)/1024, x.srvStreams,
		cpu(x.srvCPU, before.srvCPU), x.testGoroutines, x.testFDs, float64(x.testRSSKiB)/1024, float64(x.testHeapKiB)/1024,
		cpu(x.testCPU, before.testCPU), x.open, x.published, x.received, x.load1)
}

const soakHeader = "|     t | srv gor | srv fd | srv RSS MiB | srv streams | srv CPU | test gor | test fd | test RSS MiB | test heap MiB | test CPU | test open | published | delivered | load1 |\n" +
	"|------:|--------:|-------:|------------:|------------:|--------:|---------:|--------:|-------------:|--------------:|---------:|----------:|----------:|----------:|------:|"

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

func (s *soak) report(base, after map[string]float64, up, ready, firstPublished, firstDelivered, killAt time.Duration) {
	t := s.t
	s.mu.Lock()
	defer s.mu.Unlock()
	acked := 0
	foundPublished, notPublished := 0, 0
	for _, id := range s.outcome {
		if id.IsZero() {
			notPublished++
		} else {
			foundPublished++
		}
	}
	for _, d := range s.deferred {
		id, ok := s.outcome[d.event]
		if !ok {
			s.problemLocked("chain %d: failed publish %v: outcome unknown", d.chain, d.event)
		} else if !id.IsZero() && d.floor.Before(id) && id.Before(d.last) {
			s.total.lost++
			s.problemLocked("chain %d: failed publish %v was published (%s) and missed", d.chain, d.event, id)
		}
	}
	n := s.published()
	for p := range s.logs {
		for _, e := range s.logs[p].e[:s.logs[p].n.Load()] {
			if e.acked {
				acked++
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s\n", soakHeader)
	for i, x := range s.samples {
		fmt.Fprintln(&b, x.row(s.samples[max(i-1, 0)]))
	}
	fmt.Fprintf(&b, "\nsoak %v: %d streams (%d users, %d rooms), %d clients in all (%d left and were replaced)\n",
		s.dur, soakUsers*soakStreamsPerUser, soakUsers, soakRooms, s.chains, s.retired.Load())
	fmt.Fprintf(&b, "published: %d durable events acknowledged of %d attempts (%d failed), %.1f/s over the run; %d given up (the publisher over a second behind)\n",
		acked, n, s.pubErrors.Load(), float64(acked)/s.dur.Seconds(), s.givenUp.Load())
	fmt.Fprintf(&b, "failed publishes: %d found in history afterwards (so owed), %d not published\n", foundPublished, notPublished)
	fmt.Fprintf(&b, "delivered: %d events to the clients; owed %d; lost %d, duplicated %d, out of order %d, foreign %d, mismatched %d; resets %d\n",
		s.received.Load(), s.ownedSeen, s.total.lost, s.total.dup, s.total.disorder, s.total.foreign, s.total.mismatch, s.total.resets)
	fmt.Fprintf(&b, "streams: %d opened, %d of them resumed with Last-Event-ID, %d ended by the server; not caught up %d; leaving clients that missed their target %d\n",
		s.opens.Load(), s.resumes.Load(), s.srvEnded.Load(), s.uncaught, s.retireMiss.Load())
	fmt.Fprintf(&b, "refused or failed opens: %v\n", sortedCounts(s.refused))
	fmt.Fprintf(&b, "resets by data: %v at %v\n", sortedCounts(s.resetWhy), s.resetAt)
	fmt.Fprintf(&b, "Redis restart at %v: Redis answering after %v, /readyz 200 after %v, first publish acknowledged after %v, first of those delivered after %v\n",
		killAt.Round(time.Second), up.Round(time.Millisecond), ready.Round(time.Millisecond), firstPublished.Round(time.Millisecond), firstDelivered.Round(time.Millisecond))
	fmt.Fprintf(&b, "server counters:\n")
	var keys []string
	for k := range after {
		if strings.HasPrefix(k, "ssebridge_") || k == "go_goroutines" || k == "process_open_fds" || k == "process_resident_memory_bytes" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if after[k] != 0 {
			fmt.Fprintf(&b, "  %s %v\n", k, after[k])
		}
	}
	t.Log(b.String())

	if s.total.lost != 0 || s.total.dup != 0 || s.total.disorder != 0 || s.total.foreign != 0 || s.total.mismatch != 0 {
		t.Errorf("lost %d, duplicated %d, out of order %d, foreign %d, mismatched %d: want none",
			s.total.lost, s.total.dup, s.total.disorder, s.total.foreign, s.total.mismatch)
	}
	if s.uncaught != 0 || s.retireMiss.Load() != 0 {
		t.Errorf("%d clients did not catch up, %d leaving clients did not see their last event", s.uncaught, s.retireMiss.Load())
	}
	if s.total.resets != 0 {
		t.Errorf("%d resets (%v at %v); want none: AOF keeps the history across the restart", s.total.resets, s.resetWhy, s.resetAt)
	}
	if s.problems > 0 {
		t.Errorf("%d problems (the first 30 are logged above)", s.problems)
	}
	if after["ssebridge_streams_open"] != 0 || after["go_goroutines"] > base["go_goroutines"]+10 || after["process_open_fds"] > base["process_open_fds"]+10 {
		t.Errorf("with every stream closed the server has %v streams, %v goroutines, %v fds; before the first: %v goroutines, %v fds",
			after["ssebridge_streams_open"], after["go_goroutines"], after["process_open_fds"], base["go_goroutines"], base["process_open_fds"])
	}
	s.checkGrowth()
}

// checkGrowth compares the last third of the run with its first (the
// warm-up): see RELIABILITY.md for the thresholds.
func (s *soak) checkGrowth() {
	t := s.t
	var warm, late []soakSample
	for _, x := range s.samples {
		switch {
		case x.at <= s.dur/3:
			warm = append(warm, x)
		case x.at >= s.dur*2/3 && x.at <= s.dur:
			late = append(late, x)
		}
	}
	if len(warm) == 0 || len(late) == 0 {
		t.Errorf("too few samples: %d in the warm-up, %d in the last third", len(warm), len(late))
		return
	}
	peak := func(xs []soakSample, f func(soakSample) int) int {
		m := 0
		for _, x := range xs {
			m = max(m, f(x))
		}
		return m
	}
	checks := []struct {
		what   string
		f      func(soakSample) int
		factor float64
		plus   int
	}{
		{"server goroutines", func(x soakSample) int { return x.srvGoroutines }, 1.1, 50},
		{"server open fds", func(x soakSample) int { return x.srvFDs }, 1.1, 20},
		{"server RSS KiB", func(x soakSample) int { return x.srvRSSKiB }, 1.25, 0},
		{"test goroutines", func(x soakSample) int { return x.testGoroutines }, 1.1, 50},
		{"test open fds", func(x soakSample) int { return x.testFDs }, 1.1, 20},
	}
	for _, c := range checks {
		w, l := peak(warm, c.f), peak(late, c.f)
		limit := int(float64(w)*c.factor) + c.plus
		t.Logf("growth: %s: warm-up max %d, last third max %d, limit %d", c.what, w, l, limit)
		if l > limit {
			t.Errorf("%s grew: last third's max %d over %d (warm-up max %d × %.2f + %d)", c.what, l, limit, w, c.factor, c.plus)
		}
	}
}

func sortedCounts(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return "{" + strings.Join(parts, "; ") + "}"
}
