package wire

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ErrBadControl labels a control message that cannot be applied.
var ErrBadControl = errors.New("bad_control")

// Control operations.
const (
	OpJoin   = "join"
	OpLeave  = "leave"
	OpLogout = "logout"
)

// Control is a message on the control channel: the backend changing what a
// user's open streams receive.
type Control struct {
	Op   string `json:"op"`
	User string `json:"user"`
	Room string `json:"room,omitempty"`
	// Since, on a join, is the position the room was granted at (see
	// Session.Granted): the join replays nothing of the room from before it.
	Since string `json:"since,omitempty"`
}

// ParseControl reads and checks a control message. Keys are matched
// exactly, as in sessions (ParseSession).
func ParseControl(payload []byte) (Control, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(payload, &obj); err != nil {
		return Control{}, fmt.Errorf("%w: not a JSON object with op, user and room: %v", ErrBadControl, err)
	}
	var c Control
	for key, field := range map[string]*string{"op": &c.Op, "room": &c.Room, "since": &c.Since} {
		if err := decodeOptional(obj[key], field); err != nil {
			return Control{}, fmt.Errorf("%w: %q is not a string", ErrBadControl, key)
		}
	}
	user, err := parseUser(obj["user"])
	if err != nil {
		return Control{}, fmt.Errorf("%w: %v", ErrBadControl, err)
	}
	c.User = user
	switch c.Op {
	case OpJoin, OpLeave:
		if err := CheckName(c.Room); err != nil {
			return Control{}, fmt.Errorf("%w: room: %v", ErrBadControl, err)
		}
		if err := CheckGrant(c.Since); err != nil {
			return Control{}, fmt.Errorf("%w: since: %v", ErrBadControl, err)
		}
	case OpLogout:
	default:
		return Control{}, fmt.Errorf("%w: unknown op %q (want join, leave or logout)", ErrBadControl, truncate(c.Op, 20))
	}
	return c, nil
}
