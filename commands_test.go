package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

func TestPublishCommand(t *testing.T) {
	tryOutEnv(t) // no try-out file, no REDIS_URL or PUBLISH_TOKEN from the machine
	a := startApp(t, nil, map[string]string{"PUBLISH_TOKEN": "s3cret"})
	b := startApp(t, a.redis, nil) // no PUBLISH_TOKEN: no POST /publish
	s := a.open(a.session("alice", "lobby"), "")
	ctx := context.Background()
	tests := []struct {
		name   string
		args   []string
		errHas string
		event  string
		data   string
	}{
		{"over HTTP", []string{"-url", a.url, "-token", "s3cret", "-channel", "room:lobby", "-event", "chat", "-data", `{"text":"hi"}`}, "", "chat", `{"text":"hi"}`},
		{"through Redis", []string{"-redis", a.redis.URL(), "-channel", "user:alice", "-data", "plain words"}, "", "message", "plain words"},
		{"wrong token", []string{"-url", a.url, "-token", "nope", "-channel", "room:lobby", "-data", "1"}, "401", "", ""},
		{"bad channel", []string{"-url", a.url, "-token", "s3cret", "-channel", "lobby", "-data", "1"}, "-channel", "", ""},
		{"Redis address without redis://", []string{"-redis", a.redis.Addr, "-channel", "room:lobby", "-data", "<b>"}, "", "message", "<b>"},
		{"'<' in JSON data through Redis", []string{"-redis", a.redis.URL(), "-channel", "room:lobby", "-data", `{"t":"<b>"}`}, "", "message", `{"t":"<b>"}`},
		{"no -data", []string{"-url", a.url, "-token", "s3cret", "-channel", "room:lobby"}, "-data is required", "", ""},
		{"empty -data", []string{"-url", a.url, "-token", "s3cret", "-channel", "room:lobby", "-data", ""}, "-data is required", "", ""},
		{"server without PUBLISH_TOKEN", []string{"-url", b.url, "-token", "x", "-channel", "room:lobby", "-data", "1"}, "PUBLISH_TOKEN set there", "", ""},
		{"no server there", []string{"-url", "http://127.0.0.1:1", "-token", "x", "-channel", "room:lobby", "-data", "1"}, "no ssebridge there?", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, stderr bytes.Buffer
			err := publishCommand(ctx, tt.args, &out, &stderr)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("error %v, want it to say %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			id := strings.TrimSpace(out.String())
			if _, err := wire.ParseCursor(id); err != nil {
				t.Fatalf("printed %q, want the event id", id)
			}
			if ev := want(t, s, tt.event, tt.data); ev.ID != id {
				t.Fatalf("event id %q, printed %q", ev.ID, id)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestTailCommandResumes(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	vars := map[string]string{"LISTEN_ADDR": addr}
	first := startApp(t, nil, vars)
	tok := first.session("alice")

	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- tailCommand(ctx, []string{"-url", first.url + "/events", "-token", tok}, &out, io.Discard)
	}()
	defer func() { cancel(); <-done }()

	// The stream is up once the ready event is printed.
	eventually(t, 5*time.Second, "tail to print ready", func() bool { return strings.Contains(out.String(), "event=ready") })
	publishDurable(t, first.rdb, "user:alice", `{"event":"n","data":"one"}`)
	eventually(t, 5*time.Second, "tail to print the first event", func() bool { return strings.Contains(out.String(), "data=one") })

	first.stop() // the instance goes away; an event is published meanwhile
	publishDurable(t, first.rdb, "user:alice", `{"event":"n","data":"two"}`)
	startApp(t, first.redis, vars) // back on the same address
	eventually(t, 10*time.Second, "tail to resume and print the missed event", func() bool { return strings.Contains(out.String(), "data=two") })
	if n := strings.Count(out.String(), "data=one"); n != 1 {
		t.Fatalf("the first event printed %d times:\n%s", n, out.String())
	}
}
