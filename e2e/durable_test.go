package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/ssetest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// publishDurable runs the durable publish script as a backend does: from a
// plain Redis client, EVALSHA with 0 keys (EVAL once if Redis lacks it).
func publishDurable(t testing.TB, rdb redis.Scripter, channel, envelope string) string {
	t.Helper()
	id, err := evalPublish(rdb, channel, envelope)
	if err != nil {
		t.Fatal("durable publish:", err)
	}
	return id
}

func evalPublish(rdb redis.Scripter, channel, envelope string) (string, error) {
	return redis.NewScript(store.PublishScript).Run(context.Background(), rdb, nil, "sse:", channel, envelope).Text()
}

// openResume opens a stream with a Last-Event-ID and reads its ready event.
func (a *app) openResume(t *testing.T, token, lastID string) *ssetest.Stream {
	t.Helper()
	h := bearer(token)
	if lastID != "" {
		h.Set("Last-Event-ID", lastID)
	}
	s, err := ssetest.Open(context.Background(), a.url+"/events", h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if ev, err := s.NextEvent(5 * time.Second); err != nil || ev.Event != "ready" {
		t.Fatalf("want ready first, got %+v %v", ev, err)
	}
	return s
}

func TestDurableResume(t *testing.T) {
	a := startApp(t, nil, nil)
	tok := a.session("alice", "lobby")
	s := a.openResume(t, tok, "")
	ids := make([]string, 6)
	for i := range ids {
		ch := []string{"user:alice", "room:lobby", "broadcast"}[i%3]
		ids[i] = publishDurable(t, a.rdb, ch, fmt.Sprintf(`{"event":"n","data":%d}`, i))
	}
	for i := range 3 {
		if ev := want(t, s, "n", fmt.Sprint(i)); ev.ID != ids[i] {
			t.Fatalf("event %d has id %q, want %q", i, ev.ID, ids[i])
		}
	}
	s.Close()
	// Resume after the third: the other three come first, then live events.
	s = a.openResume(t, tok, ids[2])
	for i := 3; i < 6; i++ {
		if ev := want(t, s, "n", fmt.Sprint(i)); ev.ID != ids[i] {
			t.Fatalf("replayed event %d has id %q, want %q", i, ev.ID, ids[i])
		}
	}
	publishDurable(t, a.rdb, "room:lobby", `{"event":"n","data":6}`)
	want(t, s, "n", "6")

	// ?lastEventId= does the same for curl.
	s2, err := ssetest.Open(context.Background(), a.url+"/events?lastEventId="+ids[4], bearer(tok))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	want(t, s2, "ready", `{"user":"alice","rooms":["lobby"],"session":"`+wire.SessionID(tok, "alice")+`"}`)
	want(t, s2, "n", "5")
	want(t, s2, "n", "6")
	if got := a.metric("ssebridge_events_replayed_total"); got != 5 {
		t.Errorf("replayed %v, want 5", got)
	}
}

func TestDurableReset(t *testing.T) {
	a := startApp(t, nil, map[string]string{"HISTORY_MAXLEN": "5"})
	tok := a.session("alice", "lobby")
	first := publishDurable(t, a.rdb, "room:lobby", `{"data":0}`)
	for i := 1; i < 10; i++ {
		publishDurable(t, a.rdb, "room:lobby", fmt.Sprintf(`{"data":%d}`, i))
	}
	if n := a.rdb.XLen(context.Background(), "sse:{room:lobby}:history").Val(); n != 5 {
		t.Fatalf("history holds %d events, want HISTORY_MAXLEN=5", n)
	}
	cur, _ := wire.ParseCursor(first)
	tests := []struct{ name, lastID, reason string }{
		{"malformed", "garbage", "malformed"},
		{"no sequence", "abc:12", "malformed"},
		{"other epoch", "zzz:" + fmt.Sprint(cur.MS) + "-0", "epoch"},
		{"from the future", fmt.Sprintf("%s:%d-0", cur.Epoch, cur.MS+3600_000), "foreign"},
		{"too old", fmt.Sprintf("%s:%d-0", cur.Epoch, cur.MS-25*3600_000), "too_old"},
		{"trimmed", first, "trimmed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := a.openResume(t, tok, tt.lastID)
			ev := want(t, s, "reset", `{"reason":"`+tt.reason+`"}`)
			if _, err := wire.ParseCursor(ev.ID); err != nil {
				t.Fatalf("reset must carry a fresh id, got %q", ev.ID)
			}
			// Then live, from that id on.
			publishDurable(t, a.rdb, "room:lobby", `{"event":"after","data":1}`)
			want(t, s, "after", "1")
			s.Close()
		})
	}
	// A cursor within the history resumes without a reset.
	from := publishDurable(t, a.rdb, "room:lobby", `{"data":"x"}`)
	publishDurable(t, a.rdb, "room:lobby", `{"data":"y"}`)
	s := a.openResume(t, tok, from)
	want(t, s, "message", "y")
}

func TestPublishEndpoint(t *testing.T) {
	a := startApp(t, nil, map[string]string{"PUBLISH_TOKEN": "s3cret", "MAX_EVENT_BYTES": "200"})
	s := a.open(a.session("alice", "lobby"), "")
	post := func(token, body string) (int, string) {
		req, _ := http.NewRequest("POST", a.url+"/publish", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(bytes.TrimSpace(b))
	}
	tests := []struct {
		name, token, body string
		status            int
		errHas            string
	}{
		{"no token", "", `{"channel":"room:lobby","data":1}`, 401, "PUBLISH_TOKEN"},
		{"wrong token", "nope", `{"channel":"room:lobby","data":1}`, 401, "PUBLISH_TOKEN"},
		{"not JSON", "s3cret", `hello`, 400, "body"},
		{"unknown field", "s3cret", `{"channel":"room:lobby","data":1,"evnt":"x"}`, 400, "evnt"},
		{"bad channel", "s3cret", `{"channel":"lobby","data":1}`, 400, "want broadcast"},
		{"bad room name", "s3cret", `{"channel":"room:a b","data":1}`, 400, "channel"},
		{"no data", "s3cret", `{"channel":"room:lobby","event":"x"}`, 400, "data"},
		{"LF in event", "s3cret", `{"channel":"room:lobby","event":"a\nb","data":1}`, 400, "bad_field"},
		{"too large", "s3cret", `{"channel":"room:lobby","data":"` + strings.Repeat("x", 300) + `"}`, 413, "MAX_EVENT_BYTES"},
		{"body far too large", "s3cret", `{"channel":"room:lobby","data":"` + strings.Repeat("x", 3000) + `"}`, 413, "body over"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := post(tt.token, tt.body)
			if status != tt.status || !strings.Contains(body, tt.errHas) || !strings.HasPrefix(body, `{"error":`) {
				t.Fatalf("got %d %s, want %d with %q", status, body, tt.status, tt.errHas)
			}
		})
	}
	status, body := post("s3cret", `{"channel":"room:lobby","event":"chat","data":{"text":"hi"}}`)
	var res struct{ ID string }
	if status != 200 || json.Unmarshal([]byte(body), &res) != nil || res.ID == "" {
		t.Fatalf("publish: %d %s", status, body)
	}
	if ev := want(t, s, "chat", `{"text":"hi"}`); ev.ID != res.ID {
		t.Fatalf("event id %q, the answer said %q", ev.ID, res.ID)
	}

	b := startApp(t, a.redis, nil) // no PUBLISH_TOKEN: no route
	resp, err := http.Post(b.url+"/publish", "application/json", strings.NewReader(`{"channel":"broadcast","data":1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == 200 {
		t.Fatal("POST /publish answered 200 with PUBLISH_TOKEN unset")
	}
}

// TestGapRecovery cuts the pub/sub connection and keeps ssebridge from
// reconnecting while durable events are published: once it is back, the
// stream gets them, in order, once.
// cutFeed opens a gap in the instance's pub/sub feed: new connections
// fail to authenticate and the pub/sub connection is killed, so nothing
// published meanwhile reaches the instance live. It returns a connection
// that stays in, to publish during the gap and to end it with
// CONFIG SET requirepass "".
func (a *app) cutFeed() *redis.Conn {
	a.t.Helper()
	ctx := context.Background()
	admin := a.rdb.Conn()
	a.t.Cleanup(func() { admin.Close() })
	if err := admin.ConfigSet(ctx, "requirepass", "gap").Err(); err != nil {
		a.t.Fatal(err)
	}
	if err := admin.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		a.t.Fatal(err)
	}
	eventually(a.t, 5*time.Second, "readyz to report the gap", func() bool {
		resp, err := http.Get(a.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 503
	})
	return admin
}

func TestGapRecovery(t *testing.T) {
	a := startApp(t, nil, map[string]string{"HEARTBEAT_INTERVAL": "100ms"})
	ctx := context.Background()
	s := a.open(a.session("alice", "lobby"), "")
	publishDurable(t, a.rdb, "room:lobby", `{"event":"n","data":0}`)
	want(t, s, "n", "0")

	admin := a.cutFeed()
	for i := 1; i <= 20; i++ {
		ch := []string{"room:lobby", "user:alice", "broadcast"}[i%3]
		publishDurable(t, admin, ch, fmt.Sprintf(`{"event":"n","data":%d}`, i))
	}
	if err := admin.ConfigSet(ctx, "requirepass", "").Err(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 20; i++ {
		want(t, s, "n", fmt.Sprint(i))
	}
	publishDurable(t, a.rdb, "room:lobby", `{"event":"n","data":21}`)
	want(t, s, "n", "21")
	if got := a.metric("ssebridge_events_recovered_total"); got != 20 {
		t.Errorf("recovered %v events, want 20", got)
	}
}
