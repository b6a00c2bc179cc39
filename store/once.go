package store

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/wire"
)

// ErrIdempotencyKeyReused means a publish repeated an idempotency key seen
// within the window with another channel or envelope: a key names one
// event, so the second is refused (POST /publish: 422).
var ErrIdempotencyKeyReused = errors.New("idempotency key reused with another channel or envelope")

// once is a command go-redis must not send again by itself: a publish
// script that failed on the network (a reset, EOF, a read timeout) may
// have run, and running it again would publish a second event under a
// second id. go-redis's retry loops (Client, ClusterClient, pipelines)
// all honour NoRetry; MOVED and ASK are still followed, as those replies
// say the command did not run.
type once struct{ *redis.Cmd }

func (once) NoRetry() bool { return true }

// processor runs one command: a client, a cluster client, a connection or
// a pipeline.
type processor interface {
	Process(ctx context.Context, cmd redis.Cmder) error
}

// onceScript is a publish script, run with once: EVALSHA, and EVAL only
// on NOSCRIPT, which says the script did not run.
type onceScript struct {
	src, sha string
}

func newOnceScript(src string) *onceScript {
	h := sha1.Sum([]byte(src))
	return &onceScript{src: src, sha: hex.EncodeToString(h[:])}
}

// cmd is the script's EVALSHA (sha) or EVAL.
func (s *onceScript) cmd(ctx context.Context, sha bool, keys []string, args []any) *redis.Cmd {
	a := make([]any, 0, 3+len(keys)+len(args))
	if sha {
		a = append(a, "evalsha", s.sha)
	} else {
		a = append(a, "eval", s.src)
	}
	a = append(a, len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	return redis.NewCmd(ctx, append(a, args...)...)
}

// notRunAttempts bounds run's own retries of replies that say the script
// did not run (what go-redis retried before NoRetry turned that off).
const notRunAttempts = 4

// run runs the script on rdb, never twice unless Redis said it did not
// run it: NOSCRIPT (then EVAL), or a node loading, read-only, down or
// mid-migration (then again, after a short pause, as go-redis would).
func (s *onceScript) run(ctx context.Context, rdb processor, keys []string, args ...any) *redis.Cmd {
	b := newBackoff(8*time.Millisecond, 512*time.Millisecond)
	for attempt := 1; ; attempt++ {
		cmd := s.cmd(ctx, true, keys, args)
		_ = rdb.Process(ctx, once{cmd})
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			cmd = s.cmd(ctx, false, keys, args)
			_ = rdb.Process(ctx, once{cmd})
		}
		if attempt == notRunAttempts || !notRun(cmd.Err()) || !sleep(ctx, b.next()) {
			return cmd
		}
	}
}

// notRun reports whether err is a reply Redis gives before running a
// script (or, READONLY, at its first write, before which the publish
// scripts only read).
func notRun(err error) bool {
	for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// scriptReply reads a publish script's reply to a call with the report
// flag ("1"): {id, 1 if a replay of an idempotency key else 0}.
func scriptReply(cmd *redis.Cmd) (id wire.Cursor, replayed bool, err error) {
	v, err := cmd.Slice()
	if err != nil {
		if redis.HasErrorPrefix(err, "IDEMPOTENCY_KEY_REUSED") {
			return wire.Cursor{}, false, fmt.Errorf("%w: %w", ErrIdempotencyKeyReused, err)
		}
		return wire.Cursor{}, false, err
	}
	if len(v) != 2 {
		return wire.Cursor{}, false, fmt.Errorf("publish script: unexpected reply %v", v)
	}
	s, _ := v[0].(string)
	n, _ := v[1].(int64)
	id, err = wire.ParseCursor(s)
	return id, n == 1, err
}
