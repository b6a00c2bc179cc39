package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/ssebridge/ssebridge/wire"
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

// TestPublishIdempotencyKey: POST /publish with an Idempotency-Key: a
// repeat answers the first id with Idempotent-Replayed and publishes
// nothing, the key with another event is 422, a malformed key is 400
// naming the header, and the sf-string form is the same key as the bare
// token it quotes.
func TestPublishIdempotencyKey(t *testing.T) {
	s := newServer(t, setup{withRedis: true, options: func(o *Options) { o.PublishToken = "s3cret" }})
	auth := func(kv ...string) http.Header {
		return hdr(append([]string{"Authorization", "Bearer s3cret"}, kv...)...)
	}
	const lobby1, lobby2 = `{"channel":"room:lobby","data":1}`, `{"channel":"room:lobby","data":2}`
	ids := map[string]string{} // by the name of the step that got it
	tests := []struct {
		name     string
		header   http.Header
		body     string
		status   int
		replayed bool
		sameAs   string // the step whose id this answer must repeat
		errHas   string
	}{
		{"first", auth("Idempotency-Key", "k-1"), lobby1, 200, false, "", ""},
		{"repeat", auth("Idempotency-Key", "k-1"), lobby1, 200, true, "first", ""},
		{"repeat as an sf-string", auth("Idempotency-Key", `"k-1"`), lobby1, 200, true, "first", ""},
		{"another event", auth("Idempotency-Key", "k-1"), lobby2, 422, false, "", "another channel or event"},
		{"another channel", auth("Idempotency-Key", "k-1"), `{"channel":"room:x","data":1}`, 422, false, "", "another channel or event"},
		{"another key", auth("Idempotency-Key", "k-2"), lobby1, 200, false, "", ""},
		{"no key", auth(), lobby1, 200, false, "", ""},
		{"sf-string with escapes", auth("Idempotency-Key", `"a\"b\\c"`), lobby2, 200, false, "", ""},
		{"its bare form", auth("Idempotency-Key", `a"b\c`), lobby2, 200, true, "sf-string with escapes", ""},
		{"256 characters", auth("Idempotency-Key", strings.Repeat("k", 256)), lobby1, 400, false, "", "Idempotency-Key"},
		{"empty sf-string", auth("Idempotency-Key", `""`), lobby1, 400, false, "", "Idempotency-Key"},
		{"space inside", auth("Idempotency-Key", "a b"), lobby1, 400, false, "", "Idempotency-Key"},
		{"space in an sf-string", auth("Idempotency-Key", `"a b"`), lobby1, 400, false, "", "Idempotency-Key"},
		{"unclosed sf-string", auth("Idempotency-Key", `"abc`), lobby1, 400, false, "", "Idempotency-Key"},
		{"after the sf-string", auth("Idempotency-Key", `"abc";x`), lobby1, 400, false, "", "Idempotency-Key"},
		{"bad escape", auth("Idempotency-Key", `"a\bc"`), lobby1, 400, false, "", "Idempotency-Key"},
		{"not ASCII", auth("Idempotency-Key", "clé"), lobby1, 400, false, "", "Idempotency-Key"},
		{"twice", auth("Idempotency-Key", "k-1", "Idempotency-Key", "k-1"), lobby1, 400, false, "", "Idempotency-Key"},
		{"a key is checked after the token", hdr("Idempotency-Key", "a b"), lobby1, 401, false, "", "PUBLISH_TOKEN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := s.do("POST", "/publish", tt.header, tt.body)
			if resp.StatusCode != tt.status {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tt.status)
			}
			if got := resp.Header.Get("Idempotent-Replayed") == "true"; got != tt.replayed {
				t.Fatalf("Idempotent-Replayed: %q, want replayed %v", resp.Header.Get("Idempotent-Replayed"), tt.replayed)
			}
			if tt.status != 200 {
				var e struct{ Error string }
				if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e.Error, tt.errHas) {
					t.Fatalf("answer %s, want {\"error\": ...%q...}", body, tt.errHas)
				}
				return
			}
			var ok struct{ ID string }
			if json.Unmarshal([]byte(body), &ok) != nil || ok.ID == "" {
				t.Fatalf("answer %s, want {\"id\":...}", body)
			}
			ids[tt.name] = ok.ID
			if tt.sameAs != "" && ok.ID != ids[tt.sameAs] {
				t.Fatalf("id %s, want %s (the id of %q)", ok.ID, ids[tt.sameAs], tt.sameAs)
			}
		})
	}
	// first, another key, no key, the escaped one: 4 events.
	if n := s.rdb.XLen(context.Background(), "sse:{room:lobby}:history").Val(); n != 4 {
		t.Fatalf("%d events in room:lobby's history, want 4", n)
	}
	if n := s.rdb.XLen(context.Background(), "sse:{room:x}:history").Val(); n != 0 {
		t.Fatalf("%d events in room:x's history, want 0", n)
	}
	if got := s.metric(`ssebridge_publish_refused_total{reason="idempotency_key_reused"}`); got != 2 {
		t.Fatalf("idempotency_key_reused refusals: %v, want 2", got)
	}
}

// failingPublisher is a DurablePublisher whose Redis fails: with id set,
// after the event was published (a WAIT that fell short).
type failingPublisher struct{ id wire.Cursor }

func (f failingPublisher) Publish(ctx context.Context, channel string, envelope []byte) (wire.Cursor, error) {
	id, _, err := f.PublishOnce(ctx, channel, envelope, "")
	return id, err
}

func (f failingPublisher) PublishOnce(context.Context, string, []byte, string) (wire.Cursor, bool, error) {
	return f.id, false, errors.New("i/o timeout")
}

// TestPublish503SaysMaybePublished: a 503 says what a retry must know:
// the event may be published, and the same Idempotency-Key makes the
// retry safe. The key's value is never logged.
func TestPublish503SaysMaybePublished(t *testing.T) {
	for _, tt := range []struct {
		name   string
		id     wire.Cursor
		errHas string
	}{
		{"no answer", wire.Cursor{}, "may have been published; retry with the same Idempotency-Key"},
		{"published, WAIT short", wire.Cursor{Epoch: "e", MS: 1}, "was published but is not known to be on enough replicas"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, setup{options: func(o *Options) {
				o.PublishToken = "s3cret"
				o.History = failingPublisher{tt.id}
			}})
			resp, body := s.do("POST", "/publish", hdr("Authorization", "Bearer s3cret", "Idempotency-Key", "secret-looking-key"), `{"channel":"room:lobby","data":1}`)
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, tt.errHas) {
				t.Fatalf("got %d (Retry-After %q) %s, want 503 with Retry-After saying %q", resp.StatusCode, resp.Header.Get("Retry-After"), body, tt.errHas)
			}
			if strings.Contains(s.log.String(), "secret-looking-key") {
				t.Fatalf("the key's value is in the log:\n%s", s.log.String())
			}
		})
	}
}
