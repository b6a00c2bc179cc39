package store

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Errors a session lookup can return. Anything else is Redis being unreachable.
var (
	// ErrNoSession means no session is stored under the token: never created,
	// expired or deleted by a logout.
	ErrNoSession = errors.New("no such session")
	// ErrBadSession means the stored value is not a session; the error wrapping
	// it says why. It is the backend's bug, and the stream is refused.
	ErrBadSession = errors.New("malformed session")
)

// Session is what the backend stored for a logged-in user.
type Session struct {
	User  string
	Rooms []string
}

// Sessions reads the sessions the backend writes into Redis.
type Sessions struct {
	rdb      *redis.Client
	prefix   string
	maxBytes int
}

// NewSessions returns a reader for sessions stored under prefix+token,
// refusing values longer than maxBytes.
func NewSessions(rdb *redis.Client, prefix string, maxBytes int) *Sessions {
	return &Sessions{rdb: rdb, prefix: prefix, maxBytes: maxBytes}
}

// Lookup loads and checks the session stored under token. The token is a
// secret: it never appears in an error.
func (s *Sessions) Lookup(ctx context.Context, token string) (Session, error) {
	if token == "" {
		return Session{}, ErrNoSession
	}
	key := s.prefix + token
	// GETRANGE reads at most maxBytes+1 bytes, so an oversized value is
	// refused without pulling it across the network whole.
	raw, err := s.rdb.GetRange(ctx, key, 0, int64(s.maxBytes)).Bytes()
	var replyErr redis.Error
	if errors.As(err, &replyErr) && strings.HasPrefix(replyErr.Error(), "WRONGTYPE") {
		return Session{}, fmt.Errorf("%w: the key does not hold a string", ErrBadSession)
	}
	if err != nil {
		return Session{}, fmt.Errorf("reading session: %w", err)
	}
	if len(raw) == 0 {
		// GETRANGE answers "" for a missing key; an empty value is no session either.
		return Session{}, ErrNoSession
	}
	if len(raw) > s.maxBytes {
		return Session{}, fmt.Errorf("%w: value is longer than %d bytes", ErrBadSession, s.maxBytes)
	}
	return ParseSession(raw)
}

// Missing returns those of tokens whose session no longer exists, in one
// pipelined round trip. It is how open streams learn of a logout done by
// deleting the key.
func (s *Sessions) Missing(ctx context.Context, tokens []string) ([]string, error) {
	if len(tokens) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.IntCmd, len(tokens))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, t := range tokens {
			cmds[i] = p.Exists(ctx, s.prefix+t)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("checking sessions: %w", err)
	}
	var gone []string
	for i, c := range cmds {
		if c.Val() == 0 {
			gone = append(gone, tokens[i])
		}
	}
	return gone, nil
}

// ParseSession checks a stored session value: a JSON object whose "user" is
// a valid name (string or integer) and whose optional "rooms" is an array of
// valid room names. Other fields are ignored.
func ParseSession(raw []byte) (Session, error) {
	var v struct {
		User  json.RawMessage `json:"user"`
		Rooms []string        `json:"rooms"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return Session{}, fmt.Errorf("%w: not a JSON object with \"user\" and \"rooms\": %v", ErrBadSession, err)
	}
	user, err := parseUser(v.User)
	if err != nil {
		return Session{}, fmt.Errorf("%w: %v", ErrBadSession, err)
	}
	for _, r := range v.Rooms {
		if err := CheckName(r); err != nil {
			return Session{}, fmt.Errorf("%w: room: %v", ErrBadSession, err)
		}
	}
	return Session{User: user, Rooms: v.Rooms}, nil
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

// Create stores a new session as a backend would and returns its token.
// ssebridge itself only uses it for the try-out login of embedded mode.
func (s *Sessions) Create(ctx context.Context, sess Session, ttl time.Duration) (string, error) {
	token := make([]byte, 24)
	if _, err := rand.Read(token); err != nil {
		return "", err
	}
	t := base64.RawURLEncoding.EncodeToString(token)
	rooms := sess.Rooms
	if rooms == nil {
		rooms = []string{}
	}
	v, err := json.Marshal(map[string]any{"user": sess.User, "rooms": rooms})
	if err != nil {
		return "", err
	}
	if err := s.rdb.Set(ctx, s.prefix+t, v, ttl).Err(); err != nil {
		return "", fmt.Errorf("storing session: %w", err)
	}
	return t, nil
}
