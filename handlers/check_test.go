package handlers

import (
	"strings"
	"testing"
)

// TestCheckAnonymous: with ?anonymous=ok, GET /events/check answers a
// request with no session, or an unknown one, 200 with a null user and
// session and the reason in error (a page asking on load whether the
// browser is logged in); every other refusal keeps its status, and a live
// session its answer.
func TestCheckAnonymous(t *testing.T) {
	s := newServer(t, setup{withRedis: true})
	tok := s.session("t1", `{"user":"alice","rooms":["lobby"]}`)
	tests := []struct {
		name   string
		path   string
		header []string
		status int
		body   string
	}{
		{"no session", "/events/check?anonymous=ok", nil, 200,
			`{"error":"no session: send the sse_session cookie or an Authorization: Bearer header","rooms":[],"session":null,"user":null}`},
		{"unknown session", "/events/check?anonymous=ok", []string{"Authorization", "Bearer nope"}, 200,
			`{"error":"unknown or expired session","rooms":[],"session":null,"user":null}`},
		{"no session, without the parameter", "/events/check", nil, 401,
			`{"error":"no session: send the sse_session cookie or an Authorization: Bearer header"}`},
		{"another value", "/events/check?anonymous=1", nil, 401,
			`{"error":"no session: send the sse_session cookie or an Authorization: Bearer header"}`},
		{"a room not in the session", "/events/check?anonymous=ok&rooms=other", []string{"Authorization", "Bearer " + tok}, 403,
			`{"error":"room \"other\" is not in the session"}`},
		{"a live session", "/events/check?anonymous=ok", []string{"Authorization", "Bearer " + tok}, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := s.do("GET", tt.path, hdr(tt.header...), "")
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tt.status)
			}
			if tt.body != "" && strings.TrimSpace(body) != tt.body {
				t.Fatalf("body %s, want %s", body, tt.body)
			}
			if tt.body == "" && !strings.Contains(body, `"user":"alice"`) {
				t.Fatalf("body %s, want alice's session", body)
			}
		})
	}
}
