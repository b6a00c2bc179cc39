package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
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
	unsetenv(t, "REDIS_URL", "PUBLISH_TOKEN", "CHANNEL_PREFIX")
	return filepath.Join(cache, "ssebridge", "tryout.json")
}

// unsetenv removes variables from the test's environment, and so from the
// processes it starts, until the test ends. Set to "" is not unset:
// REDIS_URL= is a configuration error, not the try-out.
func unsetenv(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		t.Setenv(name, "") // restored when the test ends
		os.Unsetenv(name)
	}
}

// startEmbedded runs ssebridge as `go run .` does, with no REDIS_URL, and
// returns its URL and the process.
func startEmbedded(t *testing.T) (string, *proc) {
	t.Helper()
	unsetenv(t, "REDIS_URL", "REDIS_SENTINEL_ADDRS", "REDIS_CLUSTER_ADDRS")
	p := startBinary(t, nil)
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
	want(t, s, "ready", `{"user":"alice","rooms":["lobby"],"session":"`+wire.SessionID(strings.TrimPrefix(cookie, "sse_session="), "alice")+`"}`)

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
	want(t, s2, "ready", `{"user":"bob","rooms":["vault"],"session":"`+wire.SessionID(strings.TrimPrefix(bob, "sse_session="), "bob")+`"}`)
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

// TestTryOutDevRefusesForeignPages: the /dev routes log anyone in and
// publish anything, so they answer only pages of this machine: a foreign
// Origin (any site the developer visits) gets 403, a foreign Host (that
// site's name rebound to 127.0.0.1: DNS rebinding) 421, and neither logs in
// nor publishes. Loopback names and origins, on any port, are served.
func TestTryOutDevRefusesForeignPages(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	base, p := startEmbedded(t)
	_, port, _ := net.SplitHostPort(p.addr)
	s, err := ssetest.Open(context.Background(), base+"/events", http.Header{"Cookie": {"sse_session=" + devLogin(t, base, "alice")}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ev, err := s.NextEvent(5 * time.Second); err != nil || ev.Event != "ready" {
		t.Fatalf("want ready first, got %+v %v", ev, err)
	}

	own := "http://127.0.0.1:" + port
	tests := []struct {
		name, host, origin string
		status             int
		errHas             string
	}{
		{"foreign origin", "", "https://evil.example", 403, "Origin"},
		{"null origin", "", "null", 403, "Origin"},
		{"foreign host (DNS rebinding)", "evil.example:" + port, "http://evil.example:" + port, 421, "Host"},
		{"foreign host, no origin", "evil.example:" + port, "", 421, "Host"},
		{"foreign host, no port", "evil.example", "", 421, "Host"},
		{"LAN address as host", "192.168.1.10:" + port, "", 421, "Host"},
		{"own origin", "", own, 200, ""},
		{"no origin (curl, ssebridge tail)", "", "", 200, ""},
		{"localhost", "localhost:" + port, "http://localhost:" + port, 200, ""},
		{"another loopback page", "", "http://localhost:3000", 200, ""},
		{"[::1]", "[::1]:" + port, "http://[::1]:" + port, 200, ""},
		{"127.0.0.2", "127.0.0.2:" + port, "", 200, ""},
	}
	refused := map[string]float64{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, route := range []struct{ path, form string }{
				{"/dev/login", "user=mallory&rooms=lobby"},
				{"/dev/publish", "channel=user:alice&payload=" + url.QueryEscape(tt.name)},
			} {
				req, _ := http.NewRequest("POST", base+route.path, strings.NewReader(route.form))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				if tt.host != "" {
					req.Host = tt.host
				}
				if tt.origin != "" {
					req.Header.Set("Origin", tt.origin)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tt.status {
					t.Fatalf("POST %s: %d %s, want %d", route.path, resp.StatusCode, body, tt.status)
				}
				if tt.status == 200 {
					continue
				}
				if !strings.HasPrefix(string(body), `{"error":`) || !strings.Contains(string(body), tt.errHas) {
					t.Errorf("POST %s: body %s, want a JSON error naming the %s", route.path, body, tt.errHas)
				}
				if c := resp.Header.Get("Set-Cookie"); c != "" {
					t.Errorf("POST %s refused, yet set a cookie: %s", route.path, c)
				}
				refused[map[int]string{403: "origin", 421: "host"}[tt.status]]++
			}
		})
	}
	// The refused publishes never reached alice: the accepted ones come in order.
	for _, tt := range tests {
		if tt.status == 200 {
			want(t, s, "message", tt.name)
		}
	}
	for reason, n := range refused {
		series := `ssebridge_dev_refused_total{reason="` + reason + `"}`
		if got := metricAt(t, base, series); got != n {
			t.Errorf("%s = %v, want %v", series, got, n)
		}
	}
}

// devLogin logs user in with POST /dev/login and returns the session token.
func devLogin(t *testing.T, base, user string) string {
	t.Helper()
	resp, err := http.PostForm(base+"/dev/login", url.Values{"user": {user}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == "sse_session" && resp.StatusCode == 200 {
			return c.Value
		}
	}
	t.Fatalf("login: %d, no sse_session cookie", resp.StatusCode)
	return ""
}

// TestTryOutRefusesToStart: a try-out that would not be one on purpose
// stops at once (exit 2) with one line naming the variable and the fix:
// REDIS_URL set but empty (a template whose secret is missing), and the
// try-out on an address beyond loopback. The address is taken on loopback
// by the test first, so that a binary that did not refuse could not listen
// on it either: nothing ever listens beyond loopback.
func TestTryOutRefusesToStart(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	unsetenv(t, "REDIS_URL", "REDIS_SENTINEL_ADDRS", "REDIS_CLUSTER_ADDRS")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	for _, tt := range []struct {
		name   string
		env    map[string]string
		errHas []string
	}{
		{"REDIS_URL set but empty", map[string]string{"REDIS_URL": "", "LISTEN_ADDR": "127.0.0.1:" + port}, []string{"REDIS_URL", "empty"}},
		{"REDIS_URL blank", map[string]string{"REDIS_URL": " ", "LISTEN_ADDR": "127.0.0.1:" + port}, []string{"REDIS_URL", "empty"}},
		{"all interfaces", map[string]string{"LISTEN_ADDR": "0.0.0.0:" + port}, []string{"LISTEN_ADDR", "loopback"}},
		{"no host", map[string]string{"LISTEN_ADDR": ":" + port}, []string{"LISTEN_ADDR", "loopback"}},
		{"IPv6 all interfaces", map[string]string{"LISTEN_ADDR": "[::]:" + port}, []string{"LISTEN_ADDR", "loopback"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary)
			cmd.Env = environ(tt.env)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want 2; output:\n%s", err, out)
			}
			msg := strings.TrimSpace(string(out))
			if strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "ssebridge: configuration: ") {
				t.Errorf("want one configuration line, got:\n%s", msg)
			}
			for _, w := range tt.errHas {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q does not name %q", msg, w)
				}
			}
		})
	}
}
