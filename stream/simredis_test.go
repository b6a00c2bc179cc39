package stream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

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

// --- publish.lua ---

// nextIDLocked is publish.lua's id: the clock's ms, or a count within the
// ms; a new epoch when the cursor key is gone.
func (r *simRedis) nextIDLocked() wire.Cursor {
	c := r.data.cursor
	if c.IsZero() {
		r.epochs++
		c = wire.Cursor{Epoch: fmt.Sprintf("e%d", r.epochs)}
	}
	if r.clock > c.MS {
		c.MS, c.N = r.clock, 0
	} else {
		c.N++
	}
	r.data.cursor = c
	return c
}

// publishLocked is PUBLISH: the message reaches the instance if its
// connection has the channel subscribed now.
func (r *simRedis) publishLocked(channel string, m wire.Message, desc string) {
	if r.conn.up && r.conn.subscribed[channel] {
		r.conn.in = append(r.conn.in, simIn{channel: channel, msg: m, desc: desc})
	}
}

// durableLocked is publish.lua with an envelope: XADD, trim to maxlen
// (remembering the newest id trimmed), PUBLISH with the cursor.
func (r *simRedis) durableLocked(channel, env string) wire.Cursor {
	id := r.nextIDLocked()
	h := append(r.data.hist[channel], simEntry{id, env})
	if over := len(h) - r.maxlen; over > 0 {
		r.data.trimmed[channel] = h[over-1].id
		h = slices.Clone(h[over:])
		r.log.trims++
	}
	r.data.hist[channel] = h
	r.publishLocked(channel, wire.Message{Cursor: id, Body: []byte(env)}, "durable "+env+" on "+channel)
	return id
}

// --- History ---

func (r *simRedis) Position(ctx context.Context) (wire.Cursor, error) {
	var c wire.Cursor
	who := simWhoOf(ctx)
	err := r.call(ctx, "POSITION", func() {
		c = r.nextIDLocked()
		r.log.positions[who] = c
	})
	return c, err
}

func (r *simRedis) PublishBareID(ctx context.Context, channel string) error {
	return r.call(ctx, "MARK "+channel, func() {
		id := r.nextIDLocked()
		r.log.marks = append(r.log.marks, id)
		r.publishLocked(channel, wire.Message{Cursor: id}, "mark "+id.String()+" on "+channel)
	})
}

func (r *simRedis) Read(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, maxBytes int) (wire.Page, error) {
	if len(after) != len(channels) {
		return wire.Page{}, fmt.Errorf("reading history: %d cursors for %d channels", len(after), len(channels))
	}
	var p wire.Page
	desc := fmt.Sprintf("READ %s until %v", simPairs(channels, after), until)
	who := simWhoOf(ctx)
	err := r.call(ctx, desc, func() {
		p = r.readLocked(channels, after, until, maxBytes)
		r.log.tick++
		rd := simRead{tick: r.log.tick}
		for _, ch := range channels {
			if !r.conn.subscribed[ch] {
				rd.unsubscribed = append(rd.unsubscribed, ch)
			}
		}
		r.log.reads[who] = append(r.log.reads[who], rd)
	})
	return p, err
}

// readLocked is read.lua plus store.History.Read's checks.
func (r *simRedis) readLocked(channels []string, after []wire.Cursor, until wire.Cursor, maxBytes int) wire.Page {
	if r.data.cursor.IsZero() {
		// Redis lost its data: a new epoch (store calls Position).
		return wire.Page{Position: r.nextIDLocked(), Reset: wire.ResetEpoch}
	}
	position := r.data.cursor
	if !until.IsZero() && until.Epoch != position.Epoch {
		return wire.Page{Position: position, Reset: wire.ResetEpoch}
	}
	for i, a := range after {
		switch {
		case a.Epoch != position.Epoch:
			return wire.Page{Position: position, Reset: wire.ResetEpoch}
		case position.Before(a):
			return wire.Page{Position: position, Reset: wire.ResetFuture}
		}
		if t, ok := r.data.trimmed[channels[i]]; ok && simEntryBefore(a, t) {
			return wire.Page{Position: position, Reset: wire.ResetTrimmed}
		}
	}
	bound := position
	if !until.IsZero() {
		bound = until
	}
	// Merge the channels' entries in (after, bound], in id order.
	var evs []wire.Durable
	for i, ch := range channels {
		for _, e := range r.data.hist[ch] {
			if simEntryBefore(after[i], e.id) && !simEntryBefore(bound, e.id) {
				evs = append(evs, wire.Durable{Cursor: wire.Cursor{Epoch: position.Epoch, MS: e.id.MS, N: e.id.N}, Channel: ch, Envelope: []byte(e.env)})
			}
		}
	}
	slices.SortFunc(evs, func(a, b wire.Durable) int {
		return cmp.Or(cmp.Compare(a.Cursor.MS, b.Cursor.MS), cmp.Compare(a.Cursor.N, b.Cursor.N))
	})
	p := wire.Page{Position: bound}
	bytes := 0
	for i, ev := range evs {
		if i >= r.pageSize || bytes >= maxBytes {
			p.More = true
			left := map[string]bool{}
			for _, rest := range evs[i:] {
				left[rest.Channel] = true
			}
			for _, ch := range channels {
				if !left[ch] {
					p.Finished = append(p.Finished, ch)
				}
			}
			break
		}
		p.Events = append(p.Events, ev)
		bytes += len(ev.Envelope)
	}
	return p
}

// simPairs describes channels and their cursors, sorted: the hub's lists
// may come from maps (Recover's), and a description must not depend on
// their order.
func simPairs(channels []string, after []wire.Cursor) string {
	pairs := make([]string, len(channels))
	for i, ch := range channels {
		pairs[i] = ch + ">" + after[i].String()
	}
	slices.Sort(pairs)
	return "[" + strings.Join(pairs, " ") + "]"
}

// simEntryBefore compares entry ids (ms, n), as XRANGE does: without the
// epoch.
func simEntryBefore(a, b wire.Cursor) bool {
	return a.MS < b.MS || a.MS == b.MS && a.N < b.N
}

func (r *simRedis) Active(ctx context.Context, channels []string, after wire.Cursor) ([]string, error) {
	var out []string
	chs := slices.Sorted(slices.Values(channels)) // the hub's list comes from maps: sorted for a stable description
	err := r.call(ctx, fmt.Sprintf("ACTIVE %v after %v", chs, after), func() {
		for _, ch := range channels {
			for _, e := range r.data.hist[ch] {
				if simEntryBefore(after, e.id) {
					out = append(out, ch)
					break
				}
			}
		}
	})
	return out, err
}

func (r *simRedis) Size(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, overhead, limit int) (int, error) {
	n := 0
	err := r.call(ctx, fmt.Sprintf("SIZE %s until %v", simPairs(channels, after), until), func() {
		for i, ch := range channels {
			for _, e := range r.data.hist[ch] {
				if n > limit {
					return
				}
				if simEntryBefore(after[i], e.id) && !simEntryBefore(until, e.id) {
					n += len(e.env) + overhead
				}
			}
		}
	})
	return n, err
}

// --- Sessions ---

func (r *simRedis) LookupMany(ctx context.Context, tokens []string) ([]wire.Session, []error, error) {
	found := make([]wire.Session, len(tokens))
	errs := make([]error, len(tokens))
	sorted := slices.Sorted(slices.Values(tokens))
	err := r.call(ctx, fmt.Sprintf("GET sessions %v", sorted), func() {
		for i, t := range tokens {
			if s, ok := r.data.sessions[t]; ok {
				found[i] = simCopySession(s)
			} else {
				errs[i] = wire.ErrNoSession
			}
		}
		r.log.tick++
		r.log.lookups[simWhoOf(ctx)] = r.log.tick
	})
	return found, errs, err
}

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
