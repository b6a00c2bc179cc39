package handlers

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
)

// metric reads one sample from the routes' /metrics, 0 when absent.
func (s *server) metric(series string) float64 {
	s.t.Helper()
	_, body := s.do("GET", "/metrics", nil, "")
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// sendAndLeave writes a GET request on a connection of its own and closes
// it at once, as a client that gives up (or an HTTP/2 RST_STREAM) does: the
// server reads the whole request, runs the handler, and sees the context end
// as soon as it reads the close. (A cancelled http.Client request may never
// leave its buffer.)
func sendAndLeave(t *testing.T, url, path string, header http.Header) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\n", path, conn.RemoteAddr())
	_ = header.Write(&req)
	req.WriteString("\r\n")
	if _, err := io.WriteString(conn, req.String()); err != nil {
		t.Fatal(err)
	}
}

// TestLookupCancelled: requests with made-up tokens that go away while
// their session look-up waits on a Redis that does not answer are counted
// as client_gone, logged at debug at most once a minute, and never as a
// Redis outage; a look-up that fails while its client still waits is one
// (503, reason="redis", a warning, rate-limited).
func TestLookupCancelled(t *testing.T) {
	stuck := redistest.StartStuck(t)
	rdb := redis.NewClient(&redis.Options{
		Addr: stuck.Addr, PoolSize: 1, MaxRetries: -1, DialTimeout: time.Second,
		// The one connection stays busy until stuck.Stop, and a look-up
		// waits for it until its client goes away.
		ReadTimeout: time.Minute, PoolTimeout: time.Minute,
	})
	t.Cleanup(func() { rdb.Close() })
	s := newServer(t, setup{options: func(o *Options) { o.Sessions = store.NewSessions(rdb, "session:", 16384) }})

	// The first look-up takes the pool's one connection and hangs on it.
	first := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest("GET", s.url+"/events/check", nil)
		req.Header.Set("Authorization", "Bearer made-up-first")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			resp = nil
		} else {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		first <- resp
	}()
	select {
	case <-stuck.Held:
	case <-time.After(10 * time.Second):
		t.Fatal("the first look-up never reached the stuck Redis")
	}

	// The flood: each request is cancelled while its look-up waits for
	// the pool, or for the stuck connection (go-redis reads on regardless
	// of the context, until the connection fails).
	const n = 40
	for i := range n { // GET /events reads the session the same way (authorize), but needs a hub
		sendAndLeave(t, s.url, "/events/check", hdr("Authorization", fmt.Sprintf("Bearer made-up-%d", i)))
	}

	// Redis fails under them all, and under the first look-up, whose client
	// still waits: that one, and only that one, is an outage.
	stuck.Stop()
	if resp := <-first; resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("the look-up Redis failed under answered %v, want 503", resp)
	}
	gone, redisDown := `ssebridge_handshakes_refused_total{reason="client_gone"}`, `ssebridge_handshakes_refused_total{reason="redis"}`
	deadline := time.Now().Add(10 * time.Second)
	for s.metric(gone)+s.metric(redisDown) < n+1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // a metric: no event to await
	}
	if g, r := s.metric(gone), s.metric(redisDown); g != n || r != 1 {
		t.Errorf("%d cancelled look-ups and one failed: counted as client_gone %v, redis %v; want %d and 1", n, g, r, n)
	}
	if lines := s.log.lines("level=WARN"); len(lines) != 1 || strings.Contains(lines[0], "canceled") {
		t.Errorf("%d warnings, want the one for the look-up whose client waited:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if lines := s.log.lines("level=DEBUG", "client_gone"); len(lines) != 1 {
		t.Errorf("%d debug lines for client_gone, want 1 (once a minute):\n%s", len(lines), s.log)
	}

	for range 5 { // every look-up now fails, and is logged once a minute
		if resp, body := s.do("GET", "/events/check", hdr("Authorization", "Bearer made-up"), ""); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("with Redis gone: %d %s, want 503", resp.StatusCode, body)
		}
	}
	if r := s.metric(redisDown); r != 6 {
		t.Errorf("redis refusals %v, want 6", r)
	}
	// One line a minute per cause: the connection lost under the first
	// look-up was one, Redis unreachable since is another.
	if lines := s.log.lines("level=WARN", "redis unavailable", "cause=unreachable"); len(lines) != 1 {
		t.Errorf("%d warnings for Redis unreachable, want 1 (once a minute):\n%s", len(lines), s.log)
	}
	s.clock.Advance(61 * time.Second)
	s.do("GET", "/events/check", hdr("Authorization", "Bearer made-up"), "")
	if lines := s.log.lines("level=WARN", "redis unavailable", "cause=unreachable"); len(lines) != 2 || !strings.Contains(lines[1], "suppressed=4") {
		t.Errorf("a minute later, want a second warning with suppressed=4 (the first of the five was the first unreachable):\n%s\nall:\n%s", strings.Join(lines, "\n"), s.log)
	}
}
