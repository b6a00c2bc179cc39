package stream

import (
	"context"
	"strings"

	"github.com/ssebridge/ssebridge/wire"
)

// The simulation's model (sim_test.go): what the workload published and
// changed, kept by the simulated Redis as it happens, and what each
// stream's client received; check judges the one against the other.

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
