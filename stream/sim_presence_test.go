package stream

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Presence in the simulation: the hub's Presence counts what its
// membership does, and writes into simPresence, which does the arithmetic
// of store/presence.lua for one instance (its share is the total) and
// records the joins and leaves it would publish. The scheduler flushes
// at random moments, sometimes long enough after everything that every
// departure's grace and every room's interval have passed ("settled"):
// then the store must hold exactly the membership, stream for stream. Writes
// fail (not made, or made with their replies lost), and the instance is
// swept (its share removed) at random, as when Redis is away, a link
// drops a reply, or the others took the instance for dead; the beat that
// would have told it may lose its reply too. At the end every join has its leave
// in order, and what is left matches the membership.

const (
	simGrace        = 5 * time.Second
	simRoomInterval = 250 * time.Millisecond
)

// simPresence is the presence store of the simulation.
type simPresence struct {
	shares   map[shareKey]int
	events   map[shareKey][]string // "join", "leave", per room and user, in order
	fail     bool                  // writes fail (Redis away)
	lost     bool                  // writes are made, but their replies lost
	swept    bool                  // the next beat says so
	lostBeat bool                  // the next beat is made, its reply lost
}

func newSimPresence() *simPresence {
	return &simPresence{shares: map[shareKey]int{}, events: map[shareKey][]string{}}
}

func (p *simPresence) Write(_ context.Context, b PresenceBatch) error {
	if p.fail {
		return errors.New("simulated: redis away")
	}
	for _, sh := range b.Shares {
		p.set(shareKey{sh.Room, sh.User}, max(sh.Streams, 0))
	}
	if p.lost {
		return errors.New("simulated: the reply was lost")
	}
	return nil
}

// set is the script's arithmetic: a room's join when a user's count
// leaves zero, its leave when it comes back to zero.
func (p *simPresence) set(k shareKey, n int) {
	was := p.shares[k]
	if k.room != "" && was == 0 && n > 0 {
		p.events[k] = append(p.events[k], "join")
	}
	if k.room != "" && was > 0 && n == 0 {
		p.events[k] = append(p.events[k], "leave")
	}
	if n == 0 {
		delete(p.shares, k)
	} else {
		p.shares[k] = n
	}
}

func (p *simPresence) Beat(context.Context) (bool, error) {
	swept := p.swept
	p.swept = false
	if p.lostBeat {
		p.lostBeat = false
		return false, errors.New("simulated: the beat's reply was lost")
	}
	return swept, nil
}

func (p *simPresence) Sweep(context.Context, time.Duration, time.Duration, func(string) bool) (int, error) {
	return 0, nil
}

func (p *simPresence) Retire(context.Context, time.Duration, time.Duration) error {
	return nil
}

// sweep removes the instance's whole share, as another instance does
// when it took this one for dead.
func (p *simPresence) sweep() {
	for _, k := range slices.Collect(maps.Keys(p.shares)) {
		p.set(k, 0)
	}
	p.swept = true
}

// presenceAction is one of the workload's presence actions.
func (s *sim) presenceAction() string {
	switch s.rng.IntN(8) {
	case 0:
		s.ps.fail = !s.ps.fail
		return fmt.Sprintf("presence writes fail: %v", s.ps.fail)
	case 6:
		s.ps.lost = !s.ps.lost
		return fmt.Sprintf("presence writes are made but their replies lost: %v", s.ps.lost)
	case 1:
		s.ps.sweep()
		s.pstale = true
		s.ps.lostBeat = s.rng.IntN(2) == 0
		return fmt.Sprintf("presence: the instance is swept; its next beat's reply lost: %v", s.ps.lostBeat)
	case 2:
		s.p.beat(s.ctx)
		if !s.p.beatFailed {
			s.pstale = false
		}
		return "presence: a beat"
	}
	return s.presenceFlush(s.rng.IntN(2) == 0)
}

// presenceClock moves presence's clock on by at least d (never back,
// whatever the bubble's clock did) and returns it.
func (s *sim) presenceClock(d time.Duration) time.Time {
	t := time.Now()
	if s.plast.After(t) {
		t = s.plast
	}
	s.plast = t.Add(d)
	return s.plast
}

// presenceFlush flushes presence; settled, after every grace and room
// interval has passed, and checks the store against the membership.
func (s *sim) presenceFlush(settled bool) string {
	d := 100 * time.Millisecond
	if settled {
		d = simGrace + simRoomInterval + time.Second
	}
	s.p.flush(s.ctx, s.presenceClock(d))
	if !settled || s.ps.fail || s.ps.lost || s.pstale {
		return fmt.Sprintf("presence flush (+%v)", d)
	}
	if diff := s.presenceDiff(); diff != "" {
		s.presenceFailures = append(s.presenceFailures, "presence after a settled flush: "+diff)
	}
	return fmt.Sprintf("presence flush (+%v), checked", d)
}

// presenceDiff compares the store with the hub's membership: confirmed
// streams per user and room ("" for the user's own channel).
func (s *sim) presenceDiff() string {
	want := map[shareKey]int{}
	for i := range s.h.members.shards {
		sh := &s.h.members.shards[i]
		sh.mu.RLock()
		for channel, set := range sh.subs {
			streams := slices.Collect(maps.Keys(set.many))
			if set.one != nil {
				streams = append(streams, set.one)
			}
			for _, st := range streams {
				st.members.Lock()
				counted := st.flags&flagCounted != 0 // from its confirmation on
				st.members.Unlock()
				if k, ok := keyOf(channel, st.User); ok && counted {
					want[k]++
				}
			}
		}
		sh.mu.RUnlock()
	}
	if maps.Equal(want, s.ps.shares) {
		return ""
	}
	return fmt.Sprintf("store %v, membership %v", s.ps.shares, want)
}

// checkPresence is the end of a run: a last settled flush with writes
// that go through, then the store against the membership, and every
// room's events for a user alternating, join first.
func (s *sim) checkPresence() []string {
	s.ps.fail, s.ps.lost = false, false
	for s.pstale {
		s.p.beat(s.ctx)
		s.pstale = s.p.beatFailed
	}
	s.presenceFlush(true)
	failures := s.presenceFailures
	for k, evs := range s.ps.events {
		for i, e := range evs {
			if want := []string{"join", "leave"}[i%2]; e != want {
				failures = append(failures, fmt.Sprintf("presence events of %s in %s: %s", k.user, k.room, strings.Join(evs, " ")))
				break
			}
		}
		if open := len(evs)%2 == 1; open != (s.ps.shares[k] > 0) {
			failures = append(failures, fmt.Sprintf("presence of %s in %s: events %v, %d streams left", k.user, k.room, evs, s.ps.shares[k]))
		}
	}
	return failures
}
