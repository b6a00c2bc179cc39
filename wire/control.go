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
}

// ParseControl reads and checks a control message.
func ParseControl(payload []byte) (Control, error) {
	var c Control
	if err := json.Unmarshal(payload, &c); err != nil {
		return Control{}, fmt.Errorf("%w: not a JSON object with op, user and room: %v", ErrBadControl, err)
	}
	if err := CheckName(c.User); err != nil {
		return Control{}, fmt.Errorf("%w: user: %v", ErrBadControl, err)
	}
	switch c.Op {
	case OpJoin, OpLeave:
		if err := CheckName(c.Room); err != nil {
			return Control{}, fmt.Errorf("%w: room: %v", ErrBadControl, err)
		}
	case OpLogout:
	default:
		return Control{}, fmt.Errorf("%w: unknown op %q (want join, leave or logout)", ErrBadControl, truncate(c.Op, 20))
	}
	return c, nil
}
