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

// CheckGrant reports why s is not a grant position: what the backend read
// from Redis when it granted a room, "" (no history yet), a single Redis's
// "<epoch>:<ms>-<n>" (the value of <prefix>cursor) or a Cluster
// partition's cursor (the value of <prefix>{p<k>}:cursor for the room's
// partition k: "<epoch>:<n>:<writer>:<ends>", or "<epoch>:<n>" of earlier
// versions).
func CheckGrant(s string) error {
	if s == "" {
		return nil
	}
	if _, err := ParseCursor(s); err == nil {
		return nil
	}
	if _, _, ok := ParsePartitionPosition(s); ok {
		return nil
	}
	return errors.New("not a position read from Redis (want \"<epoch>:<ms>-<n>\", a Cluster partition's \"<epoch>:<n>:<writer>:<ends>\" or \"<epoch>:<n>\", or \"\")")
}

// ParsePartitionPosition reads a Cluster partition's cursor,
// "<epoch>:<n>:<writer>:<ends>" (docs/CLUSTER.md, "Position scheme"), or
// an earlier version's "<epoch>:<n>": its epoch and position.
func ParsePartitionPosition(s string) (epoch string, n uint64, ok bool) {
	epoch, num, ok := strings.Cut(s, ":")
	if num, rest, long := strings.Cut(num, ":"); long {
		writer, ends, ok := strings.Cut(rest, ":")
		if !ok || len(writer) > 40 || len(ends) > 16*40 || strings.Trim(writer, "0123456789abcdef") != "" || strings.Trim(ends, "0123456789=,") != "" {
			return "", 0, false
		}
		return ParsePartitionPosition(epoch + ":" + num)
	}
	if !ok || epoch == "" || len(epoch) > 32 || !alnum(epoch) || num == "" || len(num) > 16 {
		return "", 0, false
	}
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return "", 0, false
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n > maxExact {
		return "", 0, false
	}
	return epoch, n, true
}

// AfterGrant is the single-Redis rule for a room's grant: a replay of the
// room reads after the later of after and grant (after the grant when
// after is no position). A grant of another epoch
// than after's changes nothing: if after is of the current epoch, the
// grant was made before any of its history (epochs only move on); if after
// is of an older one, the replay resets to the current position, later
// than the grant anyway.
func AfterGrant(after Cursor, _ string, grant string) Cursor {
	g, err := ParseCursor(grant)
	if err != nil || after.vec != nil || !after.IsZero() && g.Epoch != after.Epoch {
		return after
	}
	return after.Max(g)
}
