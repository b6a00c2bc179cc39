package stream

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/ssebridge/ssebridge/wire"
)

// The simulated Redis of the simulation (sim_test.go): one Redis in memory,
// implementing what the hub needs of store.Feed (Subscriber), store.History
// (History) and store.Sessions (Sessions), with the semantics of
// store/publish.lua, store/read.lua and store/history.go. Nothing in it
// happens by itself: every asynchronous step is an item the scheduler
// picks.
//
//   - A blocking call from a hub goroutine (Position, Read, LookupMany, the
//     PING of Sync...) registers a simOp and waits; the scheduler executes
//     it against the model as it is at that moment, and later delivers its
//     reply: the caller wakes with the answer.
//   - The pub/sub connection has two FIFO queues: commands written and not
//     yet executed by Redis (out), and what Redis sent and the instance has
//     not read yet (in: messages and PING replies). A SUBSCRIBE takes effect
//     when the scheduler executes it; a message reaches the hub when the
//     scheduler delivers it to the feed goroutine.
//   - A lost connection drops both queues and the subscriptions; a
//     reconnection subscribes the wanted set again and the feed recovers
//     (RecoverLog) before delivering anything more, as store/feed.go does.
//   - A restart with data loss goes back to the last snapshot (persist):
//     the position goes back, or, with no snapshot, a new epoch begins.

// errSimDown is the feed's answer while the pub/sub connection is down.
var errSimDown = errors.New("sim: redis pub/sub connection lost")

// simWhoKey labels the context of a blocking call with the goroutine it
// comes from, so that a pending operation's description (and so its place
// in the scheduler's sorted list) never depends on the order goroutines
// happened to run in.
type simWhoKey struct{}

func simWith(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, simWhoKey{}, who)
}

func simWhoOf(ctx context.Context) string {
	if w, ok := ctx.Value(simWhoKey{}).(string); ok {
		return w
	}
	return "?"
}

// simOp is a blocking call waiting for the scheduler: Redis executes it
// (one step), and its reply reaches the caller (another step), so that
// whatever happens in between (a session rewritten after a recheck read
// it, an event published after a page's bound) is a schedule the
// scheduler can pick.
type simOp struct {
	desc     string
	run      func() // executes against the model, with simRedis.mu held
	executed bool
	done     chan struct{}
}

type simEntry struct {
	id  wire.Cursor
	env string
}

// simData is what Redis stores (and what a snapshot copies).
type simData struct {
	cursor   wire.Cursor // <prefix>cursor; zero: no key
	hist     map[string][]simEntry
	trimmed  map[string]wire.Cursor
	sessions map[string]wire.Session
}

func newSimData() *simData {
	return &simData{hist: map[string][]simEntry{}, trimmed: map[string]wire.Cursor{}, sessions: map[string]wire.Session{}}
}

func (d *simData) clone() *simData {
	c := &simData{cursor: d.cursor, hist: map[string][]simEntry{}, trimmed: maps.Clone(d.trimmed), sessions: map[string]wire.Session{}}
	for ch, es := range d.hist {
		c.hist[ch] = slices.Clone(es)
	}
	for t, s := range d.sessions {
		c.sessions[t] = simCopySession(s)
	}
	return c
}

func simCopySession(s wire.Session) wire.Session {
	return wire.Session{User: s.User, Rooms: slices.Clone(s.Rooms), Granted: maps.Clone(s.Granted)}
}

// simCmd is a command written on the pub/sub connection.
type simCmd struct {
	kind    string // subscribe, unsubscribe, ping
	channel string
	pong    chan error // ping
	who     string     // ping
}

func (c simCmd) String() string {
	if c.kind == "ping" {
		return "PING for " + c.who
	}
	return strings.ToUpper(c.kind) + " " + c.channel
}

// simIn is what Redis sent on the pub/sub connection.
type simIn struct {
	channel string
	msg     wire.Message
	pong    chan error
	who     string
	desc    string
}

type simConn struct {
	up         bool
	subscribed map[string]bool
	out        []simCmd
	sorted     int // out[:sorted] is in canonical order (see canon)
	in         []simIn
}

// simRedis is the simulated Redis. mu guards everything; the hub's
// goroutines and the scheduler both take it, never across a wait.
type simRedis struct {
	mu       sync.Mutex
	data     *simData
	snapshot *simData // nil: nothing persisted
	epochs   int      // epochs made so far: a new one is "e<n+1>"
	clock    uint64   // Redis's clock, in ms
	maxlen   int      // HISTORY_MAXLEN
	pageSize int      // events per page of Read (store's pageEvents, small here to make pages)
	conn     simConn
	wanted   map[string]bool // the feed's channel set, resubscribed on reconnection
	ops      []*simOp
	log      *simLog // what the checker needs to know, kept by the model

	// feed is what the feed goroutine (Run) does next, as the scheduler
	// picks it; idle, set before Run, is told each time Run waits for it.
	feed chan func(ctx context.Context, ev Events)
	idle func()
}

func newSimRedis(maxlen, pageSize int, log *simLog) *simRedis {
	return &simRedis{
		data: newSimData(), clock: 1000, maxlen: maxlen, pageSize: pageSize,
		conn:   simConn{up: true, subscribed: map[string]bool{}},
		wanted: map[string]bool{}, log: log,
		feed: make(chan func(context.Context, Events)),
	}
}

// call registers a blocking operation and waits for the scheduler to run
// it, or for ctx to end (the op is then withdrawn).
func (r *simRedis) call(ctx context.Context, what string, run func()) error {
	op := &simOp{desc: simWhoOf(ctx) + ": " + what, run: run, done: make(chan struct{})}
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
	select {
	case <-op.done:
		return nil
	case <-ctx.Done():
		r.mu.Lock()
		defer r.mu.Unlock()
		if i := slices.Index(r.ops, op); i >= 0 {
			r.ops = slices.Delete(r.ops, i, i+1)
			return ctx.Err()
		}
		<-op.done // the scheduler ran it meanwhile (cannot happen while quiescent, but cheap)
		return nil
	}
}

// restart is Redis restarting: the connection is lost and the data goes
// back to the last snapshot (none: everything lost, a new epoch follows);
// the clock has moved on meanwhile.
func (r *simRedis) restart() {
	r.lose()
	r.mu.Lock()
	defer r.mu.Unlock()
	before := r.data
	if r.snapshot != nil {
		r.data = r.snapshot.clone()
	} else {
		r.data = newSimData()
	}
	r.clock += 1000
	r.log.tick++
	r.log.restarts = append(r.log.restarts, r.log.tick)
	// Sessions go back too (a room removed since the snapshot is listed
	// again): the checker must know the versions Redis serves.
	tokens := slices.Sorted(maps.Keys(before.sessions))
	for t := range r.data.sessions {
		if _, ok := before.sessions[t]; !ok {
			tokens = append(tokens, t)
		}
	}
	for _, t := range tokens {
		var v *wire.Session
		if sess, ok := r.data.sessions[t]; ok {
			c := simCopySession(sess)
			v = &c
		}
		r.log.sessions[t] = append(r.log.sessions[t], simVersion{tick: r.log.tick, sess: v})
	}
	// Events no longer in history were lost (those trimmed before the
	// snapshot are not: they were delivered or reset for).
	for _, e := range r.log.events {
		if !e.durable || e.lost {
			continue
		}
		if !r.heldLocked(e) {
			e.lost, e.lostAt = true, r.log.tick
		}
	}
}

// heldLocked reports whether e survives in the data: in its channel's
// history, or trimmed (older than the channel's trimmed id) in the same
// epoch.
func (r *simRedis) heldLocked(e *simEvent) bool {
	c := r.data.cursor
	if c.IsZero() || c.Epoch != e.id.Epoch || simEntryBefore(c, e.id) {
		return false
	}
	for _, h := range r.data.hist[e.channel] {
		if h.id == e.id {
			return true
		}
	}
	t, ok := r.data.trimmed[e.channel]
	return ok && !simEntryBefore(t, e.id)
}

func (r *simRedis) persist() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snapshot = r.data.clone()
}
