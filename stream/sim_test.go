package stream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/wire"
)

// A deterministic simulation of the hub and its backend (issue 17, §3), in
// the spirit of FoundationDB's simulation and TigerBeetle's VOPR.
//
// The real hub and streams run in a testing/synctest bubble against the
// simulated Redis of simredis_test.go. The scheduler waits until every
// goroutine of the bubble is durably blocked (synctest.Wait), lists what
// may happen next (a pending Redis operation, the next pub/sub command or
// message, a reconnection, a workload action), sorts the list by its
// description, picks one with a seeded PCG and runs it; and again, for a
// bounded number of workload actions, then until nothing is left (drain).
// What each stream's writer wrote is parsed as SSE and judged against the
// model by check (rules written from docs/protocol.md).
//
// Run: go test -race -run TestSim ./stream/ (a bounded number of seeds);
// SSEBRIDGE_SIM_SEEDS=N runs N seeds (from SSEBRIDGE_SIM_FIRST, default 1);
// SSEBRIDGE_SIM_SEED=S replays one (-v prints its schedule), with
// SSEBRIDGE_SIM_BUDGET and SSEBRIDGE_SIM_SKIP (as a failure prints them)
// for its shrunk schedule. docs/testing.md says what is and is not
// modelled.

// simDefaultSeeds is how many seeds go test runs: about 10 s with -race
// on two cores.
const simDefaultSeeds = 500

// simMaxSteps bounds one run; a run that does not drain by then fails.
const simMaxSteps = 5000

var (
	simUsers = []string{"u1", "u2"}
	// A run has the first 3 or all 6: with few rooms, the users share
	// them and a leave seldom unsubscribes; with more, it often does.
	simRooms = []string{"r1", "r2", "r3", "r4", "r5", "r6"}
)

// simEvent is a message the workload published.
type simEvent struct {
	token   string // the event's data: unique, so a received frame names it
	channel string
	id      wire.Cursor // durable only
	tick    int         // when it was published, in the model's order
	durable bool
	lost    bool // a restart lost it
	lostAt  int  // tick of that restart
}

// simControl is a control message the workload published.
type simControl struct {
	c         wire.Control
	body      string
	tick      int
	delivered int // tick it reached the hub; 0: not (yet)
	lost      bool
}

type simVersion struct {
	tick int
	sess *wire.Session // nil: deleted
}

// simLog is what the model knows that the checker needs. Guarded by
// simRedis.mu.
type simLog struct {
	tick     int // counts the model's changes: the order things happened in
	events   map[string]*simEvent
	order    []*simEvent
	controls []*simControl
	sessions map[string][]simVersion // by token
	lookups  map[string]int          // who → tick of its latest session read
	trims    int
	restarts []int
	// positions: the position each new stream took (Hub.opening): its
	// channels are owed after it, whatever its ready id (a room joined
	// while it opened lowers that).
	positions map[string]wire.Cursor
	// inOrder is the tick the feed last delivered a durable message; a
	// join delivered after a restart and before one has no position to
	// replay its room from (docs/protocol.md): blind.
	inOrder int
	marks   []wire.Cursor
	// For diagnoses: each goroutine's reads of history, and the ticks a
	// SUBSCRIBE of each channel took effect.
	reads      map[string][]simRead
	subscribed map[string][]int
}

type simRead struct {
	tick         int
	unsubscribed []string // channels read while Redis did not have them subscribed
}

func (l *simLog) lostControl(body []byte) {
	for _, c := range l.controls {
		if c.body == string(body) {
			c.lost = true
		}
	}
}

// simFrame is one SSE block a stream's writer wrote.
type simFrame struct {
	id, event, data string
	hasID           bool
	tick            int
}

// simJoin is a join control message that reached the hub while a stream
// of its user existed (its ticket taken).
type simJoin struct {
	room    string
	tick    int         // published
	since   string      // grant
	floor   wire.Cursor // the stream's last id when the join was applied
	applied int         // tick it reached the hub
	// blind: delivered after Redis restarted and before the feed delivered
	// a durable message; the protocol promises its room's events only from
	// the stream's own id on (docs/protocol.md).
	blind bool
}

// simStream is one client: an open (or its attempt) and what it got.
type simStream struct {
	label, user, token string
	resume             string
	allRooms           bool
	pick               []bool // ?rooms=: which of the session's rooms (by index in sim.rooms)

	ticket   bool
	readTick int
	spec     Spec
	s        *Stream
	openErr  error
	cancel   context.CancelFunc
	served   bool // serve returned
	why      string
	frames   []simFrame
	lastPos  wire.Cursor // the browser's last id
	joins    []simJoin
	lastHas  map[string]int // room → last tick the hub was seen with the stream in it
}

// simSink is a stream's connection: it parses what the writer writes.
type simSink struct {
	sim *sim
	rec *simStream
}

func (k *simSink) write(batch [][]byte) error {
	k.sim.r.mu.Lock()
	tick := k.sim.r.log.tick
	k.sim.r.mu.Unlock()
	k.sim.mu.Lock()
	defer k.sim.mu.Unlock()
	for _, b := range batch {
		for block := range strings.SplitSeq(string(b), "\n\n") {
			if block == "" {
				continue
			}
			f := simFrame{tick: tick}
			for line := range strings.SplitSeq(block, "\n") {
				switch {
				case strings.HasPrefix(line, "id: "):
					f.id, f.hasID = line[4:], true
				case strings.HasPrefix(line, "event: "):
					f.event = line[7:]
				case strings.HasPrefix(line, "data: "):
					f.data = line[6:]
				}
			}
			if f.event == "" && f.data == "" && !f.hasID {
				continue // retry: or a comment
			}
			if f.hasID && f.id != "" {
				if c, err := wire.ParseCursor(f.id); err == nil {
					k.rec.lastPos = c
				}
			}
			k.rec.frames = append(k.rec.frames, f)
		}
	}
	return nil
}

// simConfig is one run: a seed, how many workload actions, and which of
// them to leave out (shrinking).
type simConfig struct {
	seed   uint64
	budget int
	skip   map[int]bool
}

func (c simConfig) replay() string {
	var skip []string
	for i := range c.skip {
		skip = append(skip, strconv.Itoa(i))
	}
	slices.SortFunc(skip, func(a, b string) int { x, _ := strconv.Atoi(a); y, _ := strconv.Atoi(b); return x - y })
	return fmt.Sprintf("SSEBRIDGE_SIM_SEED=%d SSEBRIDGE_SIM_BUDGET=%d SSEBRIDGE_SIM_SKIP=%s go test -race -run TestSim ./stream/", c.seed, c.budget, strings.Join(skip, ","))
}

// sim is one run.
type sim struct {
	cfg  simConfig
	rng  *rand.Rand
	r    *simRedis
	h    *Hub
	ctx  context.Context
	stop context.CancelFunc

	mu       sync.Mutex // guards the streams' records and feedIdle
	streams  []*simStream
	feedIdle bool

	actions   int // workload actions drawn so far
	schedule  []string
	recheckOn bool
	n         int               // names: streams, events, tokens
	tokens    map[string]string // user → token of the current session
	queueOpts Options
	rooms     []string // this run's
}

type simResult struct {
	schedule []string
	failures []string
	actions  int
}

// runSim runs one configuration inside its own synctest bubble.
func runSim(t *testing.T, cfg simConfig) simResult {
	var res simResult
	synctest.Test(t, func(t *testing.T) {
		res = newSim(cfg).run()
	})
	return res
}

func newSim(cfg simConfig) *sim {
	rng := rand.New(rand.NewPCG(cfg.seed, 0x5eb41d9e))
	maxlen := []int{3, 1000}[rng.IntN(2)]
	page := []int{2, 1000}[rng.IntN(2)]
	r := newSimRedis(maxlen, page, &simLog{events: map[string]*simEvent{}, sessions: map[string][]simVersion{}, lookups: map[string]int{}, positions: map[string]wire.Cursor{},
		reads: map[string][]simRead{}, subscribed: map[string][]int{}})
	opts := Options{MaxStreams: 1000, MaxStreamsPerUser: 100, MaxRooms: 64, QueueEvents: []int{8, 64}[rng.IntN(2)], QueueBytes: 1 << 20,
		MaxEventBytes: 1 << 10, ReplayMaxBytes: 1 << 30, ReplayInflightBytes: 1 << 20, Retry: time.Second, MarkInterval: time.Hour, Loops: -1}
	rooms := simRooms[:[]int{3, 6}[rng.IntN(2)]]
	s := &sim{cfg: cfg, rng: rng, r: r, tokens: map[string]string{}, queueOpts: opts, rooms: rooms}
	s.h = NewHub(r, r, opts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry()))
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.schedule = append(s.schedule, fmt.Sprintf("config: maxlen %d, page %d events, queue %d events, rooms %v", maxlen, page, opts.QueueEvents, rooms))
	return s
}

func (s *sim) run() simResult {
	// The feed: the broker's Run, one goroutine that hands the hub what
	// the scheduler gives it, in order.
	s.r.idle = func() {
		s.mu.Lock()
		s.feedIdle = true
		s.mu.Unlock()
	}
	go s.r.Run(simWith(s.ctx, "feed"), s.h)
	control := simWith(s.ctx, "feed")
	go func() {
		_ = s.h.Prime(control)
		_ = s.h.SubscribeControl()
	}()
	for _, u := range simUsers {
		s.login(u)
	}
	synctest.Wait() // the feed waits for its first message
	// Connected for the first time: the feed recovers then too.
	s.mu.Lock()
	s.feedIdle = false
	s.mu.Unlock()
	s.r.feed <- s.r.recover
	synctest.Wait()
	steps := 0
	for ; steps < simMaxSteps; steps++ {
		s.r.canon()
		s.observe()
		enabled := s.enabled()
		if len(enabled) == 0 {
			break
		}
		st := enabled[s.rng.IntN(len(enabled))]
		desc := st.run()
		s.schedule = append(s.schedule, desc)
		synctest.Wait()
	}
	var failures []string
	if steps == simMaxSteps {
		failures = append(failures, fmt.Sprintf("quiescence: still running after %d steps", steps))
	}
	failures = append(failures, s.check()...)
	s.stop()
	synctest.Wait()
	return simResult{schedule: s.schedule, failures: failures, actions: s.actions}
}

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

// --- workload ---

type simAction struct {
	weight int
	name   string
	do     func() string // "" when it does not apply now
}

func (s *sim) workload() string {
	s.actions++
	n := s.actions
	actions := []simAction{
		{12, "open", s.open},
		{4, "close", s.closeOne},
		{10, "join", func() string { return s.join(s.pickUser(), s.pickRoom()) }},
		{7, "leave", func() string { return s.leave(s.pickUser(), s.pickRoom()) }},
		{5, "leave and join again", s.flap},
		{1, "logout", s.logout},
		{2, "login", func() string { return s.login(s.pickUser()) }},
		{10, "rewrite", s.rewrite},
		{10, "recheck", s.recheck},
		{25, "durable", s.publishDurable},
		{5, "live", s.publishLive},
		{3, "feed loss", func() string { s.r.lose(); return "pub/sub connection lost" }},
		{1, "restart", func() string { s.r.restart(); return "redis restarts, back to its last snapshot" }},
		{2, "persist", func() string { s.r.persist(); return "redis snapshots its data" }},
		{2, "mark", s.mark},
	}
	total := 0
	for _, a := range actions {
		total += a.weight
	}
	x := s.rng.IntN(total)
	var a simAction
	for _, a = range actions {
		if x -= a.weight; x < 0 {
			break
		}
	}
	if s.cfg.skip[n] {
		return fmt.Sprintf("#%d (%s) left out", n, a.name)
	}
	s.r.mu.Lock()
	s.r.log.tick++
	s.r.mu.Unlock()
	if d := a.do(); d != "" {
		return fmt.Sprintf("#%d %s", n, d)
	}
	return fmt.Sprintf("#%d (%s: nothing to do)", n, a.name)
}

func (s *sim) pickUser() string { return simUsers[s.rng.IntN(len(simUsers))] }
func (s *sim) pickRoom() string { return s.rooms[s.rng.IntN(len(s.rooms))] }

func (s *sim) name(prefix string) string {
	s.n++
	return prefix + strconv.Itoa(s.n)
}

// setSession writes a session (nil: deletes it) and logs the version.
// r.mu must be held.
func (s *sim) setSessionLocked(token string, sess *wire.Session) {
	l := s.r.log
	if sess == nil {
		delete(s.r.data.sessions, token)
	} else {
		s.r.data.sessions[token] = simCopySession(*sess)
		c := simCopySession(*sess)
		sess = &c
	}
	l.sessions[token] = append(l.sessions[token], simVersion{tick: l.tick, sess: sess})
}

// controlLocked publishes a control message as the backend does. r.mu
// must be held.
func (s *sim) controlLocked(c wire.Control) {
	l := s.r.log
	m := map[string]string{"op": c.Op, "user": c.User, "sim": strconv.Itoa(len(l.controls))} // sim: unique, ignored by the hub
	if c.Room != "" {
		m["room"] = c.Room
	}
	if c.Since != "" {
		m["since"] = c.Since
	}
	body, _ := json.Marshal(m)
	l.controls = append(l.controls, &simControl{c: c, body: string(body), tick: l.tick})
	s.r.publishLocked(wire.ControlChannel, wire.Message{Body: body}, fmt.Sprintf("control %s %s %s", c.Op, c.User, c.Room))
}

func (s *sim) cursorLocked() string {
	if s.r.data.cursor.IsZero() {
		return ""
	}
	return s.r.data.cursor.String()
}

// login writes a new session for user (the browser's earlier one deleted),
// keeping the grant of the rooms it had, as ssebridge_django does.
func (s *sim) login(user string) string {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	old, had := s.r.data.sessions[s.tokens[user]]
	if had {
		s.setSessionLocked(s.tokens[user], nil)
	}
	sess := wire.Session{User: user, Granted: map[string]string{}}
	for _, room := range s.rooms {
		if s.rng.IntN(2) == 0 {
			sess.Rooms = append(sess.Rooms, room)
			if g, ok := old.Granted[room]; ok && old.Allows(room) {
				sess.Granted[room] = g
			} else {
				sess.Granted[room] = s.cursorLocked()
			}
		}
	}
	token := s.name("t")
	s.tokens[user] = token
	s.setSessionLocked(token, &sess)
	return fmt.Sprintf("login %s: session %s rooms %v", user, token, sess.Rooms)
}

// join is set_rooms adding a room: the session rewritten and the join
// published in one MULTI, since = the cursor now.
func (s *sim) join(user, room string) string {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	token := s.tokens[user]
	sess, ok := s.r.data.sessions[token]
	if !ok || sess.Allows(room) {
		return ""
	}
	sess = simCopySession(sess)
	since := s.cursorLocked()
	sess.Rooms = append(sess.Rooms, room)
	if sess.Granted == nil {
		sess.Granted = map[string]string{}
	}
	sess.Granted[room] = since
	s.setSessionLocked(token, &sess)
	s.controlLocked(wire.Control{Op: wire.OpJoin, User: user, Room: room, Since: since})
	return fmt.Sprintf("join %s %s since %q", user, room, since)
}

func (s *sim) leave(user, room string) string {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	token := s.tokens[user]
	sess, ok := s.r.data.sessions[token]
	if !ok || !sess.Allows(room) {
		return ""
	}
	sess = simCopySession(sess)
	sess.Rooms = slices.DeleteFunc(sess.Rooms, func(r string) bool { return r == room })
	delete(sess.Granted, room)
	s.setSessionLocked(token, &sess)
	s.controlLocked(wire.Control{Op: wire.OpLeave, User: user, Room: room})
	return fmt.Sprintf("leave %s %s", user, room)
}

// flap is a room left and joined again at once (two set_rooms back to
// back): the schedules of a leave and re-join during a catch-up.
func (s *sim) flap() string {
	user, room := s.pickUser(), s.pickRoom()
	left := s.leave(user, room)
	if left == "" {
		return ""
	}
	return left + ", then " + s.join(user, room)
}

func (s *sim) logout() string {
	user := s.pickUser()
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	token := s.tokens[user]
	if _, ok := s.r.data.sessions[token]; !ok {
		return ""
	}
	s.setSessionLocked(token, nil)
	s.controlLocked(wire.Control{Op: wire.OpLogout, User: user})
	return "logout " + user
}

// rewrite changes a session's rooms with no control message (a documented
// path): only a recheck brings streams in line.
func (s *sim) rewrite() string {
	user, room := s.pickUser(), s.pickRoom()
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	token := s.tokens[user]
	sess, ok := s.r.data.sessions[token]
	if !ok {
		return ""
	}
	sess = simCopySession(sess)
	if sess.Granted == nil {
		sess.Granted = map[string]string{}
	}
	verb := "adds"
	if sess.Allows(room) {
		verb = "removes"
		sess.Rooms = slices.DeleteFunc(sess.Rooms, func(r string) bool { return r == room })
		delete(sess.Granted, room)
	} else {
		sess.Rooms = append(sess.Rooms, room)
		sess.Granted[room] = s.cursorLocked()
	}
	s.setSessionLocked(token, &sess)
	return fmt.Sprintf("session of %s %s %s, no control message", user, verb, room)
}

// recheck runs one session recheck in its own goroutine, as Hub.Recheck's
// loop does (never two at once).
func (s *sim) recheck() string {
	s.mu.Lock()
	on := s.recheckOn
	s.recheckOn = true
	s.mu.Unlock()
	if on {
		return ""
	}
	who := s.name("recheck")
	ctx := simWith(s.ctx, who)
	go func() {
		_ = s.h.recheck(ctx, s.r)
		s.mu.Lock()
		s.recheckOn = false
		s.mu.Unlock()
	}()
	return who + " starts"
}

func (s *sim) mark() string {
	who := s.name("mark")
	ctx := simWith(s.ctx, who)
	go func() { _ = s.r.PublishBareID(ctx, wire.BroadcastChannel) }()
	return who + " starts"
}

func (s *sim) pickChannel() string {
	switch x := s.rng.IntN(6); {
	case x < 2:
		return wire.UserChannel(s.pickUser())
	case x < 3:
		return wire.BroadcastChannel
	default:
		return wire.RoomChannel(s.pickRoom())
	}
}

func (s *sim) publishDurable() string {
	ch := s.pickChannel()
	tick := s.rng.IntN(2) == 0
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	if tick {
		s.r.clock++
	}
	token := s.name("d")
	env := `{"event":"ev","data":"` + token + `"}`
	id := s.r.durableLocked(ch, env)
	e := &simEvent{token: token, channel: ch, id: id, tick: s.r.log.tick, durable: true}
	s.r.log.events[token] = e
	s.r.log.order = append(s.r.log.order, e)
	return fmt.Sprintf("durable %s on %s: %s", token, ch, id)
}

func (s *sim) publishLive() string {
	ch := s.pickChannel()
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	token := s.name("l")
	e := &simEvent{token: token, channel: ch, tick: s.r.log.tick}
	s.r.log.events[token] = e
	s.r.publishLocked(ch, wire.Message{Body: []byte(`{"event":"lv","data":"` + token + `"}`)}, "live "+token+" on "+ch)
	return fmt.Sprintf("live %s on %s", token, ch)
}

// open is a browser's GET /events, as handlers/events.go serves it: the
// ticket, then the session read, then Open with the session's rooms, then
// the writer. A resume carries an id a stream of the user got earlier.
func (s *sim) open() string {
	user := s.pickUser()
	rec := &simStream{label: s.name("s"), user: user, allRooms: s.rng.IntN(3) > 0, lastHas: map[string]int{}}
	for range s.rooms {
		rec.pick = append(rec.pick, s.rng.IntN(2) == 0)
	}
	s.mu.Lock()
	var ids []string
	for _, o := range s.streams {
		if o.user != user {
			continue
		}
		for _, f := range o.frames {
			if f.hasID && f.id != "" {
				ids = append(ids, f.id)
			}
		}
	}
	s.mu.Unlock()
	if len(ids) > 0 && s.rng.IntN(2) == 0 {
		rec.resume = ids[s.rng.IntN(len(ids))]
	}
	s.r.mu.Lock()
	rec.token = s.tokens[user]
	s.r.mu.Unlock()
	ctx, cancel := context.WithCancel(simWith(s.ctx, rec.label))
	rec.cancel = cancel
	s.mu.Lock()
	s.streams = append(s.streams, rec)
	rec.ticket = true
	s.mu.Unlock()
	go s.client(ctx, rec)
	what := "fresh"
	if rec.resume != "" {
		what = "resume from " + rec.resume
	}
	if !rec.allRooms {
		what += fmt.Sprintf(" ?rooms= of %v", rec.pick)
	}
	return fmt.Sprintf("open %s: %s %s %s", rec.label, user, rec.token, what)
}

func (s *sim) client(ctx context.Context, rec *simStream) {
	ticket, err := s.h.ControlPoint(ctx)
	if err != nil {
		s.mu.Lock()
		rec.openErr, rec.served = err, true
		s.mu.Unlock()
		return
	}
	sessions, errs, err := s.r.LookupMany(ctx, []string{rec.token})
	if err == nil {
		err = errs[0]
	}
	if err != nil {
		s.mu.Lock()
		rec.openErr, rec.served = err, true
		s.mu.Unlock()
		return
	}
	sess := sessions[0]
	rooms := sess.Rooms
	if !rec.allRooms {
		rooms = nil
		for i, room := range s.rooms {
			if rec.pick[i] && sess.Allows(room) {
				rooms = append(rooms, room)
			}
		}
	}
	spec := Spec{User: sess.User, Session: rec.token, Rooms: rooms, AllRooms: rec.allRooms, Resume: rec.resume, Granted: sess.Granted, ControlPoint: ticket}
	s.r.mu.Lock()
	readTick := s.r.log.lookups[rec.label]
	s.r.mu.Unlock()
	s.mu.Lock()
	rec.readTick, rec.spec = readTick, spec
	if rec.resume != "" {
		rec.lastPos, _ = wire.ParseCursor(rec.resume)
	}
	s.mu.Unlock()
	st, err := s.h.Open(ctx, spec)
	s.mu.Lock()
	rec.s, rec.openErr = st, err
	if err != nil {
		rec.served = true
	}
	s.mu.Unlock()
	if err != nil {
		return
	}
	why := st.serve(ctx, &simSink{sim: s, rec: rec}, WriteOptions{Heartbeat: time.Hour, WriteTimeout: time.Hour})
	s.h.Close(st, why)
	s.mu.Lock()
	rec.served, rec.why = true, why
	s.mu.Unlock()
}

func (s *sim) closeOne() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var open []*simStream
	for _, rec := range s.streams {
		if !rec.served {
			open = append(open, rec)
		}
	}
	if len(open) == 0 {
		return ""
	}
	rec := open[s.rng.IntN(len(open))]
	rec.cancel()
	return "client of " + rec.label + " goes away"
}

// --- the checker ---

// simEpoch orders epochs: e1 < e2 < ...
func simEpoch(c wire.Cursor) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(c.Epoch, "e"))
	return n
}

// simAfter reports whether c comes after floor, epochs included: an event
// of a later epoch is after anything of an earlier one.
func simAfter(c, floor wire.Cursor) bool {
	if floor.IsZero() {
		return true
	}
	if simEpoch(c) != simEpoch(floor) {
		return simEpoch(c) > simEpoch(floor)
	}
	return floor.Before(c)
}

// check judges every stream against the model. The rules, from
// docs/protocol.md:
//
//   - every durable event received is one the model published, with its
//     id and on its channel, received once; durable ids (and marks) only
//     grow, and change epoch only after a reset;
//   - a fresh stream gets nothing of the channels it opened with at or
//     before its ready id (a resume: its Last-Event-ID, by the order rule);
//   - a channel is received only if the stream may have it: its user's,
//     broadcast, a room of its opening, a room joined by a control message
//     that reached it, or a room its session listed at or after its own
//     session read (a recheck's join); and never from before that
//     membership's grant;
//   - nothing of a room published after the hub took the stream out of it
//     (and did not put it back);
//   - a reset only where the model lost data (epoch, foreign: a restart) or
//     trimmed it (trimmed); never too_large (the limit is out of reach) or
//     malformed;
//   - once drained, a stream still open and caught up has every durable
//     event that was not lost of: its user's channel and broadcast after
//     its start (ready id, Last-Event-ID, or its last reset); the rooms of
//     its opening, likewise, if the room was never removed since (a leave
//     published, or its session rewritten without it); each room joined
//     by a control message that reached the hub, published after the join
//     was published, and after the stream's last id when the join was
//     applied (ids only grow: what it had passed it can no longer be
//     sent), if never removed since. Where the protocol allows either, the
//     event may arrive or not: one published before the join, after its
//     grant; one of a room later removed (a leave applied drops what the
//     stream held of the room, published before the leave or not: access
//     ended); a room a recheck joined.
func (s *sim) check() []string {
	s.r.mu.Lock() // r.mu before s.mu, as everywhere
	defer s.r.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, rec := range s.streams {
		for _, f := range s.checkStream(rec) {
			out = append(out, rec.label+" ("+rec.user+", "+rec.token+"): "+f)
		}
	}
	return out
}

func (s *sim) checkStream(rec *simStream) []string {
	l := s.r.log
	var out []string
	fail := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	var resume wire.Cursor
	if rec.resume != "" {
		resume, _ = wire.ParseCursor(rec.resume)
	}
	prev := resume
	var ready, reset wire.Cursor
	resets := 0
	got := map[string]bool{}
	for _, f := range rec.frames {
		var id wire.Cursor
		if f.hasID && f.id != "" {
			var err error
			if id, err = wire.ParseCursor(f.id); err != nil {
				fail("frame with a bad id %q", f.id)
				continue
			}
		}
		switch f.event {
		case "ready":
			ready = id
			continue
		case "reset":
			resets++
			reset, prev = id, id
			var why struct{ Reason string }
			_ = json.Unmarshal([]byte(f.data), &why)
			switch why.Reason {
			case wire.ResetEpoch, wire.ResetFuture:
				if len(l.restarts) == 0 || l.restarts[0] > f.tick {
					fail("reset %q at %s with no data lost", why.Reason, f.id)
				}
			case wire.ResetTrimmed:
				if l.trims == 0 {
					fail("reset trimmed at %s with nothing trimmed", f.id)
				}
			default:
				fail("reset %q at %s", why.Reason, f.id)
			}
			continue
		case "logout":
			continue
		case "":
			if f.data == "" { // a mark: an id alone
				if !simAfter(id, prev) {
					fail("mark %s after %s: ids must grow (a new epoch only after an older one)", id, prev)
				}
				prev = id
				continue
			}
		}
		e := l.events[f.data]
		if e == nil {
			fail("unknown event %q", f.data)
			continue
		}
		if got[e.token] {
			fail("%s (%s) received twice", e.token, e.channel)
		}
		got[e.token] = true
		if e.durable {
			if e.id != id {
				fail("%s sent with id %s, published as %s", e.token, f.id, e.id)
			}
			if !simAfter(id, prev) {
				fail("%s (%s) id %s after %s: ids must grow (a new epoch only after an older one)", e.token, e.channel, id, prev)
			}
			prev = id
			if !ready.IsZero() && resets == 0 && s.opened(rec, e.channel) && !simAfter(id, ready) {
				fail("%s (%s) id %s at or before the ready id %s", e.token, e.channel, id, ready)
			}
		}
		if why := s.mayHave(rec, e); why != "" {
			fail("%s (%s, published at tick %d, id %s): %s", e.token, e.channel, e.tick, e.id, why)
		}
	}
	// Must-have: only a stream still open, caught up, once drained.
	if rec.s == nil || rec.served || rec.s.ended() != "" || simCatching(rec.s) {
		return out
	}
	start := resume
	if !ready.IsZero() {
		start = ready
		if pos, ok := s.r.log.positions[rec.label]; ok && resume.IsZero() {
			start = pos // a room joined while it opened put its ready id before
		}
	}
	if resets > 0 {
		start = reset
	}
	for _, e := range l.order {
		if got[e.token] {
			continue
		}
		why := s.mustHave(rec, e, start, reset)
		switch {
		case why == "":
		case !e.lost:
			fail("missing %s (%s, published at tick %d, id %s): %s", e.token, e.channel, e.tick, e.id, why)
		}
		// An event lost with Redis's data before the stream had it is not
		// judged: when the instance never saw it (the suffix lost was
		// never delivered) and the position is ahead again by the time
		// it recovers, nothing tells it of the loss. A loss it can see
		// (the position behind its own, another epoch) is judged by the
		// reset and order rules.
	}
	return out
}

// simCatching reports whether s is still catching up (not live).
func simCatching(s *Stream) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.catching != nil
}

// opened reports whether the stream had channel from its opening.
func (s *sim) opened(rec *simStream, channel string) bool {
	if channel == wire.BroadcastChannel || channel == wire.UserChannel(rec.user) {
		return true
	}
	room, ok := wire.RoomOf(channel)
	return ok && slices.Contains(rec.spec.Rooms, room)
}

// after reports whether c comes after the grant g ("" or unparsable: no
// bound).
func simAfterGrant(c wire.Cursor, g string) bool {
	gc, err := wire.ParseCursor(g)
	if err != nil || gc.Epoch != c.Epoch {
		return true
	}
	return gc.Before(c)
}

// mayHave says why rec must not have received e, or "".
func (s *sim) mayHave(rec *simStream, e *simEvent) string {
	if e.channel == wire.BroadcastChannel || e.channel == wire.UserChannel(rec.user) {
		return ""
	}
	room, ok := wire.RoomOf(e.channel)
	if !ok {
		return "a channel the stream never had"
	}
	if last, ok := rec.lastHas[room]; ok && last < e.tick {
		return fmt.Sprintf("published after the hub took the stream out of the room (last seen in it at tick %d)", last)
	}
	// A basis for the membership, with its grant.
	if slices.Contains(rec.spec.Rooms, room) && (simAfterGrant(e.id, rec.spec.Granted[room]) || !e.durable) {
		return ""
	}
	for _, j := range rec.joins {
		if j.room == room && (!e.durable || simAfterGrant(e.id, j.since)) {
			return ""
		}
	}
	versions := s.r.log.sessions[rec.token]
	for i, v := range versions {
		inForceSinceRead := i+1 == len(versions) || versions[i+1].tick > rec.readTick
		if inForceSinceRead &&
			v.sess != nil && v.sess.Allows(room) && (!e.durable || simAfterGrant(e.id, v.sess.Granted[room])) {
			return ""
		}
	}
	if !rec.ticket || rec.readTick == 0 {
		return "a room of a stream that never read its session"
	}
	return "no membership allows it: not a room of its opening, no join reached it, its session has not listed the room since the stream read it (at tick " + strconv.Itoa(rec.readTick) + "), or the event is from before the grant"
}

// simNever is the tick of what never happened.
const simNever = 1 << 62

// removal returns the tick of the first removal of room from rec's user
// after tick: a leave or logout published, or rec's session rewritten
// without the room (or deleted); simNever if none.
func (s *sim) removal(rec *simStream, room string, after int) int {
	l := s.r.log
	at := simNever
	for _, c := range l.controls {
		if c.tick > after && c.c.User == rec.user && (c.c.Op == wire.OpLogout || c.c.Op == wire.OpLeave && c.c.Room == room) {
			at = min(at, c.tick)
		}
	}
	for _, v := range l.sessions[rec.token] {
		if v.tick > after && (v.sess == nil || !v.sess.Allows(room)) {
			at = min(at, v.tick)
		}
	}
	return at
}

// readEarly notes when rec read e's channel, after the join j reached the
// hub, while Redis did not have the channel subscribed, and e was
// published between that read and the SUBSCRIBE taking effect: the read
// could not have it, and its live copy never came.
func (s *sim) readEarly(rec *simStream, j simJoin, e *simEvent) string {
	l := s.r.log
	for _, rd := range l.reads[rec.label] {
		if rd.tick < j.applied || rd.tick > e.tick || !slices.Contains(rd.unsubscribed, e.channel) {
			continue
		}
		next := simNever
		for _, t := range l.subscribed[e.channel] {
			if t > rd.tick {
				next = min(next, t)
			}
		}
		if e.tick < next {
			return fmt.Sprintf("; read at tick %d while Redis did not have the channel subscribed (SUBSCRIBE in force at tick %d), the event published in between", rd.tick, next)
		}
	}
	return ""
}

// mustHave says why rec should have received e, or "".
func (s *sim) mustHave(rec *simStream, e *simEvent, start, reset wire.Cursor) string {
	if !e.durable {
		return ""
	}
	if !reset.IsZero() && !simAfter(e.id, reset) {
		return ""
	}
	if e.channel == wire.BroadcastChannel || e.channel == wire.UserChannel(rec.user) {
		if simAfter(e.id, start) {
			return "a channel of the stream, after its start " + start.String()
		}
		return ""
	}
	room, ok := wire.RoomOf(e.channel)
	if !ok {
		return ""
	}
	if slices.Contains(rec.spec.Rooms, room) && simAfter(e.id, start) && s.removal(rec, room, rec.readTick) == simNever &&
		simAfterGrant(e.id, rec.spec.Granted[room]) {
		return "a room of its opening, after its start " + start.String() + ", never removed since"
	}
	for _, j := range rec.joins {
		// A join published before the stream read its session is in the
		// session it opened with: the room is one of its opening, and the
		// join changes nothing.
		if j.room == room && !j.blind && j.tick > rec.readTick && e.tick > j.tick && s.removal(rec, room, j.tick) == simNever && simAfter(e.id, j.floor) && simAfterGrant(e.id, j.since) {
			floor := "none"
			if !j.floor.IsZero() {
				floor = j.floor.String()
			}
			again := ""
			for _, c := range s.r.log.controls {
				if c.c.Op == wire.OpLeave && c.c.User == rec.user && c.c.Room == room && c.delivered > rec.readTick && c.tick < j.tick {
					again = fmt.Sprintf("; a leave of the room reached the hub at tick %d, before: a re-join", c.delivered)
				}
			}
			return fmt.Sprintf("room joined by a control message published at tick %d (the stream's id then: %s), never removed since%s%s", j.tick, floor, again, s.readEarly(rec, j, e))
		}
	}
	return ""
}

// --- entry points ---

func simEnvInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// simBudget is a seed's number of workload actions, unless given.
func simBudget(seed uint64) int { return 20 + int(seed%41) }

func TestSim(t *testing.T) {
	if v := os.Getenv("SSEBRIDGE_SIM_SEED"); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SSEBRIDGE_SIM_SEED=%q: %v", v, err)
		}
		cfg := simConfig{seed: seed, budget: simEnvInt(t, "SSEBRIDGE_SIM_BUDGET", simBudget(seed)), skip: map[int]bool{}}
		for x := range strings.SplitSeq(os.Getenv("SSEBRIDGE_SIM_SKIP"), ",") {
			if n, err := strconv.Atoi(x); err == nil {
				cfg.skip[n] = true
			}
		}
		res := runSim(t, cfg)
		t.Logf("seed %d: schedule\n%s", seed, strings.Join(res.schedule, "\n"))
		if len(res.failures) > 0 {
			t.Errorf("seed %d failed:\n%s", seed, strings.Join(res.failures, "\n"))
		}
		return
	}
	seeds := simEnvInt(t, "SSEBRIDGE_SIM_SEEDS", simDefaultSeeds)
	first := simEnvInt(t, "SSEBRIDGE_SIM_FIRST", 1)
	began := time.Now()
	var failed []uint64
	kinds := map[string][]uint64{} // a rule broken → the seeds that broke it
	shrunk := 0
	for i := range seeds {
		seed := uint64(first + i)
		cfg := simConfig{seed: seed, budget: simBudget(seed), skip: map[int]bool{}}
		res := runSim(t, cfg)
		if len(res.failures) == 0 {
			continue
		}
		failed = append(failed, seed)
		seen := map[string]bool{}
		for _, f := range res.failures {
			if k := simKind([]string{f}); !seen[k] {
				seen[k] = true
				kinds[k] = append(kinds[k], seed)
			}
		}
		if shrunk >= 3 { // shrinking costs runs: the first few failures are shown in full
			t.Errorf("seed %d failed: %s (replay: %s)", seed, res.failures[0], cfg.replay())
			continue
		}
		shrunk++
		small, sres := simShrink(t, cfg, res)
		again := runSim(t, small)
		replays := "replays identically"
		if !slices.Equal(again.schedule, sres.schedule) {
			replays = "DID NOT replay identically (see TestSimReplays)"
		}
		t.Errorf("seed %d failed; shrunk to %d workload actions (%d left out), %s.\nreplay: %s\nfailures:\n%s\nschedule:\n%s",
			seed, small.budget, len(small.skip), replays, small.replay(), strings.Join(sres.failures, "\n"), strings.Join(sres.schedule, "\n"))
	}
	took := time.Since(began)
	t.Logf("%d seeds in %v: %.1f seeds/s; failed: %v", seeds, took.Round(time.Millisecond), float64(seeds)/took.Seconds(), failed)
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		t.Logf("broke %q: %d seeds %v", k, len(kinds[k]), kinds[k])
	}
}

// simKind is the rule a failure broke, to shrink towards the same one and
// to group failing seeds.
func simKind(failures []string) string {
	if len(failures) == 0 {
		return ""
	}
	_, f, _ := strings.Cut(failures[0], "): ")
	if strings.HasPrefix(f, "missing ") {
		for _, k := range []struct{ has, kind string }{
			{"while Redis did not have the channel subscribed", "missing: a room read before its subscription was in force"},
			{"(the stream's id then: none)", "missing: a room joined before the stream had an id"},
			{"joined by a control message", "missing: a room joined"},
			{"a room of its opening", "missing: a room of its opening"},
			{"a channel of the stream", "missing: its user's channel or broadcast"},
		} {
			if strings.Contains(f, k.has) {
				return k.kind
			}
		}
		return "missing"
	}
	for _, k := range []string{"no membership", "after the hub took", "received twice", "ids must grow", "ready id", "reset", "unknown", "quiescence"} {
		if strings.Contains(f, k) {
			return k
		}
	}
	return f
}

// simShrink makes a failing run smaller while it fails the same way: fewer
// workload actions, then each action left out in turn.
func simShrink(t *testing.T, cfg simConfig, res simResult) (simConfig, simResult) {
	kind := simKind(res.failures)
	fails := func(c simConfig) (simResult, bool) {
		r := runSim(t, c)
		return r, simKind(r.failures) == kind
	}
	for b := cfg.budget / 2; b >= 1; b /= 2 {
		c := simConfig{seed: cfg.seed, budget: b, skip: map[int]bool{}}
		r, ok := fails(c)
		if !ok {
			break
		}
		cfg, res = c, r
	}
	for i := 1; i <= cfg.budget; i++ {
		c := simConfig{seed: cfg.seed, budget: cfg.budget, skip: map[int]bool{i: true}}
		for k := range cfg.skip {
			c.skip[k] = true
		}
		if r, ok := fails(c); ok {
			cfg, res = c, r
		}
	}
	return cfg, res
}

// TestSimReplays: a seed's schedule is the same every time it runs, or a
// failure could not be replayed. Not quite always: a step that wakes two
// hub goroutines at once (a recheck joining rooms while the writers it
// woke start their catch-up) lets them run in either order, and the
// hub's answer can differ (about 1 seed in 1,500 diverged). So a
// divergence is logged, and the test fails only when more than one seed
// in ten diverges.
func TestSimReplays(t *testing.T) {
	n := simEnvInt(t, "SSEBRIDGE_SIM_REPLAYS", 20)
	diverged := 0
	for seed := uint64(1); seed <= uint64(n); seed++ {
		cfg := simConfig{seed: seed, budget: simBudget(seed), skip: map[int]bool{}}
		a, b := runSim(t, cfg), runSim(t, cfg)
		if !slices.Equal(a.schedule, b.schedule) || !slices.Equal(a.failures, b.failures) {
			i := 0
			for i < min(len(a.schedule), len(b.schedule)) && a.schedule[i] == b.schedule[i] {
				i++
			}
			diverged++
			t.Logf("seed %d ran two ways: first difference at step %d", seed, i)
		}
	}
	if diverged*10 > n {
		t.Errorf("%d of %d seeds ran two ways", diverged, n)
	}
}
