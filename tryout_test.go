package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// tryOutEnv isolates a test from the machine's try-out file and from the
// variables that would make publish choose another way.
func tryOutEnv(t *testing.T) string {
	t.Helper()
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	for _, v := range []string{"REDIS_URL", "PUBLISH_TOKEN", "CHANNEL_PREFIX"} {
		t.Setenv(v, "")
	}
	return filepath.Join(cache, "ssebridge", "tryout.json")
}

// startEmbedded runs ssebridge as `go run .` does, with no REDIS_URL, and
// returns its URL and a function that stops it and waits.
func startEmbedded(t *testing.T) (string, func()) {
	t.Helper()
	cfg, err := loadConfig(map[string]string{"LISTEN_ADDR": "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr, done := make(chan string, 1), make(chan error, 1)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	go func() { done <- run(ctx, cfg, log, func(a string) { addr <- a }) }()
	select {
	case a := <-addr:
		stopped := false
		stop := func() {
			if !stopped {
				stopped = true
				cancel()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}
		}
		t.Cleanup(stop)
		return "http://" + a, stop
	case err := <-done:
		cancel()
		t.Fatal("ssebridge did not start:", err)
		return "", nil
	}
}

// TestTryOut is the README's try-out: `go run .`, then `ssebridge tail` and
// `ssebridge publish` on the same machine with no flags but the event's.
func TestTryOut(t *testing.T) {
	path := tryOutEnv(t)
	url, stop := startEmbedded(t)

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal("no try-out file:", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("try-out file mode %v, want 0600", fi.Mode().Perm())
	}
	if di, err := os.Stat(filepath.Dir(path)); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("try-out directory: %v %v, want 0700", di.Mode().Perm(), err)
	}
	var f tryOut
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &f); err != nil || f.URL != url || !strings.HasPrefix(f.Redis, "redis://127.0.0.1:") || f.PID != os.Getpid() {
		t.Fatalf("try-out file %s: %+v %v", b, f, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var out, tailErr syncBuffer
	done := make(chan error, 1)
	go func() { done <- tailCommand(ctx, nil, &out, &tailErr) }()
	defer func() { cancel(); <-done }()
	eventually(t, 5*time.Second, "tail to print ready", func() bool { return strings.Contains(out.String(), "event=ready") })
	if !strings.Contains(out.String(), `data={"user":"tail","rooms":["lobby"]}`) || !strings.Contains(tailErr.String(), "try-out mode") {
		t.Fatalf("tail printed:\n%s\nand on stderr:\n%s", out.String(), tailErr.String())
	}

	var pubOut, pubErr strings.Builder
	if err := publishCommand(ctx, []string{"-channel", "room:lobby", "-event", "chat", "-data", `{"text":"<hi>"}`}, &pubOut, &pubErr); err != nil {
		t.Fatalf("publish: %v\n%s", err, pubErr.String())
	}
	if !strings.Contains(pubErr.String(), "try-out mode") || !strings.Contains(pubErr.String(), path) {
		t.Errorf("publish did not say it is in try-out mode: %q", pubErr.String())
	}
	id := strings.TrimSpace(pubOut.String())
	if _, err := wire.ParseCursor(id); err != nil {
		t.Fatalf("publish printed %q, want an id", id)
	}
	line := "id=" + id + ` event=chat data={"text":"<hi>"}`
	eventually(t, 5*time.Second, "tail to print the event", func() bool { return strings.Contains(out.String(), line) })

	cancel()
	<-done
	done <- nil // for the deferred wait
	stop()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("try-out file still there after the server ended: %v", err)
	}
}

// TestTryOutStale: a file left by a server that was killed says so.
func TestTryOutStale(t *testing.T) {
	path := tryOutEnv(t)
	url, stop := startEmbedded(t)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if err := os.WriteFile(path, b, 0o600); err != nil { // as a killed server leaves it
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, cmd := range map[string]func() error{
		"publish": func() error {
			return publishCommand(ctx, []string{"-channel", "broadcast", "-data", "x"}, &strings.Builder{}, &strings.Builder{})
		},
		"tail": func() error { return tailCommand(ctx, nil, &strings.Builder{}, &strings.Builder{}) },
	} {
		err := cmd()
		if err == nil || !strings.Contains(err.Error(), "still running") || !strings.Contains(err.Error(), path) {
			t.Errorf("%s against %s, gone: error %v, want it to point at the stale file", name, url, err)
		}
	}
}

// TestTryOutFileOwner: a server removes its own file at the end, not the
// one a later server wrote over it.
func TestTryOutFileOwner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "tryout.json")
	removeA, err := writeTryOut(path, tryOut{URL: "http://127.0.0.1:1", Redis: "redis://127.0.0.1:2"})
	if err != nil {
		t.Fatal(err)
	}
	removeB, err := writeTryOut(path, tryOut{URL: "http://127.0.0.1:3", Redis: "redis://127.0.0.1:4"})
	if err != nil {
		t.Fatal(err)
	}
	removeA()
	if got, err := readTryOut(path); err != nil || got.URL != "http://127.0.0.1:3" {
		t.Fatalf("after the first server ended: %+v %v, want the second's file", got, err)
	}
	removeB()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("file still there: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestTryOutClientURL(t *testing.T) {
	for in, want := range map[string]string{
		":8080":          "http://127.0.0.1:8080",
		"[::]:8080":      "http://127.0.0.1:8080",
		"0.0.0.0:8080":   "http://127.0.0.1:8080",
		"127.0.0.1:9000": "http://127.0.0.1:9000",
		"[::1]:9000":     "http://[::1]:9000",
		"10.1.2.3:80":    "http://10.1.2.3:80",
	} {
		if got := clientURL(in); got != want {
			t.Errorf("clientURL(%q) = %q, want %q", in, got, want)
		}
	}
}
