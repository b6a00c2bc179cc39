package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

func TestPublishBody(t *testing.T) {
	const max = 200
	s := newServer(t, setup{withRedis: true, options: func(o *Options) {
		o.PublishToken = "s3cret"
		o.MaxEventBytes = max
	}})
	auth := hdr("Authorization", "Bearer s3cret", "Content-Type", "application/json")
	// envelope is {"event":"e","data":"<...>"} with n '<': 23 bytes besides them.
	lt := func(n int) string {
		return `{"channel":"room:lobby","event":"e","data":"` + strings.Repeat("<", n) + `"}`
	}
	tests := []struct {
		name   string
		header http.Header
		body   string
		status int
		errHas string // in the JSON error; "" for a 200
	}{
		{"no token", hdr("Content-Type", "application/json"), `{"channel":"room:lobby","data":1}`, 401, "PUBLISH_TOKEN"},
		{"wrong token", hdr("Authorization", "Bearer nope"), `{"channel":"room:lobby","data":1}`, 401, "PUBLISH_TOKEN"},
		{"token without Bearer", hdr("Authorization", "s3cret"), `{"channel":"room:lobby","data":1}`, 401, "PUBLISH_TOKEN"},
		{"not JSON", auth, `hello`, 400, "body"},
		{"empty body", auth, ``, 400, "body"},
		{"unknown field", auth, `{"channel":"room:lobby","data":1,"evnt":"x"}`, 400, `unknown field "evnt"`},
		// encoding/json matches struct fields without regard to case: a
		// backend that merges a user's JSON into the body it sends would
		// see its own "channel", ssebridge the user's "Channel".
		{"keys are matched exactly: Channel", auth, `{"channel":"room:lobby","data":1,"Channel":"user:admin"}`, 400, `unknown field "Channel"`},
		{"keys are matched exactly: DATA", auth, `{"channel":"room:lobby","DATA":1}`, 400, `unknown field "DATA"`},
		{"trailing object", auth, `{"channel":"room:lobby","data":1}{"channel":"broadcast","data":2}`, 400, "after the JSON object"},
		{"trailing garbage", auth, `{"channel":"room:lobby","data":1} x`, 400, "after the JSON object"},
		{"trailing whitespace is fine", auth, "{\"channel\":\"room:lobby\",\"data\":1}\n \n", 200, ""},
		{"bad channel", auth, `{"channel":"lobby","data":1}`, 400, "want broadcast"},
		{"bad room name", auth, `{"channel":"room:a b","data":1}`, 400, "channel"},
		{"no data", auth, `{"channel":"room:lobby","event":"x"}`, 400, `"data" is missing`},
		{"LF in event", auth, `{"channel":"room:lobby","event":"a\nb","data":1}`, 400, "bad_field"},
		{"at the limit with '<'", auth, lt(max - 23), 200, ""},
		{"over the limit by one with '<'", auth, lt(max - 22), 413, fmt.Sprintf("event is %d bytes, over MAX_EVENT_BYTES (%d)", max+1, max)},
		{"'<' in an object", auth, `{"channel":"room:lobby","data":{"html":"` + strings.Repeat("<b>", 50) + `"}}`, 200, ""},
		{"body far too large", auth, lt(5000), 413, "body over"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := s.do("POST", "/publish", tt.header, tt.body)
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tt.status)
			}
			if tt.status == 200 {
				var ok struct{ ID string }
				if json.Unmarshal([]byte(body), &ok) != nil || ok.ID == "" {
					t.Fatalf("answer %s, want {\"id\":...}", body)
				}
				return
			}
			var e struct{ Error string }
			if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e.Error, tt.errHas) {
				t.Fatalf("answer %s, want {\"error\": ...%q...}", body, tt.errHas)
			}
		})
	}
	// Every refusal is counted, by reason.
	reasons := map[int]string{401: "unauthorized", 400: "bad_request", 413: "too_large"}
	want := map[string]float64{}
	for _, tt := range tests {
		if r, ok := reasons[tt.status]; ok {
			want[r]++
		}
	}
	for r, n := range want {
		series := `ssebridge_publish_refused_total{reason="` + r + `"}`
		if got := s.metric(series); got != n {
			t.Errorf("%s = %v, want %v", series, got, n)
		}
	}
}

// TestPublishStoresAsSent: the envelope stored (and so sent) keeps '<' as
// it is, and its size is counted on those bytes.
func TestPublishStoresAsSent(t *testing.T) {
	s := newServer(t, setup{withRedis: true, options: func(o *Options) { o.PublishToken = "s3cret" }})
	data := strings.Repeat("<", 20000) // 120 KB once HTML-escaped, over the default 64 KiB
	resp, body := s.do("POST", "/publish", hdr("Authorization", "Bearer s3cret"),
		`{"channel":"room:lobby","event":"chat","data":{"text":"`+data+`"}}`)
	if resp.StatusCode != 200 {
		t.Fatalf("got %d %s, want 200", resp.StatusCode, body)
	}
	entries, err := s.rdb.XRange(context.Background(), "sse:{room:lobby}:history", "-", "+").Result()
	if err != nil || len(entries) != 1 {
		t.Fatalf("history: %v %v", entries, err)
	}
	want := `{"event":"chat","data":{"text":"` + data + `"}}`
	for _, v := range entries[0].Values {
		if v == want {
			return
		}
	}
	t.Fatalf("history entry %.200v does not hold the envelope as sent", entries[0].Values)
}
