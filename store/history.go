package store

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// PublishScript is the durable publish script, as a backend runs it:
// EVAL/EVALSHA with 0 keys and the arguments prefix, channel, envelope.
//
//go:embed publish.lua
var PublishScript string

// History keeps each channel's recent durable events in a capped Redis
// stream, so that a stream that reconnects with its last id gets what it
// missed, and so that a Redis gap can be filled.
type History struct {
	rdb    *redis.Client
	prefix string
	maxlen int
	ttl    time.Duration
	script *redis.Script
}

// Durable is one event read back from history.
type Durable struct {
	Cursor   Cursor
	Channel  string
	Envelope []byte
}

// Replay is what a stream that resumes must send before it goes live.
type Replay struct {
	Events   []Durable // after the resume cursor, in order
	Position Cursor    // the newest durable id now
	Reset    string    // why the cursor cannot be resumed; "" when it can
}

// Reasons a resume cursor cannot be honoured.
const (
	ResetMalformed = "malformed" // not a cursor
	ResetEpoch     = "epoch"     // from before Redis lost its data, or from another Redis
	ResetFuture    = "foreign"   // newer than any event: not from this Redis
	ResetTooOld    = "too_old"   // older than HISTORY_TTL
	ResetTrimmed   = "trimmed"   // events after it were trimmed by HISTORY_MAXLEN
	ResetTooLarge  = "too_large" // more to replay than REPLAY_MAX_BYTES
)

// NewHistory returns the history of channels named prefix+name, keeping
// maxlen events per channel for ttl after the channel's last publish.
func NewHistory(rdb *redis.Client, prefix string, maxlen int, ttl time.Duration) *History {
	return &History{rdb: rdb, prefix: prefix, maxlen: maxlen, ttl: ttl, script: redis.NewScript(PublishScript)}
}

// Configure writes maxlen and ttl where the publish script reads them, so a
// backend calling the script needs to know neither.
func (h *History) Configure(ctx context.Context) error {
	err := h.rdb.HSet(ctx, h.prefix+"config", "maxlen", h.maxlen, "ttl", int(h.ttl.Seconds())).Err()
	if err != nil {
		return fmt.Errorf("writing history config: %w", err)
	}
	return nil
}

// Publish appends envelope to channel's history and publishes it live, in
// one atomic step, and returns its id.
func (h *History) Publish(ctx context.Context, channel string, envelope []byte) (Cursor, error) {
	s, err := h.script.Run(ctx, h.rdb, nil, h.prefix, channel, envelope).Text()
	if err != nil {
		return Cursor{}, fmt.Errorf("durable publish on %s: %w", channel, err)
	}
	return ParseCursor(s)
}

// Position takes a new id that follows every durable event published so
// far: where a new stream starts.
func (h *History) Position(ctx context.Context) (Cursor, error) {
	return h.Publish(ctx, "", nil)
}

// Mark takes a new id and publishes it on channel, with no event: streams
// that get it move their id on, so an idle stream's id never grows older
// than the retention.
func (h *History) Mark(ctx context.Context, channel string) error {
	_, err := h.Publish(ctx, channel, nil)
	return err
}

// Since returns the durable events of channels after cursor, in order, in
// one round trip; or, when they cannot all be had, why the stream must reset.
func (h *History) Since(ctx context.Context, channels []string, after Cursor) (Replay, error) {
	var (
		pos   *redis.StringCmd
		clock *redis.TimeCmd
		xr    = make([]*redis.XMessageSliceCmd, len(channels))
		trim  = make([]*redis.StringCmd, len(channels))
	)
	start := Cursor{Epoch: after.Epoch, MS: after.MS, N: after.N + 1}.entryID()
	_, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		pos = p.Get(ctx, h.prefix+"position")
		clock = p.Time(ctx)
		for i, ch := range channels {
			key := h.prefix + "history:" + ch
			xr[i] = p.XRange(ctx, key, start, "+")
			trim[i] = p.Get(ctx, key+":trimmed")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return Replay{}, fmt.Errorf("reading history: %w", err)
	}
	if pos.Val() == "" {
		// Redis lost its data (or was never used): the cursor is from
		// another epoch. Start a new one.
		position, err := h.Position(ctx)
		return Replay{Position: position, Reset: ResetEpoch}, err
	}
	position, err := ParseCursor(pos.Val())
	if err != nil {
		return Replay{}, fmt.Errorf("reading history: position %q: %w", pos.Val(), err)
	}
	r := Replay{Position: position}
	switch {
	case after.Epoch != position.Epoch:
		r.Reset = ResetEpoch
	case position.Before(after):
		r.Reset = ResetFuture
	case after.MS+uint64(h.ttl.Milliseconds()) < uint64(clock.Val().UnixMilli()):
		r.Reset = ResetTooOld
	}
	if r.Reset != "" {
		return r, nil
	}
	for i, ch := range channels {
		if w := trim[i].Val(); w != "" {
			if trimmed, err := parseEntryID(after.Epoch, w); err == nil && after.Before(trimmed) {
				return Replay{Position: position, Reset: ResetTrimmed}, nil
			}
		}
		for _, m := range xr[i].Val() {
			c, err := parseEntryID(after.Epoch, m.ID)
			env, ok := m.Values["e"].(string)
			if err != nil || !ok {
				continue // not written by publish.lua
			}
			r.Events = append(r.Events, Durable{Cursor: c, Channel: ch, Envelope: []byte(env)})
		}
	}
	slices.SortFunc(r.Events, func(a, b Durable) int {
		switch {
		case a.Cursor.Before(b.Cursor):
			return -1
		case b.Cursor.Before(a.Cursor):
			return 1
		}
		return 0
	})
	return r, nil
}
