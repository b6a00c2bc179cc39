package e2e

// The soak's clients: each slot runs chains of streams that open, read
// for a while, close and resume with their last id, or leave for good.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ssebridge/ssebridge/internal/ssetest"
	"github.com/ssebridge/ssebridge/wire"
)

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

func soakRoomsOf(u int) []int {
	rooms := make([]int, soakRoomsPerUser)
	for k := range rooms {
		rooms[k] = (u + k*13) % soakRooms
	}
	return rooms
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
