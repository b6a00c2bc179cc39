package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// publishCall is one PublishOnce of a test case.
type publishCall struct {
	channel, envelope, key string
}

// TestPublishOnce: publishes with idempotency keys, each case on a fresh
// Redis, counting what the history holds and what was PUBLISHed.
func TestPublishOnce(t *testing.T) {
	const env1, env2 = `{"event":"e","data":1}`, `{"event":"e","data":2}`
	tests := []struct {
		name     string
		calls    []publishCall
		replayed []bool  // per call
		refused  []error // per call; nil: published or replayed
		sameID   bool    // the calls that went through have one id
		events   map[string]int64
	}{
		{"same key twice", []publishCall{{"room:a", env1, "k1"}, {"room:a", env1, "k1"}},
			[]bool{false, true}, []error{nil, nil}, true, map[string]int64{"room:a": 1}},
		{"same key, another envelope", []publishCall{{"room:a", env1, "k1"}, {"room:a", env2, "k1"}},
			[]bool{false, false}, []error{nil, store.ErrIdempotencyKeyReused}, true, map[string]int64{"room:a": 1}},
		{"same key, another channel", []publishCall{{"room:a", env1, "k1"}, {"room:b", env1, "k1"}},
			[]bool{false, false}, []error{nil, store.ErrIdempotencyKeyReused}, true, map[string]int64{"room:a": 1, "room:b": 0}},
		{"two keys", []publishCall{{"room:a", env1, "k1"}, {"room:a", env1, "k2"}},
			[]bool{false, false}, []error{nil, nil}, false, map[string]int64{"room:a": 2}},
		{"no key, twice", []publishCall{{"room:a", env1, ""}, {"room:a", env1, ""}},
			[]bool{false, false}, []error{nil, nil}, false, map[string]int64{"room:a": 2}},
		{"a key of sf-string characters", []publishCall{{"room:a", env1, `"a,b;c=d"`}, {"room:a", env1, `"a,b;c=d"`}},
			[]bool{false, true}, []error{nil, nil}, true, map[string]int64{"room:a": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rdb := redistest.Start(t).Client()
			h := store.NewHistory(rdb, "sse:", 100, 1<<16, time.Hour)
			if _, err := h.Configure(ctx); err != nil {
				t.Fatal(err)
			}
			count := countPublishes(ctx, t, rdb, "sse:room:a", "sse:room:b")
			ids := map[string]bool{}
			for i, c := range tt.calls {
				id, replayed, err := h.PublishOnce(ctx, c.channel, []byte(c.envelope), c.key)
				if !errors.Is(err, tt.refused[i]) || (tt.refused[i] == nil) != (err == nil) {
					t.Fatalf("call %d: err %v, want %v", i, err, tt.refused[i])
				}
				if replayed != tt.replayed[i] {
					t.Fatalf("call %d: replayed %v, want %v", i, replayed, tt.replayed[i])
				}
				if err == nil {
					ids[id.String()] = true
				}
			}
			if tt.sameID != (len(ids) == 1) {
				t.Fatalf("ids %v: want one id: %v", ids, tt.sameID)
			}
			published := count()
			for ch, want := range tt.events {
				if n := rdb.XLen(ctx, "sse:{"+ch+"}:history").Val(); n != want {
					t.Errorf("%s: %d events in the history, want %d", ch, n, want)
				}
				if published[ch] != want {
					t.Errorf("%s: %d durable events PUBLISHed, want %d", ch, published[ch], want)
				}
			}
		})
	}
}

// countPublishes subscribes to channels (full names) and returns a func
// that counts, per logical channel, the durable events published on them
// until then: it publishes an end mark on each and reads up to it, so it
// waits for nothing but the messages themselves.
func countPublishes(ctx context.Context, t *testing.T, rdb *redis.Client, channels ...string) func() map[string]int64 {
	t.Helper()
	ps := rdb.Subscribe(ctx, channels...)
	t.Cleanup(func() { ps.Close() })
	for range channels {
		if _, err := ps.ReceiveTimeout(ctx, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return func() map[string]int64 {
		t.Helper()
		for _, ch := range channels {
			if err := rdb.Publish(ctx, ch, "end").Err(); err != nil {
				t.Fatal(err)
			}
		}
		n := map[string]int64{}
		for ended := 0; ended < len(channels); {
			m, err := ps.ReceiveMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if m.Payload == "end" {
				ended++
				continue
			}
			if strings.HasPrefix(m.Payload, "\x00") {
				n[strings.TrimPrefix(m.Channel, "sse:")]++
			}
		}
		return n
	}
}

// TestPublishOnceRefusesBadKeys: the script checks the key as POST
// /publish does, and a position or a mark takes none.
func TestPublishOnceRefusesBadKeys(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client()
	h := store.NewHistory(rdb, "sse:", 100, 1<<16, time.Hour)
	if _, err := h.Configure(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, envelope, key, errHas string
	}{
		{"256 characters", `{"data":1}`, strings.Repeat("k", 256), "1-255 visible ASCII"},
		{"a space", `{"data":1}`, "a b", "1-255 visible ASCII"},
		{"a control character", `{"data":1}`, "a\x01", "1-255 visible ASCII"},
		{"not ASCII", `{"data":1}`, "é", "1-255 visible ASCII"},
		{"a mark", ``, "k", "a position or a mark"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := h.PublishOnce(ctx, "room:a", []byte(tt.envelope), tt.key)
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("err %v, want one saying %q", err, tt.errHas)
			}
		})
	}
	if _, _, err := h.PublishOnce(ctx, "room:a", []byte(`{"data":1}`), strings.Repeat("k", 255)); err != nil {
		t.Fatalf("a key of 255 characters: %v", err)
	}
	if n := rdb.XLen(ctx, "sse:{room:a}:history").Val(); n != 1 {
		t.Fatalf("%d events, want 1 (the refused calls wrote nothing)", n)
	}
}

// TestPublishOnceWindow: the key is remembered for IDEMPOTENCY_WINDOW, as
// Configure wrote it, and once Redis has expired it, the same key
// publishes again.
func TestPublishOnceWindow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb := redistest.Start(t).Client()
	h := store.NewHistory(rdb, "sse:", 100, 1<<16, time.Hour)
	h.IdempotencyWindow(1500 * time.Millisecond) // idemttl 2: whole seconds, rounded up
	if _, err := h.Configure(ctx); err != nil {
		t.Fatal(err)
	}
	if v := rdb.HGet(ctx, "sse:config", "idemttl").Val(); v != "2" {
		t.Fatalf("config idemttl %q, want 2", v)
	}
	env := []byte(`{"data":1}`)
	first, _, err := h.PublishOnce(ctx, "room:a", env, "k")
	if err != nil {
		t.Fatal(err)
	}
	if ttl := rdb.PTTL(ctx, "sse:idem:k").Val(); ttl <= 0 || ttl > 2*time.Second {
		t.Fatalf("the key's record expires in %v, want within the window (2s)", ttl)
	}
	// Redis's own expiry, waited for as a condition.
	for rdb.Exists(ctx, "sse:idem:k").Val() == 1 {
		if ctx.Err() != nil {
			t.Fatal("the key's record did not expire")
		}
		time.Sleep(50 * time.Millisecond)
	}
	second, replayed, err := h.PublishOnce(ctx, "room:a", env, "k")
	if err != nil || replayed || second == first {
		t.Fatalf("after the window: %v replayed %v err %v; want a new event (first %v)", second, replayed, err, first)
	}
	if n := rdb.XLen(ctx, "sse:{room:a}:history").Val(); n != 2 {
		t.Fatalf("%d events, want 2", n)
	}
}

// TestPublishScriptFromABackend: a backend's raw EVAL with 3 arguments
// publishes as before; with a key, the repeat answers the first id (a
// string, as any call does), and the default window (no idemttl in the
// config: an instance of an earlier version wrote it) is 300 s.
func TestPublishScriptFromABackend(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client()
	if _, err := store.NewHistory(rdb, "sse:", 100, 1<<16, time.Hour).Configure(ctx); err != nil {
		t.Fatal(err)
	}
	rdb.HDel(ctx, "sse:config", "idemttl")
	eval := func(args ...any) (string, error) {
		return rdb.Eval(ctx, store.PublishScript, nil, args...).Text()
	}
	old, err := eval("sse:", "room:a", `{"data":0}`)
	if _, perr := wire.ParseCursor(old); err != nil || perr != nil {
		t.Fatalf("3 arguments: %q %v %v", old, err, perr)
	}
	empty, err := eval("sse:", "room:a", `{"data":0}`, "")
	if err != nil || empty == old {
		t.Fatalf("an empty key: %q %v, want a new id", empty, err)
	}
	a, err := eval("sse:", "room:a", `{"data":1}`, "order-17")
	if err != nil {
		t.Fatal(err)
	}
	b, err := eval("sse:", "room:a", `{"data":1}`, "order-17")
	if err != nil || b != a {
		t.Fatalf("the repeat: %q %v, want %q", b, err, a)
	}
	if _, err := eval("sse:", "room:a", `{"data":2}`, "order-17"); err == nil || !strings.HasPrefix(err.Error(), "IDEMPOTENCY_KEY_REUSED") {
		t.Fatalf("another envelope: %v, want IDEMPOTENCY_KEY_REUSED", err)
	}
	if n := rdb.XLen(ctx, "sse:{room:a}:history").Val(); n != 3 {
		t.Fatalf("%d events, want 3", n)
	}
	if ttl := rdb.TTL(ctx, "sse:idem:order-17").Val(); ttl <= 290*time.Second || ttl > 300*time.Second {
		t.Fatalf("the record expires in %v, want 300s", ttl)
	}
}
