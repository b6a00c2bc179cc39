package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
)

// TestPublishCommandIdempotencyKey: `ssebridge publish` passes a key to
// the script (-redis) or as the Idempotency-Key header (POST /publish):
// the one given, or a new random one per call; a repeat with the same key
// prints the first id and publishes nothing.
func TestPublishCommandIdempotencyKey(t *testing.T) {
	for _, v := range []string{"REDIS_URL", "REDIS_CLUSTER_ADDRS", "PUBLISH_TOKEN", "CHANNEL_PREFIX"} {
		t.Setenv(v, "")
	}
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client()
	if _, err := store.NewHistory(rdb, "sse:", 100, 1<<16, time.Hour).Configure(ctx); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, error) {
		var out, errOut bytes.Buffer
		err := publishCommand(ctx, append([]string{"-channel", "room:a", "-data", "1"}, args...), &out, &errOut)
		return strings.TrimSpace(out.String()), errOut.String(), err
	}

	t.Run("through Redis", func(t *testing.T) {
		first, _, err := run("-redis", srv.Addr, "-idempotency-key", "order-17")
		if err != nil {
			t.Fatal(err)
		}
		again, stderr, err := run("-redis", srv.Addr, "-idempotency-key", "order-17")
		if err != nil || again != first || !strings.Contains(stderr, "nothing published now") {
			t.Fatalf("the repeat: %q %q %v; want %q and a word on stderr", again, stderr, err, first)
		}
		if _, _, err := run("-redis", srv.Addr); err != nil { // a random key
			t.Fatal(err)
		}
		if _, _, err := run("-redis", srv.Addr); err != nil {
			t.Fatal(err)
		}
		if n := rdb.XLen(ctx, "sse:{room:a}:history").Val(); n != 3 {
			t.Fatalf("%d events, want 3", n)
		}
		if _, _, err := run("-redis", srv.Addr, "-idempotency-key", "a b"); err == nil || !strings.Contains(err.Error(), "-idempotency-key") {
			t.Fatalf("a key with a space: %v, want a usage error", err)
		}
	})

	t.Run("through POST /publish", func(t *testing.T) {
		var mu sync.Mutex
		var keys []string
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			keys = append(keys, r.Header.Get("Idempotency-Key"))
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			if r.Header.Get("Idempotency-Key") == "down" {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(`{"error":"redis unavailable"}`))
				return
			}
			_, _ = w.Write([]byte(`{"id":"e:1-0"}`))
		}))
		defer hs.Close()
		for range 2 {
			if _, _, err := run("-url", hs.URL, "-token", "t"); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := run("-url", hs.URL, "-token", "t", "-idempotency-key", "mine"); err != nil {
			t.Fatal(err)
		}
		_, _, err := run("-url", hs.URL, "-token", "t", "-idempotency-key", "down")
		if err == nil || !strings.Contains(err.Error(), "-idempotency-key down") {
			t.Fatalf("a 503: %v, want the way to retry it, naming the key", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(keys) != 4 || keys[0] == "" || keys[1] == "" || keys[0] == keys[1] || keys[2] != "mine" {
			t.Fatalf("keys sent %q: want two random ones, then mine", keys)
		}
	})
}

// TestPublishCommandNoHintWhenNothingWasSent: a connection refused sent
// nothing, so the error does not say the event may have been published.
func TestPublishCommandNoHintWhenNothingWasSent(t *testing.T) {
	for _, v := range []string{"REDIS_URL", "REDIS_CLUSTER_ADDRS", "PUBLISH_TOKEN"} {
		t.Setenv(v, "")
	}
	var out, errOut bytes.Buffer
	err := publishCommand(context.Background(), []string{"-channel", "room:a", "-data", "1", "-url", "http://127.0.0.1:1", "-token", "t"}, &out, &errOut)
	if err == nil || strings.Contains(err.Error(), "may have been published") {
		t.Fatalf("connection refused: %v; want an error without the retry hint", err)
	}
}
