package handlers

import (
	"net/http"
	"strings"
	"testing"
)

func corsServer(t *testing.T) (*server, string) {
	s := newServer(t, setup{withRedis: true, options: func(o *Options) {
		o.AllowedOrigins = []string{"https://app.example", " http://b.example:8000/ ", ""}
	}})
	return s, s.session("t1", `{"user":"alice","rooms":["lobby"]}`)
}

// TestOriginAdmission: GET /events/check answers as GET /events would.
func TestOriginAdmission(t *testing.T) {
	s, tok := corsServer(t)
	own := s.url // http://127.0.0.1:port
	tests := []struct {
		name   string
		header []string
		status int
		acao   string // Access-Control-Allow-Origin, and with it Allow-Credentials: true
		vary   bool
	}{
		{"no Origin (curl, same-origin GET)", nil, 200, "", false},
		{"own origin", []string{"Origin", own}, 200, "", true},
		{"own origin behind a TLS proxy", []string{"Origin", strings.Replace(own, "http:", "https:", 1), "X-Forwarded-Proto", "https"}, 200, "", true},
		{"listed", []string{"Origin", "https://app.example"}, 200, "https://app.example", true},
		{"listed with space and slash in ALLOWED_ORIGINS", []string{"Origin", "http://b.example:8000"}, 200, "http://b.example:8000", true},
		{"listed host, other scheme", []string{"Origin", "http://app.example"}, 403, "", true},
		{"listed host, other port", []string{"Origin", "https://app.example:8443"}, 403, "", true},
		{"unlisted", []string{"Origin", "https://evil.example"}, 403, "", true},
		{"null (sandboxed page, file:)", []string{"Origin", "null"}, 403, "", true},
		{"own host, other scheme", []string{"Origin", strings.Replace(own, "http:", "https:", 1)}, 403, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hdr(append([]string{"Authorization", "Bearer " + tok}, tt.header...)...)
			resp, body := s.do("GET", "/events/check", h, "")
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tt.status)
			}
			if tt.status == 403 && body != `{"error":"origin not allowed"}` {
				t.Errorf("body %s", body)
			}
			checkCORS(t, resp.Header, tt.acao, tt.vary)
		})
	}
}

func checkCORS(t *testing.T, h http.Header, acao string, vary bool) {
	t.Helper()
	if got := h.Get("Access-Control-Allow-Origin"); got != acao {
		t.Errorf("Access-Control-Allow-Origin %q, want %q", got, acao)
	}
	wantCreds := ""
	if acao != "" {
		wantCreds = "true"
	}
	if got := h.Get("Access-Control-Allow-Credentials"); got != wantCreds {
		t.Errorf("Access-Control-Allow-Credentials %q, want %q", got, wantCreds)
	}
	if got := strings.Contains(strings.Join(h.Values("Vary"), ","), "Origin"); got != vary {
		t.Errorf("Vary %q, want Origin in it: %v", h.Values("Vary"), vary)
	}
}

// TestPreflight: what a fetch() with an Authorization header asks first.
func TestPreflight(t *testing.T) {
	s, _ := corsServer(t)
	for _, path := range []string{"/events", "/events/check"} {
		for _, tt := range []struct {
			name, origin string
			status       int
			acao         string
		}{
			{"listed", "https://app.example", 204, "https://app.example"},
			{"unlisted", "https://evil.example", 403, ""},
		} {
			t.Run(path+" "+tt.name, func(t *testing.T) {
				resp, body := s.do("OPTIONS", path, hdr("Origin", tt.origin,
					"Access-Control-Request-Method", "GET", "Access-Control-Request-Headers", "authorization"), "")
				if resp.StatusCode != tt.status {
					t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tt.status)
				}
				checkCORS(t, resp.Header, tt.acao, true)
				if tt.status != 204 {
					if body != `{"error":"origin not allowed"}` {
						t.Errorf("body %s", body)
					}
					if m := resp.Header.Get("Access-Control-Allow-Methods"); m != "" {
						t.Errorf("a refused preflight allows methods %q", m)
					}
					return
				}
				if m := resp.Header.Get("Access-Control-Allow-Methods"); m != "GET" {
					t.Errorf("Access-Control-Allow-Methods %q", m)
				}
				allowed := strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers"))
				for _, want := range []string{"authorization", "last-event-id"} {
					if !strings.Contains(allowed, want) {
						t.Errorf("Access-Control-Allow-Headers %q lacks %s", allowed, want)
					}
				}
				if resp.Header.Get("Access-Control-Max-Age") == "" {
					t.Error("no Access-Control-Max-Age")
				}
			})
		}
	}
}
