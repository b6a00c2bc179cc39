package handlers

import (
	"net/http"
	"testing"
)

// TestNoStore: every answer that carries a user's data (who the session is,
// its rooms, a login's cookie) says Cache-Control: no-store, so that no
// browser or shared cache keeps it; refusals too, since they name rooms.
// (GET /events itself, which needs a hub, is TestAuth's in e2e/.)
func TestNoStore(t *testing.T) {
	s := newServer(t, setup{withRedis: true, dev: true, options: func(o *Options) { o.PublishToken = "s3cret" }})
	tok := s.session("t1", `{"user":"alice","rooms":["lobby"]}`)
	form := func(kv ...string) http.Header {
		return hdr(append([]string{"Content-Type", "application/x-www-form-urlencoded"}, kv...)...)
	}
	for _, tt := range []struct {
		name, method, path string
		header             http.Header
		body               string
		status             int
	}{
		{"check", "GET", "/events/check", hdr("Authorization", "Bearer "+tok), "", 200},
		{"check, room not in the session", "GET", "/events/check?rooms=other", hdr("Authorization", "Bearer "+tok), "", 403},
		{"check, unknown session", "GET", "/events/check", hdr("Authorization", "Bearer nope"), "", 401},
		{"publish", "POST", "/publish", hdr("Authorization", "Bearer s3cret"), `{"channel":"room:lobby","data":1}`, 200},
		{"dev login", "POST", "/dev/login", form(), "user=bob&rooms=lobby", 200},
		{"dev publish", "POST", "/dev/publish", form(), "channel=room:lobby&payload=x", 200},
		{"dev logout", "POST", "/dev/logout", form("Cookie", "sse_session="+tok), "", 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := s.do(tt.method, tt.path, tt.header, tt.body)
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tt.status)
			}
			if got := resp.Header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control %q, want no-store (body %s)", got, body)
			}
		})
	}
}
