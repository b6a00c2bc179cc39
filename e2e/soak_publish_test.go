package e2e

// The soak's publishers, their logs of attempts, and the resolver that
// finds out whether a failed publish was published all the same.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

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

// ends returns how many attempts each publisher has made.
func (s *soak) ends() (n [soakPublishers]int) {
	for p := range s.logs {
		n[p] = int(s.logs[p].n.Load())
	}
	return n
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

func (s *soak) published() int {
	n := 0
	for _, k := range s.ends() {
		n += k
	}
	return n
}
