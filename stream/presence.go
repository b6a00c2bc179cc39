package stream

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/internal/ratelog"
	"github.com/ssebridge/ssebridge/wire"
)

// PresenceStore keeps every instance's share of room presence:
// store.Presence, on one Redis, Sentinel or Redis Cluster.
type PresenceStore interface {
	// Write sets the shares a batch names (absolute: written twice, it
	// changes nothing), publishing the joins and leaves that result.
	Write(ctx context.Context, b PresenceBatch) error
	// Beat says this instance is alive; rewrite reports that its share
	// was removed, or is being removed (others took it for dead, or the
	// store lost it), and is to be written again.
	Beat(ctx context.Context) (rewrite bool, err error)
	// Sweep removes the share of every other instance silent for
	// silence, each claimed for hold, and returns how many.
	Sweep(ctx context.Context, silence, hold time.Duration, events func(room string) bool) (int, error)
	// Retire makes this instance's share go in grace (a clean shutdown).
	Retire(ctx context.Context, silence, grace time.Duration) error
}

// PresenceShare is this instance's streams of User in Room (Room "": all
// its streams of the user).
type PresenceShare struct {
	Room    string
	User    string
	Streams int
}

// PresenceBatch is one write of this instance's shares. Entered and Left
// name what its share began or ended in ("r"+room, "u"+user): the index a
// sweep of the instance goes through.
type PresenceBatch struct {
	Shares  []PresenceShare
	Entered []string
	Left    []string
	// Events says whether a room's joins and leaves are published.
	Events func(room string) bool
}

// PresenceOptions are presence's settings.
type PresenceOptions struct {
	Events []string      // PRESENCE_EVENTS: room-name prefixes whose rooms get presence events; "*": all
	Grace  time.Duration // PRESENCE_GRACE: a stream that comes back within it was never gone
	TTL    time.Duration // PRESENCE_TTL: a dead instance's streams leave every answer within it
	Flush  time.Duration // PRESENCE_FLUSH: how long changes gather before they are written
	// RoomInterval is the least time between two writes of one room's
	// presence by this instance (PRESENCE_ROOM_INTERVAL): a room in a storm
	// of arrivals and departures is written at that pace, what changed
	// meanwhile in one write, and what came and went meanwhile not at all.
	RoomInterval time.Duration
}

// Presence counts this instance's streams per room and user, and writes
// the counts into its PresenceStore when they change: after the grace for
// a departure, at once (within Flush) for an arrival. The hub tells it of
// every stream that gains or loses a room or its user's channel.
type Presence struct {
	store   PresenceStore
	opts    PresenceOptions
	log     ratelog.Logger // a failure repeats every flush while Redis is away: a line a minute
	metrics *PresenceMetrics

	mu sync.Mutex
	// An idle stream is held by the thousand: a share is a map value, not
	// a pointer, and the index below counts by entry, not by a string made
	// for it.
	shares  map[shareKey]share
	dirty   map[shareKey]struct{}
	held    map[entry]int        // shares written above zero, per entry of the index
	written map[string]time.Time // room -> when its presence was last written
	left    []entry              // entries whose share ended, for the next batch's Left

	beaten atomic.Bool // a beat went through: before, nothing is written (a crash would leave it unswept)
	// The beat's state, its goroutine's alone (beats).
	beatFailed   bool      // the last beat failed: its reply may have been lost, and with it a sweep's news
	rewriteAgain bool      // swept: write the share again at the next beat too (a sweep may still have been running)
	steadySince  time.Time // since when every beat went through; a sweep needs silence of it
}

type shareKey struct{ room, user string }

// entry is one entry of the shares index: a room (user "") or a user
// (room ""); named in the store "r"+room, "u"+user.
type entry shareKey

func (e entry) String() string {
	if e.user == "" {
		return "r" + e.room
	}
	return "u" + e.user
}

// share is this instance's streams of one user in one room.
type share struct {
	live    int32       // streams open now
	written int32       // what the store was last told
	unknown bool        // that write may not have been taken: write again
	leaving []time.Time // streams gone, each until its grace ends
}

// NewPresence returns presence kept in store. Run writes it.
func NewPresence(store PresenceStore, opts PresenceOptions, log *slog.Logger, m *PresenceMetrics) *Presence {
	if opts.Flush <= 0 {
		opts.Flush = 100 * time.Millisecond
	}
	if opts.TTL <= 0 {
		opts.TTL = 15 * time.Second
	}
	return &Presence{
		store: store, opts: opts, metrics: m,
		log:     ratelog.Logger{Log: log, Limit: ratelog.New(time.Minute, nil)},
		shares:  map[shareKey]share{},
		dirty:   map[shareKey]struct{}{},
		held:    map[entry]int{},
		written: map[string]time.Time{},
	}
}

// keyOf is the share a channel counts in: a room's, or the user's own
// channel's (room ""); ok is false for any other channel.
func keyOf(channel, user string) (k shareKey, ok bool) {
	if room, isRoom := wire.RoomOf(channel); isRoom {
		return shareKey{room, user}, true
	}
	return shareKey{"", user}, channel == wire.UserChannel(user)
}

// arrive counts a stream of user that gained channel. Within a departure's
// grace it takes that departure's place: nothing changes.
func (p *Presence) arrive(channel, user string) {
	k, ok := keyOf(channel, user)
	if !ok {
		return
	}
	p.mu.Lock()
	sh := p.shares[k]
	sh.live++
	if n := len(sh.leaving); n > 0 {
		sh.leaving = sh.leaving[:n-1]
	}
	p.shares[k] = sh
	p.dirty[k] = struct{}{}
	p.mu.Unlock()
}

// depart counts a stream of user that lost channel: it stays counted until
// the grace ends.
func (p *Presence) depart(channel, user string, now time.Time) {
	k, ok := keyOf(channel, user)
	if !ok {
		return
	}
	p.mu.Lock()
	if sh, ok := p.shares[k]; ok && sh.live > 0 {
		sh.live--
		sh.leaving = append(sh.leaving, now.Add(p.opts.Grace))
		p.shares[k] = sh
		p.dirty[k] = struct{}{}
	}
	p.mu.Unlock()
}

// Events says whether room gets presence events (PRESENCE_EVENTS).
func (p *Presence) Events(room string) bool {
	for _, prefix := range p.opts.Events {
		if prefix == "*" || strings.HasPrefix(room, prefix) {
			return true
		}
	}
	return false
}

// Run writes presence until ctx ends: changes every Flush, a beat and a
// sweep of dead instances every TTL/3. At the end it retires this
// instance: its share goes once the grace has passed, unless its streams
// came back elsewhere.
func (p *Presence) Run(ctx context.Context) {
	// The beats on a goroutine of their own: a sweep of a large room
	// must not hold up the flushes.
	var beats sync.WaitGroup
	beats.Go(func() { p.beats(ctx) })
	flush := time.NewTicker(p.opts.Flush)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			beats.Wait()
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := p.store.Retire(rctx, p.silence(), p.opts.Grace); err != nil {
				p.log.Log.Warn("presence: this instance could not retire; its share goes within PRESENCE_TTL", "err", err)
			}
			return
		case <-flush.C:
			p.flush(ctx, time.Now())
		}
	}
}

// beats beats every TTL/3 until ctx ends.
func (p *Presence) beats(ctx context.Context) {
	t := time.NewTicker(p.opts.TTL / 3)
	defer t.Stop()
	for p.beat(ctx); ; p.beat(ctx) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// silence is how long an instance is silent before it is taken for dead:
// two beats missed. A crashed instance's share so goes within
// PRESENCE_TTL: its last beat at most TTL/3 before the crash, taken for
// dead 2TTL/3 after that beat, swept at the next sweep, TTL/3 at most later.
func (p *Presence) silence() time.Duration { return 2 * p.opts.TTL / 3 }

// beat tells the store this instance is alive, writes its whole share
// again when it must, and sweeps dead instances, but only once its own
// beats have gone through for silence: after an outage of Redis every
// instance's last beat is old, and the first back would sweep them all.
func (p *Presence) beat(ctx context.Context) {
	bctx, cancel := context.WithTimeout(ctx, p.opts.TTL/3)
	defer cancel()
	rewrite, err := p.store.Beat(bctx)
	if err != nil {
		p.log.Write(slog.LevelWarn, "presence:beat", "presence: beat failed", "err", err)
		p.beatFailed, p.steadySince = true, time.Time{}
		return
	}
	// A failed beat may have gone through with its reply lost, news of a
	// sweep included: written again, the share changes nothing if whole.
	if rewrite || p.beatFailed || p.rewriteAgain {
		p.rewriteAll()
	}
	// Swept, it writes its share again at the next beat too, in case the
	// sweep was still running; not after its first beat (new, it had
	// nothing written to be swept).
	p.rewriteAgain = rewrite && p.beaten.Load()
	p.beaten.Store(true)
	p.beatFailed = false
	now := time.Now()
	if p.steadySince.IsZero() {
		p.steadySince = now
	}
	if now.Sub(p.steadySince) < p.silence() {
		return
	}
	n, err := p.store.Sweep(bctx, p.silence(), p.opts.TTL, p.Events)
	if err != nil {
		p.log.Write(slog.LevelWarn, "presence:sweep", "presence: sweep of dead instances failed", "err", err)
	}
	p.metrics.Swept.Add(float64(n))
}

// rewriteAll marks every share for writing again: the store lost them,
// or may have (this instance was swept, or a beat's reply was lost), and
// what this instance wrote since may be there or not. Each is written as
// it is now, zero included; the index of what it holds, which a sweep
// removes, is written again with it (Entered).
func (p *Presence) rewriteAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, sh := range p.shares {
		sh.unknown = true
		p.shares[k] = sh
		p.dirty[k] = struct{}{}
	}
}

// flush writes the shares that changed, but no room more often than
// RoomInterval.
func (p *Presence) flush(ctx context.Context, now time.Time) {
	if !p.beaten.Load() {
		return // changes wait, dirty: written once a beat went through
	}
	batch, keys := p.collect(now)
	if len(batch.Shares) == 0 && len(batch.Left) == 0 {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, p.opts.TTL/3)
	defer cancel()
	err := p.store.Write(wctx, batch)
	p.metrics.Writes.Inc()
	if err != nil {
		p.log.Write(slog.LevelWarn, "presence:write", "presence: write failed (written again at the next flush)", "err", err)
		p.metrics.WriteErrors.Inc()
	}
	p.wrote(batch, keys, err == nil)
}

// collect gathers the changed shares into a batch, with the keys they are
// of. Entered names everything a share above zero is written in (adding
// to a set twice changes nothing); Left what the shares written before
// left, unless entered again since.
func (p *Presence) collect(now time.Time) (PresenceBatch, []shareKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := PresenceBatch{Events: p.Events}
	if len(p.dirty) == 0 && len(p.left) == 0 {
		return b, nil // the idle instance's every flush
	}
	var keys []shareKey
	entered := map[entry]bool{}
	dirty := len(p.dirty)
	for k := range p.dirty {
		sh := p.shares[k]
		for len(sh.leaving) > 0 && !sh.leaving[0].After(now) {
			sh.leaving = sh.leaving[1:]
		}
		if len(sh.leaving) == 0 {
			sh.leaving = nil // its array goes with it
		}
		p.shares[k] = sh
		want := sh.live + int32(len(sh.leaving))
		if want == sh.written && !sh.unknown {
			if len(sh.leaving) == 0 {
				p.forgetLocked(k, sh)
			}
			continue
		}
		if k.room != "" && now.Sub(p.written[k.room]) < p.opts.RoomInterval {
			p.metrics.Deferred.Inc()
			continue
		}
		b.Shares = append(b.Shares, PresenceShare{Room: k.room, User: k.user, Streams: int(want)})
		keys = append(keys, k)
		if want > 0 {
			for _, e := range k.entries() {
				if e != (entry{}) && !entered[e] {
					entered[e] = true
					b.Entered = append(b.Entered, e.String())
				}
			}
		}
	}
	if dirty > 1024 && len(p.dirty) == 0 {
		p.dirty = map[shareKey]struct{}{} // a map keeps its size: a storm's would stay
	}
	for room, at := range p.written {
		if now.Sub(at) >= p.opts.RoomInterval {
			delete(p.written, room)
		}
	}
	if p.opts.RoomInterval > 0 {
		for _, k := range keys {
			if k.room != "" {
				p.written[k.room] = now
			}
		}
	}
	for _, e := range p.left {
		if p.held[e] == 0 && !entered[e] {
			entered[e] = true // once
			b.Left = append(b.Left, e.String())
		}
	}
	p.left = nil
	return b, keys
}

// entries are the index entries of a share: its user's, and its room's
// (none for a user's own channel).
func (k shareKey) entries() [2]entry {
	if k.room == "" {
		return [2]entry{{user: k.user}}
	}
	return [2]entry{{user: k.user}, {room: k.room}}
}

// wrote records a batch's outcome. Not taken, its shares are unknown:
// the next flush writes them again, and nothing leaves the index.
func (p *Presence) wrote(b PresenceBatch, keys []shareKey, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !ok {
		for _, name := range b.Left {
			p.left = append(p.left, entryOf(name))
		}
	}
	for i, k := range keys {
		sh, found := p.shares[k]
		if !found {
			continue
		}
		if !ok {
			sh.unknown = true
			p.shares[k] = sh
			continue
		}
		was, now := sh.written, int32(b.Shares[i].Streams)
		sh.written, sh.unknown = now, false
		p.shares[k] = sh
		for _, e := range k.entries() {
			if e == (entry{}) {
				continue
			}
			switch {
			case was <= 0 && now > 0:
				p.held[e]++
			case was > 0 && now <= 0:
				if p.held[e]--; p.held[e] <= 0 {
					delete(p.held, e)
				}
			}
			// Out of the index once nothing is held there, whatever this
			// instance knew it held: a write that failed may have gone
			// through, and entered it.
			if now <= 0 && p.held[e] == 0 {
				p.left = append(p.left, e)
			}
		}
	}
}

// entryOf reads an entry back from its name in the store.
func entryOf(name string) entry {
	if name[0] == 'r' {
		return entry{room: name[1:]}
	}
	return entry{user: name[1:]}
}

// forgetLocked drops a share that is written and has no stream left.
func (p *Presence) forgetLocked(k shareKey, sh share) {
	delete(p.dirty, k)
	if sh.live == 0 && sh.written == 0 {
		delete(p.shares, k)
	}
}

// PresenceMetrics are presence's Prometheus metrics.
type PresenceMetrics struct {
	Writes      prometheus.Counter
	WriteErrors prometheus.Counter
	Deferred    prometheus.Counter
	Swept       prometheus.Counter
}

// NewPresenceMetrics registers presence's metrics.
func NewPresenceMetrics(reg prometheus.Registerer) *PresenceMetrics {
	m := &PresenceMetrics{
		Writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_presence_writes_total",
			Help: "Batches of presence changes written to Redis (at most one per PRESENCE_FLUSH).",
		}),
		WriteErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_presence_write_errors_total",
			Help: "Batches of presence changes Redis did not take (written again at the next flush).",
		}),
		Deferred: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_presence_deferred_total",
			Help: "Times a change of a room's presence was held back, its room written less than PRESENCE_ROOM_INTERVAL before (a storm of arrivals and departures).",
		}),
		Swept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_presence_instances_swept_total",
			Help: "Instances taken for dead (silent for 2/3 of PRESENCE_TTL) whose presence this instance removed.",
		}),
	}
	reg.MustRegister(m.Writes, m.WriteErrors, m.Deferred, m.Swept)
	return m
}
