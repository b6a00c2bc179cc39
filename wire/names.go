package wire

import (
	"fmt"
	"slices"
	"strings"
)

// MaxNameLen is the longest user id or room name accepted anywhere.
const MaxNameLen = 128

// Logical channel names. Redis holds each under the configured channel prefix.
const (
	BroadcastChannel = "broadcast"
	ControlChannel   = "control"
)

// UserChannel names the channel that reaches every stream of one user.
func UserChannel(user string) string { return "user:" + user }

// RoomChannel names the channel that reaches every stream in one room.
func RoomChannel(room string) string { return "room:" + room }

// CheckName reports why s is not a valid user id or room name:
// 1–128 characters of letters, digits and _ - . : @.
// The rule keeps names safe inside Redis channel names, SSE fields and logs.
func CheckName(s string) error {
	if s == "" {
		return fmt.Errorf("name is empty")
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("name is %d bytes long, more than %d", len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '_', c == '-', c == '.', c == ':', c == '@':
		default:
			return fmt.Errorf("name %q has a character other than letters, digits and _ - . : @", truncate(s, 40))
		}
	}
	return nil
}

// CheckChannel reports why ch is not a logical channel a backend may
// publish on: broadcast, user:<id> or room:<name>.
func CheckChannel(ch string) error {
	if ch == BroadcastChannel {
		return nil
	}
	for _, prefix := range []string{"user:", "room:"} {
		if name, ok := strings.CutPrefix(ch, prefix); ok {
			if err := CheckName(name); err != nil {
				return fmt.Errorf("channel %q: %v", truncate(ch, 40), err)
			}
			return nil
		}
	}
	return fmt.Errorf("channel %q: want broadcast, user:<id> or room:<name>", truncate(ch, 40))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// RoomOf returns the room a logical channel names, if it is a room channel.
func RoomOf(channel string) (string, bool) {
	return strings.CutPrefix(channel, "room:")
}

// ParseRooms reads a ?rooms= list: names separated by commas, each checked,
// duplicates dropped. At most max names are accepted, so that one request
// cannot make the service subscribe to an unbounded number of channels.
func ParseRooms(list string, max int) ([]string, error) {
	var rooms []string
	for r := range strings.SplitSeq(list, ",") {
		if err := CheckName(r); err != nil {
			return nil, err
		}
		if !slices.Contains(rooms, r) {
			if len(rooms) == max {
				return nil, fmt.Errorf("more than %d rooms", max)
			}
			rooms = append(rooms, r)
		}
	}
	return rooms, nil
}
