package store

import (
	"cmp"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/group"
	"github.com/ssebridge/ssebridge/wire"
)

// PublishScript is the durable publish script, as a backend runs it:
// EVAL/EVALSHA with 0 keys and the arguments prefix, channel, envelope,
// and optionally an idempotency key.
//
//go:embed publish.lua
var PublishScript string

//go:embed read.lua
var readScript string

// History keeps each channel's recent durable events in a capped Redis
// stream, so that a stream that reconnects with its last id gets what it
// missed, and so that a gap in the pub/sub feed can be filled.
type History struct {
	rdb      *redis.Client
	prefix   string
	maxlen   int
	maxBytes int
	ttl      time.Duration
	publish  *onceScript
	read     *redis.Script
	size     *redis.Script

	waitReplicas int           // WaitReplicas; 0: no WAIT
	waitTimeout  time.Duration // WaitReplicas
	idemWindow   time.Duration // IdempotencyWindow; 0: the script's default

	// publishes pipelines the publishes made at the same time (POST
	// /publish's concurrent requests): one round trip for a batch, where
	// each alone costs Redis a read and a write system call.
	publishes *group.Commit[publishCall, publishResult]
}

// publishCall is one durable publish of a batch; publishResult its outcome.
type publishCall struct {
	channel  string
	envelope []byte
	key      string
}

type publishResult struct {
	id       wire.Cursor
	replayed bool
	err      error
}

// publishBatchMax bounds a pipeline of publishes: a batch is written
// before its replies are read, and a reply holds an id, so this bounds
// the buffers too.
const publishBatchMax = 64

// NewHistory returns the history of channels named prefix+name, keeping
// maxlen events per channel for ttl after the channel's last publish, and
// refusing envelopes over maxBytes.
func NewHistory(rdb *redis.Client, prefix string, maxlen, maxBytes int, ttl time.Duration) *History {
	h := &History{
		rdb: rdb, prefix: prefix, maxlen: maxlen, maxBytes: maxBytes, ttl: ttl,
		publish: newOnceScript(PublishScript),
		read:    redis.NewScript(readScript),
		size:    redis.NewScript(sizeScript),
	}
	h.publishes = &group.Commit[publishCall, publishResult]{Run: h.publishBatch, Max: publishBatchMax}
	return h
}

// publishBatch runs the publish script for each call, in one pipeline
// when there are several: EVALSHA each, never sent twice by go-redis
// (once); a call Redis says did not run (NOSCRIPT, a node loading, …) is
// run again alone, as onceScript.run would.
func (h *History) publishBatch(ctx context.Context, calls []publishCall) []publishResult {
	args := func(c publishCall) []any { return []any{h.prefix, c.channel, c.envelope, c.key, "1"} }
	out := make([]publishResult, len(calls))
	cmds := make([]*redis.Cmd, len(calls))
	if len(calls) == 1 {
		cmds[0] = h.publish.run(ctx, h.rdb, nil, args(calls[0])...)
	} else {
		_, _ = h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, c := range calls {
				cmds[i] = h.publish.cmd(ctx, true, nil, args(c))
				_ = p.Process(ctx, once{cmds[i]})
			}
			return nil
		})
	}
	for i, c := range calls {
		if err := cmds[i].Err(); len(calls) > 1 && (redis.HasErrorPrefix(err, "NOSCRIPT") || notRun(err)) {
			cmds[i] = h.publish.run(ctx, h.rdb, nil, args(c)...)
		}
		out[i].id, out[i].replayed, out[i].err = scriptReply(cmds[i])
	}
	return out
}

// Configure writes maxlen, ttl and the size limit where the publish script reads them, so a
// backend calling the script needs to know neither, and makes sure the
// deployment has a marker for durable framing. It returns the marker: the
// one already there, or a new random one if Redis had none (first start,
// or Redis lost its data). Every instance so reads the same marker.
func (h *History) Configure(ctx context.Context) (marker string, err error) {
	key := h.prefix + "config"
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	var get *redis.StringCmd
	_, err = h.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, "maxlen", h.maxlen, "ttl", int(h.ttl.Seconds()), "maxbytes", h.maxBytes, "idemttl", idemSeconds(h.idemWindow))
		p.HSetNX(ctx, key, "marker", hex.EncodeToString(b))
		get = p.HGet(ctx, key, "marker")
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("writing history config: %w", err)
	}
	return get.Val(), nil
}

// WaitReplicas makes Publish wait, after each durable event, until n
// replicas have it (Redis's WAIT, at most timeout), and fail when fewer
// did: replication is asynchronous, and an event the primary alone holds
// is lost if a replica is promoted in its place. (Not for ids alone:
// Position and PublishBareID store nothing.)
func (h *History) WaitReplicas(n int, timeout time.Duration) {
	h.waitReplicas, h.waitTimeout = n, timeout
}

// IdempotencyWindow sets how long the publish script remembers an
// idempotency key (IDEMPOTENCY_WINDOW): Configure writes it into the
// config, where the script reads it, so a backend need not pass it.
func (h *History) IdempotencyWindow(d time.Duration) { h.idemWindow = d }

// DefaultIdempotencyWindow is the publish scripts' window when the config
// names none.
const DefaultIdempotencyWindow = 5 * time.Minute

// idemSeconds is the config's idemttl for window d: whole seconds, at
// least 1 (Redis's EX), rounded up.
func idemSeconds(d time.Duration) int {
	if d <= 0 {
		d = DefaultIdempotencyWindow
	}
	return max(1, int((d+time.Second-1)/time.Second))
}

// ConfigureWithin calls Configure until it goes through, for at most
// patience: a Redis that has just restarted may still be loading its data
// (it answers SUBSCRIBE, and LOADING to the rest), and reading history
// before it is done would fail.
func (h *History) ConfigureWithin(ctx context.Context, patience time.Duration) (string, error) {
	deadline := time.Now().Add(patience)
	b := newBackoff(100*time.Millisecond, 2*time.Second)
	for {
		marker, err := h.Configure(ctx)
		if err == nil || time.Now().After(deadline) || !sleep(ctx, b.next()) {
			return marker, err
		}
	}
}

// Publish appends envelope to channel's history and publishes it live, in
// one atomic step, and returns its id. With WaitReplicas, an error may come
// with the id: the event is published, but not known to be on enough
// replicas. An error without an id may still mean published: the call
// may have run (PublishOnce makes a retry safe).
func (h *History) Publish(ctx context.Context, channel string, envelope []byte) (wire.Cursor, error) {
	id, _, err := h.PublishOnce(ctx, channel, envelope, "")
	return id, err
}

// PublishOnce is Publish with an idempotency key (key "": none): a key
// the script saw within the window returns the first publish's id, and
// replayed, having published nothing; with another channel or envelope
// it is ErrIdempotencyKeyReused. The script is sent once (never retried
// by go-redis), so one call publishes at most one event.
func (h *History) PublishOnce(ctx context.Context, channel string, envelope []byte, key string) (id wire.Cursor, replayed bool, err error) {
	publish := func() (wire.Cursor, bool, error) {
		if h.waitReplicas > 0 && len(envelope) > 0 {
			return publishWaiting(ctx, h.rdb, h.publish, nil, []any{h.prefix, channel, envelope, key, "1"}, channel, h.waitReplicas, h.waitTimeout)
		}
		r, left := h.publishes.Do(ctx, publishCall{channel, envelope, key})
		id, replayed, err := r.id, r.replayed, cmp.Or(left, r.err)
		if err != nil {
			return id, false, fmt.Errorf("durable publish on %s: %w", channel, err)
		}
		return id, replayed, nil
	}
	id, replayed, err = publish()
	if err != nil && id.IsZero() && strings.Contains(err.Error(), "has not written") {
		// The config was lost while this instance stayed connected (a
		// FLUSHALL, an eviction): write it again, and publish once more
		// (the script refused, so it did not run). Instances read the new
		// marker when they first meet it.
		if _, cerr := h.Configure(ctx); cerr == nil {
			id, replayed, err = publish()
		}
	}
	return id, replayed, err
}

// pipeliner is a client or one connection (Cluster's publishWaitAsking).
type pipeliner interface {
	Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error)
}

// publishWaiting runs a durable publish script and then WAIT for replicas
// in one pipeline on rdb, so on one connection: WAIT waits for that
// connection's last write. An error may come with the id: the event is
// published, but not known to be on enough replicas. args end with the
// report flag: the script answers {id, replayed}. The pipeline holds a
// NoRetry command, so go-redis does not send it again.
func publishWaiting(ctx context.Context, rdb pipeliner, script *onceScript, keys []string, args []any, channel string, replicas int, timeout time.Duration) (wire.Cursor, bool, error) {
	var ev, acked *redis.Cmd
	pipe := func(sha bool) {
		_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			ev = script.cmd(ctx, sha, keys, args)
			_ = p.Process(ctx, once{ev})
			acked = p.Do(ctx, "wait", replicas, timeout.Milliseconds())
			return nil
		})
	}
	pipe(true)
	if redis.HasErrorPrefix(ev.Err(), "NOSCRIPT") {
		pipe(false) // a new primary, or a restarted one: no script cache yet
	}
	id, replayed, err := scriptReply(ev)
	if err != nil {
		return wire.Cursor{}, false, fmt.Errorf("durable publish on %s: %w", channel, err)
	}
	// A replay waits too: the script rewrites the key's record, so WAIT
	// covers the first publish, earlier in the replication stream.
	n, err := acked.Int64()
	if err != nil {
		return id, replayed, fmt.Errorf("durable publish on %s: %s published, WAIT failed: %w", channel, id, err)
	}
	if n < int64(replicas) {
		return id, replayed, fmt.Errorf("durable publish on %s: %s published, but on %d replicas of the %d wanted within %v (DURABLE_WAIT_REPLICAS): it would be lost in a failover now",
			channel, id, n, replicas, timeout)
	}
	return id, replayed, nil
}

// Position takes a new id that follows every durable event published so
// far: where a new stream starts.
func (h *History) Position(ctx context.Context) (wire.Cursor, error) {
	return h.Publish(ctx, "", nil)
}

// PublishBareID takes a new id and publishes it on channel, with no event: streams
// that get it move their id on, so an idle stream's id never grows older
// than the retention.
func (h *History) PublishBareID(ctx context.Context, channel string) error {
	_, err := h.Publish(ctx, channel, nil)
	return err
}

// pageEvents bounds the events of one page, as maxBytes bounds their size:
// it keeps each script call short, since Redis runs nothing else meanwhile.
const pageEvents = 1000

// Read returns one page of the durable events of channels, each after its
// own cursor in after, up to until (zero on a first read: the newest id
// now), in order, up to about maxBytes of envelopes. It says instead when
// the cursors cannot be honoured (Page.Reset): another epoch, a position
// Redis has not reached, older than the retention, or trimmed past. Each
// page is one script call, atomic; pages read up to the same until add up
// to one consistent snapshot, if each reads only the channels the one
// before left unfinished (Page.Finished).
func (h *History) Read(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, maxBytes int) (wire.Page, error) {
	if len(after) != len(channels) {
		return wire.Page{}, fmt.Errorf("reading history: %d cursors for %d channels", len(after), len(channels))
	}
	args := make([]any, 0, 4+2*len(channels))
	untilID := ""
	if !until.IsZero() {
		untilID = until.EntryID()
	}
	args = append(args, h.prefix, maxBytes, pageEvents, untilID)
	for i, ch := range channels {
		args = append(args, ch, after[i].EntryID())
	}
	res, err := h.read.Run(ctx, h.rdb, nil, args...).Slice()
	if err != nil {
		return wire.Page{}, fmt.Errorf("reading history: %w", err)
	}
	if len(res) != 6 {
		return wire.Page{}, fmt.Errorf("reading history: %d values from the script, want 6", len(res))
	}
	pos, _ := res[0].(string)
	now, _ := res[1].(int64)
	done, _ := res[2].(int64)
	trimmed, _ := res[3].([]any)
	flat, _ := res[4].([]any)
	left, _ := res[5].([]any)

	if pos == "" {
		// Redis lost its data (or was never used): the cursors are from
		// another epoch. Start a new one.
		position, err := h.Position(ctx)
		return wire.Page{Position: position, Reset: wire.ResetEpoch}, err
	}
	position, err := wire.ParseCursor(pos)
	if err != nil {
		return wire.Page{}, fmt.Errorf("reading history: cursor %q: %w", pos, err)
	}
	if !until.IsZero() && until.Epoch != position.Epoch {
		return wire.Page{Position: position, Reset: wire.ResetEpoch}, nil
	}
	// Every page, not only a first one: a channel trimmed past its cursor
	// between two pages has lost events, and a caller that fixed its
	// bound beforehand (the gap recovery) reads with until from the start.
	if reset := h.check(after, position, now, trimmed); reset != "" {
		return wire.Page{Position: position, Reset: reset}, nil
	}
	p := wire.Page{Position: position, More: done == 0}
	if !until.IsZero() {
		p.Position = until
	}
	if p.More {
		p.Finished = finished(channels, left)
	}
	for i := 0; i+2 < len(flat); i += 3 {
		idx, _ := flat[i].(int64)
		id, _ := flat[i+1].(string)
		env, _ := flat[i+2].(string)
		c, err := wire.ParseEntryID(position.Epoch, id)
		if err != nil || idx < 1 || int(idx) > len(channels) || env == "" {
			continue // not written by publish.lua
		}
		p.Events = append(p.Events, wire.Durable{Cursor: c, Channel: channels[idx-1], Envelope: []byte(env)})
	}
	return p, nil
}

// finished returns the channels whose 1-based index is not in left.
func finished(channels []string, left []any) []string {
	has := make([]bool, len(channels))
	for _, v := range left {
		if i, ok := v.(int64); ok && i >= 1 && int(i) <= len(channels) {
			has[i-1] = true
		}
	}
	var out []string
	for i, c := range channels {
		if !has[i] {
			out = append(out, c)
		}
	}
	return out
}

// Active returns those of channels whose history holds events after
// after, looked up in pipelined round trips of a thousand channels: a gap
// recovery over every channel of an instance reads only those. What is
// published after the look-up arrives live (the channels are subscribed).
func (h *History) Active(ctx context.Context, channels []string, after wire.Cursor) ([]string, error) {
	start := wire.Cursor{Epoch: after.Epoch, MS: after.MS, N: after.N + 1}.EntryID()
	var active []string
	for batch := range slices.Chunk(channels, 1000) {
		cmds := make([]*redis.XMessageSliceCmd, len(batch))
		_, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, ch := range batch {
				cmds[i] = p.XRangeN(ctx, h.prefix+"{"+ch+"}:history", start, "+", 1)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("looking up channels with events: %w", err)
		}
		for i, c := range cmds {
			if len(c.Val()) > 0 {
				active = append(active, batch[i])
			}
		}
	}
	return active, nil
}

// check says why cursors cannot be resumed against the current position,
// or "".
func (h *History) check(after []wire.Cursor, position wire.Cursor, nowMS int64, trimmed []any) string {
	for i, a := range after {
		switch {
		case a.Epoch != position.Epoch:
			return wire.ResetEpoch
		case position.Before(a):
			return wire.ResetFuture
		case a.MS+uint64(h.ttl.Milliseconds()) < uint64(nowMS):
			return wire.ResetTooOld
		}
		if i < len(trimmed) {
			if w, _ := trimmed[i].(string); w != "" {
				if t, err := wire.ParseEntryID(a.Epoch, w); err == nil && a.Before(t) {
					return wire.ResetTrimmed
				}
			}
		}
	}
	return ""
}
