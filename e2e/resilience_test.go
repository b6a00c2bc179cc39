package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// rawStream opens GET /events over a bare TCP connection and reads up to the
// ready event; what the caller does next (read or not) is up to it.
func rawStream(t testing.TB, addr, token string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /events HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", addr, token)
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("waiting for ready: %v", err)
		}
		if line == "event: ready\n" {
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return c
}

func TestSlowReader(t *testing.T) {
	a := startApp(t, nil, map[string]string{"STREAM_QUEUE": "16", "WRITE_TIMEOUT": "1s"})
	healthy := a.open(a.session("fast", "lobby"), "")
	slow := rawStream(t, strings.TrimPrefix(a.url, "http://"), a.session("slow", "lobby"))
	defer slow.Close()
	// The slow client never reads again. 60 KB events fill its socket
	// buffers, then its queue of 16: it must be ended, and the healthy
	// stream must get every event.
	const n = 300
	chunk := strings.Repeat("x", 60_000)
	for i := range n {
		a.publish("room:lobby", fmt.Sprintf(`{"event":"big","id":"%d","data":"%s"}`, i, chunk))
	}
	for i := range n {
		ev, err := healthy.NextEvent(10 * time.Second)
		if err != nil || ev.ID != fmt.Sprint(i) {
			t.Fatalf("healthy stream: event %d: got id %q, %v", i, ev.ID, err)
		}
	}
	eventually(t, 10*time.Second, "the slow stream to be closed as slow", func() bool {
		return a.metric(`ssebridge_streams_closed_total{reason="slow"}`) == 1
	})
	if got := a.metric("ssebridge_streams_open"); got != 1 {
		t.Errorf("streams open after the slow one closed: %v, want 1", got)
	}
}

func TestRedisRestart(t *testing.T) {
	r := redistest.Start(t)
	a := startApp(t, r, map[string]string{"HEARTBEAT_INTERVAL": "100ms", "REDIS_PING_INTERVAL": "200ms"})
	s := a.open(a.session("alice", "lobby"), "")

	r.Stop()
	// While Redis is down the stream stays open and keeps beating.
	for range 3 {
		ev, err := s.Next(5 * time.Second)
		if err != nil || ev.Comment != "ping" {
			t.Fatalf("want heartbeats while Redis is down, got %+v %v", ev, err)
		}
	}
	eventually(t, 5*time.Second, "readyz to report Redis down", func() bool {
		resp, err := http.Get(a.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	// A new stream cannot be authorized meanwhile: 503, with Retry-After.
	if se := a.refusal(bearer("whatever"), ""); se.Response.StatusCode != 503 || se.Response.Header.Get("Retry-After") == "" {
		t.Fatalf("stream while Redis is down: %d %v", se.Response.StatusCode, se.Response.Header)
	}

	r.Restart()
	a.awaitReady() // resubscribed
	a.publish("room:lobby", "back")
	want(t, s, "message", "back")
	if got := a.metric("ssebridge_redis_reconnects_total"); got < 1 {
		t.Errorf("reconnects counted: %v", got)
	}
}

// TestUnsubscribeLastStream: a channel is unsubscribed once its last
// stream is gone and UNSUBSCRIBE_DELAY has passed, not while another
// stream still needs it.
func TestUnsubscribeLastStream(t *testing.T) {
	a := startApp(t, nil, map[string]string{"UNSUBSCRIBE_DELAY": "200ms"})
	ctx := context.Background()
	s1 := a.open(a.session("alice", "shared"), "")
	s2 := a.open(a.session("bob", "shared"), "")
	numsub := func(ch string) int64 { return a.rdb.PubSubNumSub(ctx, "sse:"+ch).Val()["sse:"+ch] }
	if numsub("room:shared") != 1 {
		t.Fatal("the room must be subscribed once, whatever its number of streams")
	}
	s1.Close()
	eventually(t, 5*time.Second, "alice's channel to be unsubscribed", func() bool { return numsub("user:alice") == 0 })
	if numsub("room:shared") != 1 {
		t.Fatal("the room was unsubscribed while bob still needs it")
	}
	s2.Close()
	eventually(t, 5*time.Second, "the room to be unsubscribed", func() bool { return numsub("room:shared") == 0 })
	if numsub("broadcast") != 0 {
		t.Error("broadcast is still subscribed with no stream open")
	}
}

// TestReadyzTellsSlowFromUnreachable: /readyz has its own connection and
// says "redis slow" when Redis takes connections but does not answer (a
// stalled link), promptly; and "redis unreachable" when nothing listens.
func TestReadyzTellsSlowFromUnreachable(t *testing.T) {
	stuck := redistest.StartStuck(t)
	p := startBinary(t, map[string]string{"REDIS_URL": "redis://" + stuck.Addr})
	began := time.Now()
	resp, err := http.Get("http://" + p.addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(began)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `"redis slow"`) {
		t.Fatalf("readyz with a Redis that does not answer: %d %s, want 503 redis slow", resp.StatusCode, body)
	}
	if took > 5*time.Second {
		t.Errorf("readyz took %v, want its 2 s deadline", took)
	}

	r := redistest.Start(t)
	addr := r.Addr
	r.Stop()
	q := startBinary(t, map[string]string{"REDIS_URL": "redis://" + addr})
	resp, err = http.Get("http://" + q.addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `"redis unreachable"`) {
		t.Fatalf("readyz with nothing listening: %d %s, want 503 redis unreachable", resp.StatusCode, body)
	}
}

// TestStuckRedisAnswersPromptly: with a Redis that takes connections and
// never answers (a stalled link looks the same from here), every request
// that needs it is answered 503 with Retry-After within REDIS_TIMEOUT and
// a margin, saying what was wrong. Before REDIS_TIMEOUT a stream
// waited 10 s for its subscriptions, and a publish go-redis's read timeout
// once per retry (over 10 s).
func TestStuckRedisAnswersPromptly(t *testing.T) {
	stuck := redistest.StartStuck(t)
	p := startBinary(t, map[string]string{
		"REDIS_URL": "redis://" + stuck.Addr, "REDIS_TIMEOUT": "1s", "PUBLISH_TOKEN": "secret",
	})
	const bound = 1*time.Second + 1500*time.Millisecond // REDIS_TIMEOUT, and a margin for a loaded machine
	for _, tc := range []struct {
		name, method, path, auth, body string
		why                            string // what the 503 says
	}{
		// A stream needs the pub/sub connection first, which never came up.
		{"stream", http.MethodGet, "/events", "Bearer some-session", "", "redis pub/sub connection down"},
		{"check", http.MethodGet, "/events/check", "Bearer some-session", "", "REDIS_TIMEOUT"},
		{"publish", http.MethodPost, "/publish", "Bearer secret", `{"channel":"broadcast","data":1}`, "REDIS_TIMEOUT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, "http://"+p.addr+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", tc.auth)
			began := time.Now()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			took := time.Since(began)
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("%s %s: %d (Retry-After %q) %s, want 503 with Retry-After", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Retry-After"), body)
			}
			if !strings.Contains(string(body), tc.why) {
				t.Errorf("%s %s: %s, want it to say %q", tc.method, tc.path, body, tc.why)
			}
			if took > bound {
				t.Errorf("%s %s answered after %v, want within %v (REDIS_TIMEOUT 1s)", tc.method, tc.path, took, bound)
			}
		})
	}
}
