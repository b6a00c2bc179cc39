package stream

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// The simulation's workload: the actions a run draws by weight (streams
// opened and closed, joins and leaves, sessions rewritten and rechecked,
// events published, Redis's faults), each a change to the model and to the
// simulated Redis.

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
		{6, "presence", s.presenceAction},
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
