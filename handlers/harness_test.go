package handlers

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
)

// logBuffer collects what the routes log, safe for the server's goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines returns the logged lines that contain every one of parts.
func (l *logBuffer) lines(parts ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		ok := line != ""
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// server is the routes under test, served over real HTTP on loopback.
type server struct {
	t     *testing.T
	url   string
	log   *logBuffer
	clock *fakeClock
	rdb   *redis.Client // nil unless withRedis
}

type setup struct {
	withRedis bool
	dev       bool // the try-out's /dev routes (needs withRedis)
	options   func(*Options)
}

// newServer serves New's routes with test defaults, on a redis-server of
// its own when s.withRedis (no stream ever opens: Hub stays nil).
func newServer(t *testing.T, s setup) *server {
	t.Helper()
	srv := &server{t: t, log: &logBuffer{}, clock: newFakeClock()}
	o := Options{
		MaxEventBytes: 65536,
		MaxRooms:      64,
		SessionCookie: "sse_session",
		Retry:         2 * time.Second,
		Ready:         func(context.Context) error { return nil },
		Registry:      prometheus.NewRegistry(),
		Log:           slog.New(slog.NewTextHandler(srv.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		now:           srv.clock.Now,
	}
	if s.withRedis {
		r := redistest.Start(t)
		srv.rdb = r.Client()
		o.Sessions = store.NewSessions(srv.rdb, "session:", 16384)
		history := store.NewHistory(srv.rdb, "sse:", 100, 1<<16, time.Hour)
		o.History = history
		if _, err := history.Configure(context.Background()); err != nil {
			t.Fatal(err)
		}
		if s.dev {
			o.Dev = &Dev{Publisher: store.NewPublisher(srv.rdb, "sse:")}
		}
	}
	if s.options != nil {
		s.options(&o)
	}
	hs := httptest.NewServer(New(o))
	t.Cleanup(hs.Close)
	srv.url = hs.URL
	return srv
}

// session stores a session as a backend would, and returns its token.
func (s *server) session(token, value string) string {
	s.t.Helper()
	if err := s.rdb.Set(context.Background(), "session:"+token, value, time.Hour).Err(); err != nil {
		s.t.Fatal(err)
	}
	return token
}

// do sends a request and returns the answer with its body read.
func (s *server) do(method, path string, header http.Header, body string) (*http.Response, string) {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if h := header.Get("Host"); h != "" {
		req.Host = h // net/http sends req.Host, never a Host header
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp, string(bytes.TrimSpace(b))
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}
