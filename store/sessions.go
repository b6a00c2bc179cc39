package store

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/group"
	"github.com/ssebridge/ssebridge/wire"
)

// Sessions reads the sessions the backend writes into Redis.
type Sessions struct {
	rdb      redis.Cmdable
	prefix   string
	maxBytes int

	// lookups pipelines the lookups made at the same time (a mass
	// reconnect's openings): one round trip for a batch.
	lookups *group.Commit[string, lookup]
}

// lookup is a session read in a batch of Lookups.
type lookup struct {
	session wire.Session
	err     error
}

// lookupBatchMax bounds a pipeline of session reads (each reply up to
// MAX_SESSION_BYTES).
const lookupBatchMax = 64

// NewSessions returns a reader for sessions stored under prefix+token,
// refusing values longer than maxBytes.
func NewSessions(rdb redis.Cmdable, prefix string, maxBytes int) *Sessions {
	s := &Sessions{rdb: rdb, prefix: prefix, maxBytes: maxBytes}
	s.lookups = &group.Commit[string, lookup]{Run: s.lookupBatch, Max: lookupBatchMax}
	return s
}

// Lookup loads and checks the session stored under token. The token is a
// secret: it never appears in an error. Lookups made at the same time go
// out in one pipeline.
func (s *Sessions) Lookup(ctx context.Context, token string) (wire.Session, error) {
	if token == "" {
		return wire.Session{}, wire.ErrNoSession
	}
	r, left := s.lookups.Do(ctx, token)
	return r.session, cmp.Or(left, r.err)
}

// lookupBatch reads a batch of Lookups: alone, or pipelined (LookupMany).
func (s *Sessions) lookupBatch(ctx context.Context, tokens []string) []lookup {
	out := make([]lookup, len(tokens))
	if len(tokens) == 1 {
		out[0].session, out[0].err = s.parse(s.rdb.GetRange(ctx, s.prefix+tokens[0], 0, int64(s.maxBytes)))
		return out
	}
	sessions, errs, err := s.LookupMany(ctx, tokens)
	for i := range out {
		if err != nil {
			out[i].err = err
			continue
		}
		out[i].session, out[i].err = sessions[i], errs[i]
	}
	return out
}

// LookupMany reads the sessions of tokens in one pipelined round trip, as
// Lookup would each. The error is Redis's; each session's own error is in
// errs.
func (s *Sessions) LookupMany(ctx context.Context, tokens []string) (sessions []wire.Session, errs []error, err error) {
	if len(tokens) == 0 {
		return nil, nil, nil
	}
	cmds := make([]*redis.StringCmd, len(tokens))
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, t := range tokens {
			// GETRANGE reads at most maxBytes+1 bytes, so an oversized
			// value is refused without pulling it across the network whole.
			cmds[i] = p.GetRange(ctx, s.prefix+t, 0, int64(s.maxBytes))
		}
		return nil
	})
	if err != nil && !isWrongType(err) {
		return nil, nil, fmt.Errorf("reading sessions: %w", err)
	}
	sessions, errs = make([]wire.Session, len(tokens)), make([]error, len(tokens))
	for i, c := range cmds {
		sessions[i], errs[i] = s.parse(c)
	}
	return sessions, errs, nil
}

func (s *Sessions) parse(cmd *redis.StringCmd) (wire.Session, error) {
	raw, err := cmd.Bytes()
	if isWrongType(err) {
		return wire.Session{}, fmt.Errorf("%w: the key does not hold a string", wire.ErrBadSession)
	}
	if err != nil {
		return wire.Session{}, fmt.Errorf("reading session: %w", err)
	}
	if len(raw) == 0 {
		// GETRANGE answers "" for a missing key; an empty value is no session either.
		return wire.Session{}, wire.ErrNoSession
	}
	if len(raw) > s.maxBytes {
		return wire.Session{}, fmt.Errorf("%w: value is longer than %d bytes", wire.ErrBadSession, s.maxBytes)
	}
	return wire.ParseSession(raw)
}

func isWrongType(err error) bool {
	var replyErr redis.Error
	return errors.As(err, &replyErr) && strings.HasPrefix(replyErr.Error(), "WRONGTYPE")
}

// Create stores a new session as a backend would and returns its token.
// ssebridge itself only uses it for the try-out login of embedded mode.
func (s *Sessions) Create(ctx context.Context, sess wire.Session, ttl time.Duration) (string, error) {
	token := make([]byte, 24)
	if _, err := rand.Read(token); err != nil {
		return "", err
	}
	t := base64.RawURLEncoding.EncodeToString(token)
	rooms := sess.Rooms
	if rooms == nil {
		rooms = []string{}
	}
	v := map[string]any{"user": sess.User, "rooms": rooms}
	if len(sess.Granted) > 0 {
		v["granted"] = sess.Granted
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	if err := s.rdb.Set(ctx, s.prefix+t, raw, ttl).Err(); err != nil {
		return "", fmt.Errorf("storing session: %w", err)
	}
	return t, nil
}

// Delete removes the session stored under token, as the backend's logout
// does. ssebridge itself only uses it for the try-out logout.
func (s *Sessions) Delete(ctx context.Context, token string) error {
	if err := s.rdb.Del(ctx, s.prefix+token).Err(); err != nil {
		return fmt.Errorf("deleting session: %w", err)
	}
	return nil
}
