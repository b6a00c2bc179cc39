package handlers

import (
	"strings"
	"testing"
	"time"
)

// TestRefusalLog: a refusal the developer must act on is logged at info,
// naming the fix, once a minute per reason, with the count held back; a
// token is never logged.
func TestRefusalLog(t *testing.T) {
	s := newServer(t, setup{withRedis: true})
	const secret = "SECRET-TOKEN-42"
	tok := s.session(secret, `{"user":"alice"}`)
	origin := hdr("Origin", "http://localhost:8000", "Authorization", "Bearer "+tok)
	originHint := `origin \"http://localhost:8000\" is not allowed: add it to ALLOWED_ORIGINS`
	noTokenHint := `no session cookie \"sse_session\" and no Authorization header: is the cookie sent (SameSite, domain, withCredentials: true)?`
	tests := []struct {
		name, method, path string
		header             []string
		status             int
		hint               string
	}{
		{"origin", "GET", "/events/check", []string{"Origin", "http://localhost:8000", "Authorization", "Bearer " + tok}, 403, originHint},
		{"origin, preflight", "OPTIONS", "/events", []string{"Origin", "http://localhost:8000"}, 403, originHint},
		{"origin, stream", "GET", "/events", []string{"Origin", "http://localhost:8000", "Cookie", "sse_session=" + tok}, 403, originHint},
		{"no token", "GET", "/events/check", nil, 401, noTokenHint},
		{"no token, stream", "GET", "/events", []string{"Cookie", "other=1"}, 401, noTokenHint},
		{"empty cookie", "GET", "/events", []string{"Cookie", "sse_session="}, 401, noTokenHint},
	}
	// Each reason's first refusal is logged; the rest of the minute's are counted.
	for _, tt := range tests {
		resp, body := s.do(tt.method, tt.path, hdr(tt.header...), "")
		if resp.StatusCode != tt.status {
			t.Fatalf("%s: got %d %s, want %d", tt.name, resp.StatusCode, body, tt.status)
		}
	}
	for _, hint := range []string{originHint, noTokenHint} {
		if lines := s.log.lines("level=INFO", hint); len(lines) != 1 {
			t.Errorf("%d info lines with %s, want 1:\n%s", len(lines), hint, s.log)
		}
	}
	s.clock.Advance(61 * time.Second)
	s.do("GET", "/events/check", origin, "")
	s.do("GET", "/events", nil, "")
	for _, hint := range []string{originHint, noTokenHint} {
		lines := s.log.lines("level=INFO", hint)
		if len(lines) != 2 || !strings.Contains(lines[1], "suppressed=2") {
			t.Errorf("a minute later, want a second line with suppressed=2:\n%s", strings.Join(lines, "\n"))
		}
	}

	// A refusal the developer cannot fix in configuration stays at debug.
	s.do("GET", "/events/check", hdr("Authorization", "Bearer unknown-"+secret), "")
	s.do("GET", "/events/check?rooms=nope", hdr("Authorization", "Bearer "+tok), "")
	if lines := s.log.lines("level=INFO"); len(lines) != 4 {
		t.Errorf("%d info lines, want the 4 above:\n%s", len(lines), s.log)
	}
	if strings.Contains(s.log.String(), secret) {
		t.Errorf("a token was logged:\n%s", s.log)
	}
}

// TestRefusalLogOrigin: the origin is quoted, so a header cannot forge a
// log line, and cut to a sane length.
func TestRefusalLogOrigin(t *testing.T) {
	s := newServer(t, setup{})
	long := "https://" + strings.Repeat("a", 5000) + ".example"
	s.do("GET", "/events", hdr("Origin", long), "")
	line := s.log.lines("level=INFO", "ALLOWED_ORIGINS")
	if len(line) != 1 || len(line[0]) > 600 {
		t.Fatalf("want one line of sane length, got %d lines:\n%.800s", len(line), s.log)
	}
}

// TestRefusalFlood: a flood of requests a stranger can send (no token, a
// made-up token, a foreign origin, a preflight, a bad room, a session the
// backend wrote wrong, a bad publish token, a foreign page on the try-out's
// /dev routes) logs a bounded number of lines,
// at most one per kind a minute, whatever the level, however many requests.
func TestRefusalFlood(t *testing.T) {
	s := newServer(t, setup{withRedis: true, dev: true, options: func(o *Options) { o.PublishToken = "s3cret" }})
	tok := s.session("good", `{"user":"alice","rooms":["lobby"]}`)
	bad := s.session("bad", `{"user":`)
	kinds := []struct {
		name, method, path string
		header             []string
		status             int
	}{
		{"no token", "GET", "/events/check", nil, 401},
		{"no token, stream", "GET", "/events", nil, 401},
		{"made-up token", "GET", "/events/check", []string{"Authorization", "Bearer made-up"}, 401},
		{"foreign origin", "GET", "/events/check", []string{"Origin", "https://evil.example", "Authorization", "Bearer " + tok}, 403},
		{"foreign origin, stream", "GET", "/events", []string{"Origin", "https://evil.example", "Authorization", "Bearer made-up"}, 403},
		{"foreign origin, preflight", "OPTIONS", "/events", []string{"Origin", "https://evil.example"}, 403},
		{"bad room", "GET", "/events/check?rooms=a%20b", []string{"Authorization", "Bearer " + tok}, 400},
		{"room not in the session", "GET", "/events/check?rooms=other", []string{"Authorization", "Bearer " + tok}, 403},
		{"malformed session", "GET", "/events/check", []string{"Authorization", "Bearer " + bad}, 401},
		{"bad publish token", "POST", "/publish", []string{"Authorization", "Bearer nope"}, 401},
		{"try-out login from a foreign page", "POST", "/dev/login", []string{"Origin", "https://evil.example"}, 403},
		{"try-out publish by DNS rebinding", "POST", "/dev/publish", []string{"Host", "evil.example"}, 421},
	}
	const each = 50
	for range each {
		for _, k := range kinds {
			if resp, body := s.do(k.method, k.path, hdr(k.header...), ""); resp.StatusCode != k.status {
				t.Fatalf("%s: %d %s, want %d", k.name, resp.StatusCode, body, k.status)
			}
		}
	}
	lines := s.log.lines("level=")
	seen := map[string]int{}
	for _, line := range lines {
		_, rest, _ := strings.Cut(line, " ") // without the time
		seen[rest]++
	}
	for line, n := range seen {
		if n > 1 {
			t.Errorf("logged %d times in a minute, want once: %s", n, line)
		}
	}
	if len(lines) > 2*len(kinds) {
		t.Errorf("%d requests logged %d lines, want at most %d:\n%s", each*len(kinds), len(lines), 2*len(kinds), s.log)
	}
}
