package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// publishField is one key of a POST /publish body, in the order written.
type publishField struct {
	key string
	raw json.RawMessage
}

// objectFields returns the members of the JSON object body in order, or
// false when body is not one JSON object (white space aside).
func objectFields(body []byte) ([]publishField, bool) {
	if !json.Valid(body) {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, false
	}
	var fields []publishField
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			panic(err) // valid JSON
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			panic(err)
		}
		fields = append(fields, publishField{tok.(string), raw})
	}
	return fields, true
}

// validChannel is SPEC.md's rule for logical channels, written apart from
// wire.CheckChannel.
func validChannel(ch string) bool {
	if ch == "broadcast" {
		return true
	}
	for _, p := range []string{"user:", "room:"} {
		if name, ok := strings.CutPrefix(ch, p); ok {
			if len(name) < 1 || len(name) > 128 {
				return false
			}
			for _, r := range name {
				if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("_-.:@", r)) {
					return false
				}
			}
			return true
		}
	}
	return false
}

// expectPublish says what POST /publish must answer to body, and for a 200
// the channel and the envelope it must store. Keys match exactly (not as
// encoding/json matches struct fields, without regard to case), the last
// one written winning; a null leaves a string as it was.
func expectPublish(body []byte, maxEvent int) (status int, channel, envelope string) {
	if len(body) > maxEvent+1024 {
		return http.StatusRequestEntityTooLarge, "", ""
	}
	fields, ok := objectFields(body)
	if !ok {
		return http.StatusBadRequest, "", ""
	}
	var event string
	var data json.RawMessage
	for _, f := range fields {
		switch {
		case f.key == "channel", f.key == "event":
			if string(f.raw) == "null" {
				continue
			}
			if f.raw[0] != '"' {
				return http.StatusBadRequest, "", ""
			}
			s := &channel
			if f.key == "event" {
				s = &event
			}
			if err := json.Unmarshal(f.raw, s); err != nil {
				panic(err)
			}
		case f.key == "data":
			data = f.raw
		default:
			return http.StatusBadRequest, "", "" // unknown field
		}
	}
	if !validChannel(channel) || data == nil {
		return http.StatusBadRequest, "", ""
	}
	var env bytes.Buffer
	env.WriteString("{")
	if event != "" {
		enc := json.NewEncoder(&env)
		enc.SetEscapeHTML(false)
		env.WriteString(`"event":`)
		if err := enc.Encode(event); err != nil {
			panic(err)
		}
		env.Truncate(env.Len() - 1) // Encode's newline
		env.WriteString(",")
	}
	env.WriteString(`"data":`)
	if err := json.Compact(&env, data); err != nil {
		panic(err)
	}
	env.WriteString("}")
	if env.Len() > maxEvent {
		return http.StatusRequestEntityTooLarge, "", ""
	}
	if strings.ContainsAny(event, "\r\n") {
		return http.StatusBadRequest, "", ""
	}
	switch event {
	case "ready", "reset", "logout": // ssebridge's own events
		return http.StatusBadRequest, "", ""
	}
	return http.StatusOK, channel, env.String()
}

// FuzzPublishBody: POST /publish, through the routes of New against a real
// redis-server, answers any body with 200, 400 or 413, never a 5xx; a 200
// exactly for a JSON object with a valid channel and data, within the
// limits; and what it stores is that envelope, one that streams can send.
func FuzzPublishBody(f *testing.F) {
	const maxEvent = 512
	rdb := redistest.Start(f).Client()
	history := store.NewHistory(rdb, "sse:", 5, maxEvent, time.Hour)
	if _, err := history.Configure(context.Background()); err != nil {
		f.Fatal(err)
	}
	e := New(Options{
		History:       history,
		PublishToken:  "s3cret",
		MaxEventBytes: maxEvent,
		MaxRooms:      64,
		SessionCookie: "sse_session",
		Retry:         time.Second,
		Ready:         func(context.Context) error { return nil },
		Registry:      prometheus.NewRegistry(),
		Log:           slog.New(slog.DiscardHandler),
	})

	for _, s := range []string{
		`{"channel":"room:lobby","event":"chat","data":{"from":"bob","text":"hi"}}`,
		`{"channel":"broadcast","data":1}`, `{"channel":"user:42","data":null}`, `{"channel":"user:a@b.c","data":""}`,
		"{\"channel\":\"room:lobby\",\"data\":1}\n \n", ` {"data":[1,{"a":"<b>"}] , "channel" : "broadcast" } `,
		`{"channel":"room:lobby","event":"a\nb","data":1}`, `{"channel":"room:lobby","event":"a\u0000b","data":1}`,
		`{"channel":"room:lobby","event":"","data":1}`, `{"channel":"room:lobby","event":null,"data":1}`,
		`{"channel":"room:lobby","event":"ready","data":1}`, `{"channel":"room:lobby","event":"Reset","data":1}`,
		`{"channel":"room:lobby","event":1,"data":1}`, `{"channel":"room:lobby","data":1,"id":"x"}`,
		`{"channel":"room:lobby","data":1,"evnt":"x"}`, `{"Channel":"broadcast","DATA":1}`,
		`{"channel":"broadcast","channel":"room:a b","data":1}`, `{"channel":"room:a b","channel":"broadcast","data":1}`,
		`{"channel":"broadcast","channel":null,"data":1}`, `{"channel":"broadcast","data":1,"data":2}`,
		`{"channel":"lobby","data":1}`, `{"channel":"room:","data":1}`, `{"channel":"room:é","data":1}`,
		`{"channel":"room:` + strings.Repeat("r", 129) + `","data":1}`, `{"channel":"room:lobby"}`,
		`{"channel":"room:lobby","data":1}{"channel":"broadcast","data":2}`, `{"channel":"room:lobby","data":1} x`,
		`hello`, ``, `null`, `[]`, `"broadcast"`, "\xef\xbb\xbf{\"channel\":\"broadcast\",\"data\":1}",
		"{\"channel\":\"broadcast\",\"data\":\"\xff\"}", `{"channel":"broadcast","data":1e999999}`,
		`{"channel":"broadcast","data":"` + strings.Repeat("<", maxEvent-20) + `"}`,
		`{"channel":"broadcast","data":"` + strings.Repeat("x", maxEvent-23) + `"}`,
		`{"channel":"broadcast","data":"` + strings.Repeat("x", maxEvent-22) + `"}`,
		`{"channel":"broadcast","data":"` + strings.Repeat("x", maxEvent+1024) + `"}`,
		`{"channel":"broadcast","data":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
		`{"channel":"broadcast","data":` + strings.Repeat("[", 300) + strings.Repeat("]", 300) + `}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/publish", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer s3cret")
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		answer, _ := io.ReadAll(rec.Body)

		status, channel, envelope := expectPublish(body, maxEvent)
		if rec.Code != status {
			t.Fatalf("body %q: got %d %s, want %d", body, rec.Code, answer, status)
		}
		if status != http.StatusOK {
			var a struct{ Error string }
			if err := json.Unmarshal(answer, &a); err != nil || a.Error == "" {
				t.Fatalf("body %q: %d answer %s, want {\"error\": ...}", body, rec.Code, answer)
			}
			return
		}
		var a struct{ ID string }
		if err := json.Unmarshal(answer, &a); err != nil {
			t.Fatalf("body %q: answer %s", body, answer)
		}
		c, err := wire.ParseCursor(a.ID)
		if err != nil {
			t.Fatalf("body %q: answered id %q: %v", body, a.ID, err)
		}
		entries, err := rdb.XRange(context.Background(), "sse:{"+channel+"}:history", c.EntryID(), c.EntryID()).Result()
		if err != nil || len(entries) != 1 {
			t.Fatalf("body %q: history entry %s: %v %v", body, c.EntryID(), entries, err)
		}
		stored, _ := entries[0].Values["e"].(string)
		if stored != envelope {
			t.Fatalf("body %q: stored %q, want %q", body, stored, envelope)
		}
		if _, err := wire.EncodeDurable(c, []byte(stored), maxEvent); err != nil {
			t.Fatalf("body %q: stored envelope %q cannot be sent: %v", body, stored, err)
		}
	})
}
