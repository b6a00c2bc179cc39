package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/ssetest"
	"github.com/ssebridge/ssebridge/wire"
)

// The README's try-out: ssebridge with no REDIS_URL (an embedded Redis, the
// demo page's /dev routes, the try-out file), and the publish and tail
// subcommands that find it.

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
// returns its URL and the process.
func startEmbedded(t *testing.T) (string, *proc) {
	t.Helper()
	p := startBinary(t, map[string]string{"REDIS_URL": ""})
	// The try-out file is written once it listens, and then logged.
	p.awaitLog(t, "msg=\"try-out: ", 10*time.Second)
	return "http://" + p.addr, p
}

// tryOut is the try-out file as tryout.go writes it.
type tryOut struct {
	URL   string `json:"url"`
	Redis string `json:"redis"`
	PID   int    `json:"pid"`
}

// startTail runs `ssebridge tail args...` until the test ends (or stop).
func startTail(t *testing.T, args ...string) *proc {
	return launch(t, binary, append([]string{"tail"}, args...), nil, nil)
}

// TestTryOut is the README's try-out: `go run .`, then `ssebridge tail` and
// `ssebridge publish` on the same machine with no flags but the event's.
func TestTryOut(t *testing.T) {
	path := tryOutEnv(t)
	url, sse := startEmbedded(t)

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
	if err := json.Unmarshal(b, &f); err != nil || f.URL != url || !strings.HasPrefix(f.Redis, "redis://127.0.0.1:") || f.PID != sse.pid() {
		t.Fatalf("try-out file %s: %+v %v", b, f, err)
	}

	tail := startTail(t)
	out, tailErr := tail.stdout, tail.stderr
	eventually(t, 5*time.Second, "tail to print ready", func() bool { return strings.Contains(out.String(), "event=ready") })
	tail.awaitLog(t, "try-out mode", 5*time.Second) // its stderr, read by another goroutine
	if !strings.Contains(out.String(), `data={"user":"tail","rooms":["lobby"],"session":"`) || !strings.Contains(tailErr.String(), "try-out mode") {
		t.Fatalf("tail printed:\n%s\nand on stderr:\n%s", out.String(), tailErr.String())
	}

	pubOut, pubErr, code := runCommand(t, nil, "publish", "-channel", "room:lobby", "-event", "chat", "-data", `{"text":"<hi>"}`)
	if code != 0 {
		t.Fatalf("publish: exit %d\n%s", code, pubErr)
	}
	if !strings.Contains(pubErr, "try-out mode") || !strings.Contains(pubErr, path) {
		t.Errorf("publish did not say it is in try-out mode: %q", pubErr)
	}
	id := strings.TrimSpace(pubOut)
	if _, err := wire.ParseCursor(id); err != nil {
		t.Fatalf("publish printed %q, want an id", id)
	}
	line := "id=" + id + ` event=chat data={"text":"<hi>"}`
	eventually(t, 5*time.Second, "tail to print the event", func() bool { return strings.Contains(out.String(), line) })

	if err := tail.stop(); err != nil {
		t.Errorf("tail: %v", err)
	}
	if err := sse.stop(); err != nil {
		t.Errorf("ssebridge: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("try-out file still there after the server ended: %v", err)
	}
}

// TestTryOutStale: a file left by a server that was killed says so.
func TestTryOutStale(t *testing.T) {
	path := tryOutEnv(t)
	url, sse := startEmbedded(t)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := sse.stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil { // as a killed server leaves it
		t.Fatal(err)
	}
	for _, args := range [][]string{{"publish", "-channel", "broadcast", "-data", "x"}, {"tail"}} {
		_, stderr, code := runCommand(t, nil, args...)
		if code == 0 || !strings.Contains(stderr, "still running") || !strings.Contains(stderr, path) {
			t.Errorf("%s against %s, gone: exit %d, stderr %q, want it to point at the stale file", args[0], url, code, stderr)
		}
	}
}

// TestEmbeddedTryOut runs ssebridge as the README's first command does: no
// REDIS_URL, so an embedded Redis, and the /dev routes for the demo page.
func TestEmbeddedTryOut(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // where the try-out file goes
	base, _ := startEmbedded(t)
	ctx := context.Background()

	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar}
	resp, err := client.PostForm(base+"/dev/login", url.Values{"user": {"alice"}, "rooms": {"lobby"}})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("login: %v %v", resp, err)
	}
	resp.Body.Close()
	u, _ := url.Parse(base)
	var cookie string
	for _, c := range jar.Cookies(u) {
		if c.Name == "sse_session" {
			cookie = c.Name + "=" + c.Value
		}
	}
	if cookie == "" {
		t.Fatal("login set no sse_session cookie")
	}
	s, err := ssetest.Open(ctx, base+"/events", http.Header{"Cookie": {cookie}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want(t, s, "ready", `{"user":"alice","rooms":["lobby"],"session":"`+wire.SessionID(strings.TrimPrefix(cookie, "sse_session="))+`"}`)

	resp, err = client.PostForm(base+"/dev/publish", url.Values{"channel": {"room:lobby"}, "payload": {`{"event":"chat","data":"hi"}`}})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("publish: %v %v", resp, err)
	}
	resp.Body.Close()
	want(t, s, "chat", "hi")

	// The try-out's login grants its rooms: a stream resuming from before
	// the login gets none of the room's events from before it.
	durable := func(channel, payload string) string {
		resp, err := client.PostForm(base+"/dev/publish", url.Values{"channel": {channel}, "payload": {payload}, "durable": {"1"}})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("durable publish: %v %v", resp, err)
		}
		defer resp.Body.Close()
		var v struct{ ID string }
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatal(err)
		}
		return v.ID
	}
	old := durable("broadcast", `{"event":"n","data":"old"}`)
	durable("room:vault", `{"event":"n","data":"before the grant"}`)
	resp, err = client.PostForm(base+"/dev/login", url.Values{"user": {"bob"}, "rooms": {"vault"}})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("login: %v %v", resp, err)
	}
	resp.Body.Close()
	durable("room:vault", `{"event":"n","data":"after the grant"}`)
	var bob string
	for _, c := range jar.Cookies(u) {
		if c.Name == "sse_session" {
			bob = c.Name + "=" + c.Value
		}
	}
	s2, err := ssetest.Open(ctx, base+"/events", http.Header{"Cookie": {bob}, "Last-Event-ID": {old}})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	want(t, s2, "ready", `{"user":"bob","rooms":["vault"],"session":"`+wire.SessionID(strings.TrimPrefix(bob, "sse_session="))+`"}`)
	want(t, s2, "n", "after the grant")

	for path, status := range map[string]int{"/": 200, "/ssebridge.js": 200, "/healthz": 200} {
		resp, err := http.Get(base + path)
		if err != nil || resp.StatusCode != status {
			t.Errorf("GET %s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
}

func TestDevRoutesOffWithRealRedis(t *testing.T) {
	a := startApp(t, nil, nil)
	for _, path := range []string{"/dev/login", "/dev/publish"} {
		resp, err := http.PostForm(a.url+path, url.Values{"user": {"mallory"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Errorf("POST %s answered 200 with REDIS_URL set", path)
		}
	}
}
