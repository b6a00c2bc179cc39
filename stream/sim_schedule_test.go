package stream

import (
	"context"
	"slices"
	"strings"

	"github.com/ssebridge/ssebridge/wire"
)

// The simulation's scheduler: at each quiescent point it lists the steps
// that may happen next (a Redis operation or its reply, a pub/sub command
// or message, a reconnection, a workload action) and sim.run picks one.

type simStep struct {
	desc string
	run  func() string
}

// enabled lists what may happen next, sorted: the order of Go's maps or
// goroutines never decides.
func (s *sim) enabled() []simStep {
	var out []simStep
	r := s.r
	r.mu.Lock()
	for _, op := range r.ops {
		if !op.executed {
			out = append(out, simStep{"op " + op.desc, func() string {
				r.mu.Lock()
				defer r.mu.Unlock()
				op.run()
				op.executed = true
				return "redis runs " + op.desc
			}})
			continue
		}
		out = append(out, simStep{"reply " + op.desc, func() string {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.ops = slices.DeleteFunc(r.ops, func(o *simOp) bool { return o == op })
			close(op.done)
			return "reply reaches " + op.desc
		}})
	}
	if r.conn.up && len(r.conn.out) > 0 {
		out = append(out, simStep{"pubsub 1 " + r.conn.out[0].String(), func() string {
			d := r.conn.out[0].String()
			r.executeCmd()
			return "redis executes " + d
		}})
	}
	s.mu.Lock()
	idle := s.feedIdle
	s.mu.Unlock()
	if r.conn.up && len(r.conn.in) > 0 && idle {
		out = append(out, simStep{"pubsub 2 " + r.conn.in[0].desc, s.deliver})
	}
	if !r.conn.up && idle {
		out = append(out, simStep{"pubsub 3 reconnect", s.reconnect})
	}
	r.mu.Unlock()
	if s.actions < s.cfg.budget {
		out = append(out, simStep{"workload", s.workload})
	}
	slices.SortFunc(out, func(a, b simStep) int { return strings.Compare(a.desc, b.desc) })
	return out
}

// deliver hands the oldest message of the pub/sub connection to the feed
// goroutine (a PING's reply wakes the Sync that wrote it).
func (s *sim) deliver() string {
	r := s.r
	r.mu.Lock()
	in := r.conn.in[0]
	r.conn.in = r.conn.in[1:]
	r.log.tick++
	if in.channel == wire.ControlChannel {
		for _, c := range r.log.controls {
			if c.body == string(in.msg.Body) {
				c.delivered = r.log.tick
				if c.c.Op == wire.OpJoin {
					s.noteJoin(c)
				}
			}
		}
	}
	if in.pong == nil && in.msg.Durable() {
		r.log.inOrder = r.log.tick
	}
	r.mu.Unlock()
	if in.pong != nil {
		in.pong <- nil
		return "instance reads " + in.desc
	}
	s.mu.Lock()
	s.feedIdle = false
	s.mu.Unlock()
	s.r.feed <- func(_ context.Context, ev Events) { ev.Publish(in.channel, in.msg, nil) }
	return "feed delivers " + in.desc
}

// noteJoin records a join reaching the hub for every stream of its user
// that took its ticket: Open applies it to those still opening.
func (s *sim) noteJoin(c *simControl) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rec := range s.streams {
		if rec.user == c.c.User && rec.ticket && !rec.served {
			blind := len(s.r.log.restarts) > 0 && s.r.log.inOrder < s.r.log.restarts[len(s.r.log.restarts)-1]
			rec.joins = append(rec.joins, simJoin{room: c.c.Room, tick: c.tick, since: c.c.Since, floor: rec.lastPos, applied: c.delivered, blind: blind})
		}
	}
}

// reconnect is the feed's connection coming back: subscribed to its set,
// then RecoverLog on the feed goroutine before any later message.
func (s *sim) reconnect() string {
	s.r.reconnect()
	s.mu.Lock()
	s.feedIdle = false
	s.mu.Unlock()
	s.r.feed <- s.r.recover
	return "feed reconnects, subscribed again; Recover"
}

// observe records, at a quiescent point, which rooms the hub has each
// stream in.
func (s *sim) observe() {
	s.r.mu.Lock()
	tick := s.r.log.tick
	s.r.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rec := range s.streams {
		if rec.s == nil || rec.served {
			continue
		}
		for _, c := range rec.s.channelList() {
			if room, ok := wire.RoomOf(c); ok {
				rec.lastHas[room] = tick
			}
		}
	}
}
