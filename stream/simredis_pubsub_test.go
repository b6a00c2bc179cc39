package stream

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// The simulated Redis's pub/sub connection (simredis_test.go): the feed's
// Subscriber side, the commands Redis executes from it, its loss and
// reconnection, and the feed goroutine (Run) of the Broker.

// --- Subscriber (store.Feed) ---

func (r *simRedis) Subscribe(channels ...string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ch := range channels {
		r.wanted[ch] = true
	}
	if !r.conn.up {
		return errSimDown // the channels stay wanted: subscribed on reconnection
	}
	for _, ch := range channels {
		r.conn.out = append(r.conn.out, simCmd{kind: "subscribe", channel: ch})
	}
	return nil
}

func (r *simRedis) Unsubscribe(channels ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ch := range channels {
		delete(r.wanted, ch)
		if r.conn.up {
			r.conn.out = append(r.conn.out, simCmd{kind: "unsubscribe", channel: ch})
		}
	}
}

// Sync writes a PING when the scheduler runs it (so its place among the
// commands is the schedule's, not the Go scheduler's) and waits for its
// reply, which comes behind everything Redis sent before it.
func (r *simRedis) Sync(ctx context.Context) error {
	pong := make(chan error, 1)
	var err error
	who := simWhoOf(ctx)
	if cerr := r.call(ctx, "write PING", func() {
		if !r.conn.up {
			err = errSimDown
			return
		}
		r.conn.out = append(r.conn.out, simCmd{kind: "ping", pong: pong, who: who})
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}
	select {
	case err := <-pong:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// canon puts the commands written since the last quiescent point in a
// canonical order: goroutines that ran at once may have written them in
// any order. Only SUBSCRIBE and UNSUBSCRIBE are written by hub goroutines
// (a PING by the scheduler), and the hub writes one channel's commands
// serialised, so a stable sort by channel keeps every order that means
// something.
func (r *simRedis) canon() {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.conn.out
	start := r.conn.sorted
	for i := start; i <= len(out); i++ {
		if i == len(out) || out[i].kind == "ping" {
			slices.SortStableFunc(out[start:i], func(a, b simCmd) int { return strings.Compare(a.channel, b.channel) })
			start = i + 1
		}
	}
	r.conn.sorted = len(out)
}

// executeCmd is Redis executing the oldest command written on the pub/sub
// connection.
func (r *simRedis) executeCmd() {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.conn.out[0]
	r.conn.out = r.conn.out[1:]
	r.conn.sorted = max(0, r.conn.sorted-1)
	switch c.kind {
	case "subscribe":
		r.conn.subscribed[c.channel] = true
		r.log.tick++
		r.log.subscribed[c.channel] = append(r.log.subscribed[c.channel], r.log.tick)
	case "unsubscribe":
		delete(r.conn.subscribed, c.channel)
	case "ping":
		r.conn.in = append(r.conn.in, simIn{pong: c.pong, who: c.who, desc: "PONG for " + c.who})
	}
}

// lose drops the pub/sub connection: what was on the way is lost, Redis
// forgets the subscriptions, and Syncs waiting fail.
func (r *simRedis) lose() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conn.out {
		if c.pong != nil {
			c.pong <- errSimDown
		}
	}
	for _, in := range r.conn.in {
		if in.pong != nil {
			in.pong <- errSimDown
		}
		if in.channel == wire.ControlChannel {
			r.log.lostControl(in.msg.Body)
		}
	}
	r.conn = simConn{subscribed: map[string]bool{}}
}

// reconnect makes a new pub/sub connection subscribed to the wanted set
// (the subscription and its confirmation taken as one step).
func (r *simRedis) reconnect() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.conn = simConn{up: true, subscribed: maps.Clone(r.wanted)}
}

// Run is the simulated broker's feed goroutine (Broker): it does what the
// scheduler hands it, in order, and waits for the next.
func (r *simRedis) Run(ctx context.Context, ev Events) {
	for {
		r.idle()
		select {
		case f := <-r.feed:
			f(ctx, ev)
		case <-ctx.Done():
			return
		}
	}
}

// recover is what store.Redis does once its feed is connected (the first
// time too): the gap recovered, then the hub told.
func (r *simRedis) recover(ctx context.Context, ev Events) {
	upTo, n := RecoverLog(ctx, r, ev, defaultRedisTimeout, slog.New(slog.DiscardHandler))
	ev.Reconnected(ctx, upTo, n)
}

// Connected reports the pub/sub connection up.
func (r *simRedis) Connected() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conn.up
}

// Lag is none: the simulation has no clock for the feed to be behind.
func (r *simRedis) Lag() time.Duration { return 0 }

var _ Broker = (*simRedis)(nil)
