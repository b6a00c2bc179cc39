package wire

import (
	"errors"
	"strconv"
	"strings"
)

// Cursor is the id of a durable event, "<epoch>:<ms>-<n>". Ids grow across
// every channel together (see publish.lua), so the id of the last event a
// browser saw is a position on all of its stream's channels at once: the
// SSE id: of durable events, and what Last-Event-ID brings back.
type Cursor struct {
	Epoch string // changes when Redis loses the position: ids of another epoch are not comparable
	MS, N uint64
	vec   *Vector // set in cluster mode (vector.go); Epoch is then its Tag
}

// maxExact is the largest integer a double holds exactly.
const maxExact = 1 << 53

// ErrBadCursor means a Last-Event-ID is not a cursor.
var ErrBadCursor = errors.New("not an ssebridge event id")

// ParseCursor reads a cursor as String writes it.
func ParseCursor(s string) (Cursor, error) {
	epoch, id, ok := strings.Cut(s, ":")
	if !ok || epoch == "" || len(epoch) > 32 || !alnum(epoch) {
		return Cursor{}, ErrBadCursor
	}
	ms, n, ok := strings.Cut(id, "-")
	if !ok {
		return Cursor{}, ErrBadCursor
	}
	c := Cursor{Epoch: epoch}
	var err1, err2 error
	c.MS, err1 = strconv.ParseUint(ms, 10, 64)
	c.N, err2 = strconv.ParseUint(n, 10, 64)
	// Both parts are numbers Lua (the scripts) holds exactly: an id beyond
	// that was never ours.
	if err1 != nil || err2 != nil || c.MS > maxExact || c.N > maxExact {
		return Cursor{}, ErrBadCursor
	}
	return c, nil
}

func alnum(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

func (c Cursor) String() string {
	if c.vec != nil {
		return c.vec.String()
	}
	return c.Epoch + ":" + c.EntryID()
}

// Max returns the later of c and d; a zero cursor is no position, so the
// other wins.
func (c Cursor) Max(d Cursor) Cursor {
	if d.IsZero() {
		return c
	}
	if !c.IsZero() && (c.vec != nil || d.vec != nil) {
		return vectorMax(c, d)
	}
	if c.IsZero() || c.Before(d) {
		return d
	}
	return c
}

// IsZero reports whether c is no cursor at all (a live event's).
func (c Cursor) IsZero() bool { return c.Epoch == "" }

// Before reports whether c comes before d. A cursor of another epoch counts
// as before: after Redis lost its data, new events are newer than any old id.
func (c Cursor) Before(d Cursor) bool {
	if c.vec != nil || d.vec != nil {
		return vectorBefore(c, d)
	}
	if c.Epoch != d.Epoch {
		return true
	}
	return c.MS < d.MS || c.MS == d.MS && c.N < d.N
}

// EntryID is the id of the event's entry in its channel's history stream:
// the cursor without its epoch.
func (c Cursor) EntryID() string {
	return strconv.FormatUint(c.MS, 10) + "-" + strconv.FormatUint(c.N, 10)
}

// ParseEntryID reads a history stream entry id into a cursor of epoch.
func ParseEntryID(epoch, id string) (Cursor, error) {
	return ParseCursor(epoch + ":" + id)
}
