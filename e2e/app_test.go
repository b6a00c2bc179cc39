package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/internal/ssetest"
)

// app is ssebridge running as a process (startBinary) against a real
// redis-server, serving real HTTP on loopback.
type app struct {
	t     *testing.T
	url   string
	cfg   appConfig
	redis *redistest.Server
	rdb   *redis.Client
	proc  *proc
	stop  func() // ends ssebridge with SIGTERM, and waits for it
}

// appConfig is what the helpers need of the instance's configuration.
type appConfig struct {
	SessionPrefix, ChannelPrefix string
}

// startApp runs ssebridge with the test defaults overridden by vars, on a
// redis-server of its own unless r is given.
func startApp(t *testing.T, r *redistest.Server, vars map[string]string) *app {
	t.Helper()
	if r == nil {
		r = redistest.Start(t)
	}
	environ := map[string]string{
		"REDIS_URL":   r.URL(),
		"LISTEN_ADDR": "127.0.0.1:0",
	}
	for k, v := range vars {
		environ[k] = v
	}
	cfg := appConfig{SessionPrefix: "session:", ChannelPrefix: "sse:"}
	if v, ok := environ["SESSION_PREFIX"]; ok {
		cfg.SessionPrefix = v
	}
	if v, ok := environ["CHANNEL_PREFIX"]; ok {
		cfg.ChannelPrefix = v
	}
	p := startBinary(t, environ)
	a := &app{t: t, url: "http://" + p.addr, cfg: cfg, redis: r, rdb: r.Client(), proc: p}
	a.stop = func() { _ = p.stop() } // its exit is checked when the test ends
	a.awaitReady()
	return a
}

// awaitReady waits until /readyz answers 200.
func (a *app) awaitReady() {
	a.t.Helper()
	eventually(a.t, 10*time.Second, "readyz to answer 200", func() bool {
		resp, err := http.Get(a.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// session stores a session as the backend would and returns its token.
func (a *app) session(user any, rooms ...string) string {
	a.t.Helper()
	token := fmt.Sprintf("tok-%v-%d", user, time.Now().UnixNano())
	setSession(a.t, a.rdb, a.cfg.SessionPrefix+token, user, rooms...)
	return token
}

// setSession stores a session of user with rooms at key (the prefix and
// the token), for an hour, as the backend would.
func setSession(t testing.TB, rdb redis.Cmdable, key string, user any, rooms ...string) {
	t.Helper()
	if rooms == nil {
		rooms = []string{}
	}
	v, _ := json.Marshal(map[string]any{"user": user, "rooms": rooms})
	if err := rdb.Set(context.Background(), key, v, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
}

func bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

// open opens GET /events+query with token and waits for its ready event.
func (a *app) open(token, query string) *ssetest.Stream {
	a.t.Helper()
	s, err := ssetest.Open(context.Background(), a.url+"/events"+query, bearer(token))
	if err != nil {
		a.t.Fatal("opening stream:", err)
	}
	a.t.Cleanup(s.Close)
	ev, err := s.NextEvent(5 * time.Second)
	if err != nil || ev.Event != "ready" {
		a.t.Fatalf("want the ready event first, got %+v, %v", ev, err)
	}
	return s
}

// openReady opens GET /events at base (an instance's URL) with header h
// and reads the ready event, which must come first and carry an id: the
// position the stream starts at. The caller closes the stream.
func openReady(ctx context.Context, base string, h http.Header) (*ssetest.Stream, string, error) {
	s, err := ssetest.Open(ctx, base+"/events", h)
	if err != nil {
		return nil, "", fmt.Errorf("opening stream: %w", err)
	}
	ev, err := s.NextEvent(5 * time.Second)
	if err != nil || ev.Event != "ready" || !ev.HasID {
		s.Close()
		return nil, "", fmt.Errorf("want the ready event, with an id, first; got %+v, %v", ev, err)
	}
	return s, ev.ID, nil
}

// refusal opens GET /events and wants a refusal.
func (a *app) refusal(header http.Header, query string) *ssetest.StatusError {
	a.t.Helper()
	s, err := ssetest.Open(context.Background(), a.url+"/events"+query, header)
	if err == nil {
		s.Close()
		a.t.Fatal("stream opened; want a refusal")
	}
	se, ok := err.(*ssetest.StatusError)
	if !ok {
		a.t.Fatal(err)
	}
	return se
}

// publish publishes live, as a backend's PUBLISH does.
func (a *app) publish(channel, payload string) {
	a.t.Helper()
	if err := a.rdb.Publish(context.Background(), a.cfg.ChannelPrefix+channel, payload).Err(); err != nil {
		a.t.Fatal(err)
	}
}

// metric reads one sample from /metrics; series is the name with its labels
// as exposed, e.g. `ssebridge_events_dropped_total{reason="too_large"}`.
func (a *app) metric(series string) float64 {
	a.t.Helper()
	return metricAt(a.t, a.url, series)
}

// metricAt reads one sample from the /metrics of the instance at url.
func metricAt(t *testing.T, url, series string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// want reads the next event (heartbeats skipped) and checks its name and data.
func want(t *testing.T, s *ssetest.Stream, event, data string) ssetest.Event {
	t.Helper()
	ev, err := s.NextEvent(5 * time.Second)
	if err != nil {
		t.Fatalf("want event %q %q, got error %v", event, data, err)
	}
	if ev.Event != event || ev.Data != data {
		t.Fatalf("want event %q data %q, got event %q data %q", event, data, ev.Event, ev.Data)
	}
	return ev
}

// wantNothing checks that no event (heartbeats aside) is waiting: the caller
// first publishes a marker behind the events that must not arrive, and reads
// it, so that "nothing" is proven by ordering, not by a pause.
func wantNothingBefore(t *testing.T, s *ssetest.Stream, marker string) {
	t.Helper()
	want(t, s, "message", marker)
}

// eventually polls cond until it holds or the deadline passes. It is for
// states with no event to wait on (a metric, a Redis list), never for timing.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
