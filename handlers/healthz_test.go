package handlers

import (
	"net/http"
	"testing"
)

// TestHealthz: /healthz answers 200 with the version it was given, and
// needs neither Redis nor a session.
func TestHealthz(t *testing.T) {
	s := newServer(t, setup{options: func(o *Options) { o.Version = "1.2.3-test" }})
	resp, body := s.do(http.MethodGet, "/healthz", nil, "")
	if resp.StatusCode != http.StatusOK || body != `{"status":"ok","version":"1.2.3-test"}` {
		t.Fatalf("GET /healthz: %d %s, want 200 {\"status\":\"ok\",\"version\":\"1.2.3-test\"}", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" && ct != "application/json; charset=UTF-8" {
		t.Errorf("Content-Type %q, want JSON", ct)
	}
}
