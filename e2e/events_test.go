package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/ssetest"
	"github.com/ssebridge/ssebridge/wire"
)

func TestAuth(t *testing.T) {
	a := startApp(t, nil, map[string]string{"MAX_SESSION_BYTES": "1024"})
	ctx := context.Background()
	set := func(token, value string) {
		if err := a.rdb.Set(ctx, a.cfg.SessionPrefix+token, value, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	set("good", `{"user":"alice","rooms":["lobby"]}`)
	set("numeric", `{"user":42}`)
	set("notjson", `{"user":"alice"`)
	set("nouser", `{"rooms":["lobby"]}`)
	set("badroom", `{"user":"alice","rooms":["no spaces"]}`)
	set("huge", `{"user":"alice","pad":"`+strings.Repeat("x", 2000)+`"}`)
	// An expired session: set with a 1 ms TTL, then wait until Redis has dropped it.
	if err := a.rdb.Set(ctx, a.cfg.SessionPrefix+"expired", `{"user":"alice"}`, time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the session to expire", func() bool {
		return a.rdb.Exists(ctx, a.cfg.SessionPrefix+"expired").Val() == 0
	})
	if err := a.rdb.HSet(ctx, a.cfg.SessionPrefix+"hash", "user", "alice").Err(); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		header http.Header
		status int
		errHas string
	}{
		{"no token", nil, 401, "no session"},
		{"unknown token", bearer("nope"), 401, "unknown or expired"},
		{"expired session", bearer("expired"), 401, "unknown or expired"},
		{"malformed JSON", bearer("notjson"), 401, "malformed session"},
		{"no user", bearer("nouser"), 401, `user\" is missing`},
		{"bad room in session", bearer("badroom"), 401, "malformed session"},
		{"oversized session", bearer("huge"), 401, "longer than 1024 bytes"},
		{"not a string key", bearer("hash"), 401, "malformed session"},
		{"bearer token", bearer("good"), 200, ""},
		{"cookie", http.Header{"Cookie": {"sse_session=good"}}, 200, ""},
		{"integer user", bearer("numeric"), 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ssetest.Open(ctx, a.url+"/events", tt.header)
			if tt.status == 200 {
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				ev, err := s.NextEvent(5 * time.Second)
				if err != nil || ev.Event != "ready" || ev.Retry == "" {
					t.Fatalf("want retry: and ready, got %+v %v", ev, err)
				}
				h := s.Response.Header
				if h.Get("Content-Type") != "text/event-stream" || h.Get("Cache-Control") != "no-store" || h.Get("X-Accel-Buffering") != "no" {
					t.Errorf("headers: %v", h)
				}
				return
			}
			se, ok := err.(*ssetest.StatusError)
			if !ok {
				t.Fatalf("want status %d, got %v", tt.status, err)
			}
			if se.Response.StatusCode != tt.status || !strings.Contains(se.Body, tt.errHas) || !strings.HasPrefix(se.Body, `{"error":`) {
				t.Fatalf("want %d with %q, got %d %s", tt.status, tt.errHas, se.Response.StatusCode, se.Body)
			}
			if strings.Contains(se.Body, "nope") || strings.Contains(se.Body, "expired\"") {
				t.Errorf("the token is echoed: %s", se.Body)
			}
		})
	}
	if got := a.metric(`ssebridge_handshakes_refused_total{reason="unknown_session"}`); got != 2 {
		t.Errorf("unknown_session refusals counted %v, want 2", got)
	}
}

// TestCheckEndpoint: /events/check answers as /events would, and names
// the session (wire.SessionID, as ready does) once it is known, a refusal
// for a limit included; never the token.
func TestCheckEndpoint(t *testing.T) {
	a := startApp(t, nil, map[string]string{"MAX_STREAMS_PER_USER": "1"})
	token := a.session("alice", "lobby")
	sid := wire.SessionID(token, "alice")
	if other := wire.SessionID(a.session("alice", "lobby"), "alice"); other == sid {
		t.Fatalf("two sessions of alice have one id %q", sid)
	}
	type row struct {
		header http.Header
		query  string
		status int
		body   string
	}
	check := func(rows ...row) {
		t.Helper()
		for _, tt := range rows {
			req, _ := http.NewRequest("GET", a.url+"/events/check"+tt.query, nil)
			req.Header = tt.header
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status || strings.TrimSpace(string(body)) != tt.body {
				t.Errorf("check%s: got %d %s, want %d %s", tt.query, resp.StatusCode, body, tt.status, tt.body)
			}
			if strings.Contains(string(body), token) {
				t.Errorf("check%s: the answer holds the token: %s", tt.query, body)
			}
		}
	}
	check(
		row{bearer(token), "", 200, `{"rooms":["lobby"],"session":"` + sid + `","user":"alice"}`},
		row{bearer(token), "?rooms=lobby", 200, `{"rooms":["lobby"],"session":"` + sid + `","user":"alice"}`},
		row{bearer(token), "?rooms=other", 403, `{"error":"room \"other\" is not in the session"}`},
		row{bearer("nope"), "", 401, `{"error":"unknown or expired session"}`},
	)
	// The ready event names the same session.
	s, err := ssetest.Open(context.Background(), a.url+"/events", bearer(token))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want(t, s, "ready", `{"user":"alice","rooms":["lobby"],"session":"`+sid+`"}`)
	// alice's one stream is open: a refusal, which names the session still.
	check(row{bearer(token), "", 429, `{"error":"too many streams for this user","session":"` + sid + `"}`})
}

func TestOrigin(t *testing.T) {
	a := startApp(t, nil, map[string]string{"ALLOWED_ORIGINS": "https://app.example.com, http://localhost:3000"})
	token := a.session("alice")
	self := a.url // http://127.0.0.1:port
	tests := []struct {
		name     string
		origin   string
		status   int
		wantACAO string
	}{
		{"none", "", 200, ""},
		{"allowed", "https://app.example.com", 200, "https://app.example.com"},
		{"second allowed", "http://localhost:3000", 200, "http://localhost:3000"},
		{"own origin", self, 200, ""},
		{"refused", "https://evil.example.com", 403, ""},
		{"refused: scheme differs", "http://app.example.com", 403, ""},
		{"null origin", "null", 403, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := bearer(token)
			if tt.origin != "" {
				h.Set("Origin", tt.origin)
			}
			s, err := ssetest.Open(context.Background(), a.url+"/events", h)
			var resp *http.Response
			if err == nil {
				resp = s.Response
				s.Close()
			} else if se, ok := err.(*ssetest.StatusError); ok {
				resp = se.Response
			} else {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			acao := resp.Header.Values("Access-Control-Allow-Origin")
			acac := resp.Header.Get("Access-Control-Allow-Credentials")
			if tt.wantACAO == "" {
				if len(acao) != 0 || acac != "" {
					t.Fatalf("CORS headers on a non-CORS answer: %v %q", acao, acac)
				}
				return
			}
			if len(acao) != 1 || acao[0] != tt.wantACAO || acac != "true" {
				t.Fatalf("Access-Control-Allow-Origin %v, -Credentials %q; want exactly %q and true", acao, acac, tt.wantACAO)
			}
		})
	}
}

func TestDelivery(t *testing.T) {
	a := startApp(t, nil, nil)
	alice := a.session("alice", "lobby", "team-7")
	bob := a.session("bob", "lobby")
	carol := a.session("carol")

	alice1 := a.open(alice, "")
	alice2 := a.open(alice, "?rooms=team-7")
	bob1 := a.open(bob, "")
	carol1 := a.open(carol, "")

	a.publish("user:alice", `{"event":"dm","data":{"text":"for alice"}}`)
	a.publish("room:lobby", `{"event":"chat","data":"lobby"}`)
	a.publish("room:team-7", `{"event":"chat","data":"team"}`)
	a.publish("broadcast", `{"event":"news","data":"all"}`)

	want(t, alice1, "dm", `{"text":"for alice"}`)
	want(t, alice1, "chat", "lobby")
	want(t, alice1, "chat", "team")
	want(t, alice1, "news", "all")

	want(t, alice2, "dm", `{"text":"for alice"}`) // a user's second stream gets its events too
	want(t, alice2, "chat", "team")               // ?rooms=team-7: no lobby
	want(t, alice2, "news", "all")

	want(t, bob1, "chat", "lobby")
	want(t, bob1, "news", "all")

	want(t, carol1, "news", "all")

	// Nothing else reached anyone: a marker on each user's channel comes next.
	for user, s := range map[string]*ssetest.Stream{"alice": alice1, "bob": bob1, "carol": carol1} {
		a.publish("user:"+user, "marker")
		wantNothingBefore(t, s, "marker")
	}
}

func TestOrderExactlyOnce(t *testing.T) {
	a := startApp(t, nil, nil)
	const streams, events = 4, 300
	var ss []*ssetest.Stream
	for i := range streams {
		ss = append(ss, a.open(a.session(fmt.Sprintf("u%d", i), "big"), ""))
	}
	for i := range events {
		channel := []string{"room:big", "broadcast"}[i%2]
		a.publish(channel, fmt.Sprintf(`{"event":"n","id":"%d","data":%d}`, i, i))
	}
	for i, s := range ss {
		for n := range events {
			ev, err := s.NextEvent(5 * time.Second)
			if err != nil {
				t.Fatalf("stream %d: after %d events: %v", i, n, err)
			}
			if ev.Data != fmt.Sprint(n) || ev.ID != fmt.Sprint(n) {
				t.Fatalf("stream %d: event %d has data %q id %q: out of order or duplicated", i, n, ev.Data, ev.ID)
			}
		}
	}
}

func TestBadInput(t *testing.T) {
	a := startApp(t, nil, map[string]string{"MAX_EVENT_BYTES": "1000"})
	s := a.open(a.session("alice", "lobby"), "")
	dropped := func(reason string) float64 {
		return a.metric(`ssebridge_events_dropped_total{reason="` + reason + `"}`)
	}
	tests := []struct {
		name      string
		payload   string
		wantEvent string // "" when the message must be dropped
		wantData  string
		wantID    string
		reason    string
	}{
		{"non-JSON payload is sent whole", "plain text", "message", "plain text", "", ""},
		{"JSON that is not an envelope is sent whole", `{"text":"hi"}`, "message", `{"text":"hi"}`, "", ""},
		{"JSON array is sent whole", `[1,2]`, "message", `[1,2]`, "", ""},
		{"multi-line data becomes several data lines", `{"data":"a\nb\r\nc\rd"}`, "message", "a\nb\nc\nd", "", ""},
		{"object data is compact JSON", `{"event":"e","data":{ "x" : [1, 2] }}`, "e", `{"x":[1,2]}`, "", ""},
		{"id is passed on", `{"event":"e","id":"7","data":"x"}`, "e", "x", "7", ""},
		{"LF in event is refused", `{"event":"a\ndata: injected","data":"x"}`, "", "", "", "bad_field"},
		{"CR in event is refused", `{"event":"a\rb","data":"x"}`, "", "", "", "bad_field"},
		{"LF in id is refused", `{"id":"1\n\nevent: evil","data":"x"}`, "", "", "", "bad_field"},
		{"non-string event is refused", `{"event":5,"data":"x"}`, "", "", "", "bad_envelope"},
		{"payload over MAX_EVENT_BYTES is refused", `{"data":"` + strings.Repeat("x", 1000) + `"}`, "", "", "", "too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dropped(tt.reason)
			a.publish("room:lobby", tt.payload)
			a.publish("room:lobby", "after") // the stream keeps working
			if tt.wantEvent != "" {
				ev := want(t, s, tt.wantEvent, tt.wantData)
				if ev.ID != tt.wantID {
					t.Errorf("id %q, want %q", ev.ID, tt.wantID)
				}
			}
			want(t, s, "message", "after")
			if tt.reason != "" {
				if got := dropped(tt.reason); got != before+1 {
					t.Errorf("dropped{reason=%q} = %v, want %v", tt.reason, got, before+1)
				}
			}
		})
	}

	t.Run("invalid room names are refused with 400", func(t *testing.T) {
		tok := a.session("bob", "lobby")
		for _, q := range []string{"?rooms=no%20space", "?rooms=lobby,", "?rooms=" + strings.Repeat("r", 129), "?rooms=a%0Ab"} {
			if se := a.refusal(bearer(tok), q); se.Response.StatusCode != 400 || !strings.Contains(se.Body, "rooms:") {
				t.Errorf("%s: got %d %s", q, se.Response.StatusCode, se.Body)
			}
		}
		if se := a.refusal(bearer(tok), "?rooms=lobby,secret"); se.Response.StatusCode != 403 {
			t.Errorf("room outside the session: got %d %s", se.Response.StatusCode, se.Body)
		}
	})
	t.Run("bad control messages are counted", func(t *testing.T) {
		before := dropped("bad_control")
		for _, p := range []string{`nope`, `{"op":"join","user":"alice","room":"bad room"}`, `{"op":"explode","user":"alice"}`, `{"op":"logout","user":""}`} {
			a.publish("control", p)
		}
		eventually(t, 5*time.Second, "4 bad control messages counted", func() bool { return dropped("bad_control") == before+4 })
		a.publish("room:lobby", "still here")
		want(t, s, "message", "still here")
	})
}

// TestTwoSessionCookies: a request that carries the session cookie twice,
// each naming a live session (a sibling subdomain or a plain-HTTP answer
// set a second one, with a longer path so that browsers send it first), is
// refused: ssebridge read the first (Go's Request.Cookie), Django reads
// the last (django.http.cookie.parse_cookie), so the stream was the
// planted session's while the backend, its login's revoke included, saw
// the browser's own. A cookie left on another path or domain, whose
// session is gone, does not count: the live one is the browser's.
func TestTwoSessionCookies(t *testing.T) {
	a := startApp(t, nil, nil)
	planted, own := a.session("mallory"), a.session("alice")
	get := func(path, cookie string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, a.url+path, nil)
		req.Header.Set("Cookie", cookie)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := http.DefaultClient.Do(req.WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body := make([]byte, 300)
		n, _ := io.ReadFull(resp.Body, body)
		if resp.StatusCode == http.StatusOK && path == "/events" {
			n = 0 // a stream: its first bytes say nothing here
		}
		return resp.StatusCode, string(body[:n])
	}
	for _, path := range []string{"/events", "/events/check"} {
		if code, body := get(path, "sse_session="+planted+"; sse_session="+own); code != http.StatusBadRequest {
			t.Errorf("GET %s with two live session cookies: %d %q, want 400", path, code, body)
		}
	}
	if got := a.metric(`ssebridge_handshakes_refused_total{reason="two_cookies"}`); got != 2 {
		t.Errorf("refusals counted as two_cookies: %v, want 2", got)
	}
	// A stale cookie beside the live one, before or after it.
	for _, cookie := range []string{"sse_session=gone; sse_session=" + own, "sse_session=" + own + "; sse_session=gone"} {
		if code, body := get("/events/check", cookie); code != http.StatusOK || !strings.Contains(body, `"user":"alice"`) {
			t.Errorf("GET /events/check with %q: %d %q, want alice's 200", cookie, code, body)
		}
	}
	if code, _ := get("/events/check", "sse_session=a; sse_session=b; sse_session=c; sse_session=d; sse_session="+own); code != http.StatusBadRequest {
		t.Errorf("five values of the session cookie: %d, want 400", code)
	}
}
