package wire

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Errors of a session lookup. Anything else is Redis being unreachable.
var (
	// ErrNoSession means no session is stored under the token: never
	// created, expired or deleted by a logout.
	ErrNoSession = errors.New("no such session")
	// ErrBadSession means a stored value is not a session; the error
	// wrapping it says why. It is the backend's bug, and the stream is refused.
	ErrBadSession = errors.New("malformed session")
)

// Session is what the backend stored for a logged-in user.
type Session struct {
	User  string
	Rooms []string
	// Granted holds, per room, the position Redis's history was at when
	// the backend granted the room (see CheckGrant): a stream is never
	// sent the room's events from before it. A room without one was
	// granted before there was history to hide (sessions written by older
	// backends): its history is the stream's from any position.
	Granted map[string]string
}

// Allows reports whether the session lists room.
func (s Session) Allows(room string) bool {
	for _, r := range s.Rooms {
		if r == room {
			return true
		}
	}
	return false
}

// SessionID names the session stored under token, as it names user,
// without revealing the token: base64url of the first 16 bytes of
// SHA-256("ssebridge session id\x00" + token + "\x00" + user), 22
// characters. The user is in it because a backend may rewrite a session to
// another user under the same token (its streams then come back as that
// user): the page was drawn for the one before, and ssebridge.js must see
// another session, not the same one with a new user. ssebridge gives it to the page (in ready, and in
// /events/check's answer) so that ssebridge.js shares a stream only among
// the tabs of one session: the cookie is HttpOnly, and a page cannot tell
// otherwise whose session it holds. It is not a credential (a stream needs
// the token, which cannot be had back from it), and tells nothing the
// page's holder does not know; it is still never logged.
func SessionID(token, user string) string {
	sum := sha256.Sum256([]byte("ssebridge session id\x00" + token + "\x00" + user))
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}

// ParseSession checks a stored session value: a JSON object whose "user" is
// a valid name (string or integer), whose optional "rooms" is an array of
// valid room names, and whose optional "granted" maps rooms to positions.
// Keys are matched exactly, as the backend wrote them: encoding/json would
// match "USER" or "uſer" too, and the last match would win, so a session
// could read as another user than the backend's own reading of it. Other
// keys are ignored.
func ParseSession(raw []byte) (Session, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return Session{}, fmt.Errorf("%w: not a JSON object with \"user\" and \"rooms\": %v", ErrBadSession, err)
	}
	user, err := parseUser(obj["user"])
	if err != nil {
		return Session{}, fmt.Errorf("%w: %v", ErrBadSession, err)
	}
	var rooms []string
	if err := decodeOptional(obj["rooms"], &rooms); err != nil {
		return Session{}, fmt.Errorf("%w: \"rooms\" is not an array of strings: %v", ErrBadSession, err)
	}
	for _, r := range rooms {
		if err := CheckName(r); err != nil {
			return Session{}, fmt.Errorf("%w: room: %v", ErrBadSession, err)
		}
	}
	var granted map[string]string
	if err := decodeOptional(obj["granted"], &granted); err != nil {
		return Session{}, fmt.Errorf("%w: \"granted\" is not an object of strings: %v", ErrBadSession, err)
	}
	for room, pos := range granted {
		if err := CheckGrant(pos); err != nil {
			return Session{}, fmt.Errorf("%w: \"granted\": room %q: %v", ErrBadSession, truncate(room, 40), err)
		}
	}
	return Session{User: user, Rooms: rooms, Granted: granted}, nil
}

// decodeOptional decodes raw into v unless it is absent or null.
func decodeOptional(raw json.RawMessage, v any) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	return json.Unmarshal(raw, v)
}

func parseUser(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", errors.New(`"user" is missing`)
	}
	var user string
	switch raw[0] {
	case '"':
		if err := json.Unmarshal(raw, &user); err != nil {
			return "", fmt.Errorf(`"user": %v`, err)
		}
	default:
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return "", errors.New(`"user" is neither a string nor an integer`)
		}
		user = strconv.FormatInt(n, 10)
	}
	if err := CheckName(user); err != nil {
		return "", fmt.Errorf(`"user": %v`, err)
	}
	return user, nil
}
