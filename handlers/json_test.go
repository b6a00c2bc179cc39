package handlers

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestJSONErrors: every error is {"error": "..."} as application/json, and
// the text reads as written: '<', '>' and '&' are not sent as \u003c.
func TestJSONErrors(t *testing.T) {
	s := newServer(t, setup{withRedis: true, options: func(o *Options) { o.PublishToken = "s3cret" }})
	tok := s.session("t1", `{"user":"alice","rooms":["lobby"]}`)
	tests := []struct {
		name, method, path string
		header             []string
		body               string
		status             int
		want               string // the error text, exactly
	}{
		{"bad room name", "GET", "/events/check?rooms=<b>", []string{"Authorization", "Bearer " + tok}, "", 400,
			`rooms: name "<b>" has a character other than letters, digits and _ - . : @`},
		{"unknown field", "POST", "/publish", []string{"Authorization", "Bearer s3cret"}, `{"channel":"broadcast","data":1,"<&>":1}`, 400,
			`body: want {"channel":..., "event":..., "data":...}: json: unknown field "<&>"`},
		{"wrong method", "PUT", "/events", nil, "", 405, "Method Not Allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := s.do(tt.method, tt.path, hdr(tt.header...), tt.body)
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tt.status)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			if strings.Contains(body, `\u00`) {
				t.Errorf("body %s escapes HTML characters", body)
			}
			var e map[string]string
			if err := json.Unmarshal([]byte(body), &e); err != nil || len(e) != 1 || e["error"] != tt.want {
				t.Fatalf("body %s, want {\"error\": %q}", body, tt.want)
			}
		})
	}
}
