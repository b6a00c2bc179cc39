package e2e

// The soak's books: every block a chain receives is checked against the
// publishers' logs as it arrives, and what a chain was owed and did not get
// is counted lost.

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/ssebridge/ssebridge/internal/ssetest"
	"github.com/ssebridge/ssebridge/wire"
)

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

// deferredCheck is a failed publish that a client did not get: lost if it
// was published after the client's floor and before the last event it got
// (a client that left before such an event could reach it was not owed it).
type deferredCheck struct {
	chain       int
	event       [2]int
	floor, last wire.Cursor
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
