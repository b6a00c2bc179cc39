package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// TestPublishCommand: `ssebridge publish` over HTTP and through Redis, and
// the errors a person meets, as the binary prints them.
func TestPublishCommand(t *testing.T) {
	tryOutEnv(t) // no try-out file, no REDIS_URL or PUBLISH_TOKEN from the machine
	a := startApp(t, nil, map[string]string{"PUBLISH_TOKEN": "s3cret"})
	b := startApp(t, a.redis, nil) // no PUBLISH_TOKEN: no POST /publish
	s := a.open(a.session("alice", "lobby"), "")
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
			out, stderr, code := runCommand(t, nil, append([]string{"publish"}, tt.args...)...)
			if tt.errHas != "" {
				if code == 0 || !strings.Contains(stderr, tt.errHas) {
					t.Fatalf("exit %d, stderr %q, want it to say %q", code, stderr, tt.errHas)
				}
				return
			}
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			id := strings.TrimSpace(out)
			if _, err := wire.ParseCursor(id); err != nil {
				t.Fatalf("printed %q, want the event id", id)
			}
			if ev := want(t, s, tt.event, tt.data); ev.ID != id {
				t.Fatalf("event id %q, printed %q", ev.ID, id)
			}
		})
	}
}

// TestTailCommandResumes: `ssebridge tail` resumes with Last-Event-ID after
// the instance goes away and comes back.
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

	out := startTail(t, "-url", first.url+"/events", "-token", tok).stdout

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

// TestTailCommandPrintsOneLineEach: `ssebridge tail` prints "one line
// each" (its help): an event's data, name and id come from publishers,
// who relay users' text, and printed raw, a line break in the data forged
// a line of its own ("id=... event=logout ...") and an escape sequence
// reached the operator's terminal (a title, the clipboard: OSC 52).
func TestTailCommandPrintsOneLineEach(t *testing.T) {
	a := startApp(t, nil, nil)
	tail := startTail(t, "-url", a.url+"/events", "-token", a.session("alice"))
	out := tail.stdout
	eventually(t, 5*time.Second, "tail to print ready", func() bool { return strings.Contains(out.String(), "event=ready") })
	a.publish("user:alice", `{"event":"n\u001b[2J","data":"hi\u001b]52;c;cHduZWQ=\u0007\nid=E:1-0 event=logout data=forged\u009b"}`)
	a.publish("user:alice", `{"event":"n","data":"marker"}`)
	eventually(t, 5*time.Second, "tail to print the marker", func() bool { return strings.Contains(out.String(), "data=marker") })
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "id=E:1-0 event=logout") {
			t.Errorf("a published event's data printed a line of its own: %q", line)
		}
		if strings.ContainsAny(line, "\x1b\x07\u009b") {
			t.Errorf("a control character reached the terminal: %q", line)
		}
	}
}
