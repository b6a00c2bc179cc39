package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// replayTarget is one deployment mode the replay tests run against.
type replayTarget struct {
	url     string
	publish func(channel, envelope string) error
	session func(user string, rooms ...string) string // stores one, returns its token
}

// replayTargets start ssebridge with vars on a single Redis and on a
// three-master Redis Cluster, whose reads take another path (store/cluster.go).
var replayTargets = []struct {
	name  string
	start func(t *testing.T, vars map[string]string) replayTarget
}{
	{"redis", func(t *testing.T, vars map[string]string) replayTarget {
		a := startApp(t, nil, vars)
		return replayTarget{
			url:     a.url,
			publish: func(ch, env string) error { _, err := evalPublish(a.rdb, ch, env); return err },
			session: func(user string, rooms ...string) string { return a.session(user, rooms...) },
		}
	}},
	{"cluster", func(t *testing.T, vars map[string]string) replayTarget {
		rc := redistest.StartCluster(t, 3)
		cc := rc.Client()
		url, _ := startClusterApp(t, rc, vars)
		return replayTarget{
			url:     url,
			publish: func(ch, env string) error { _, err := clusterPublish(cc, 16, ch, env); return err },
			session: func(user string, rooms ...string) string {
				tok := fmt.Sprintf("tok-%s-%d", user, time.Now().UnixNano())
				setSession(t, cc, "session:"+tok, user, rooms...)
				return tok
			},
		}
	}},
}

// replayBeforeReset resumes token's stream from lastID and reads it raw up
// to its reset (or until want events arrived, if it has none): how many
// replayed events, and how many bytes after the ready block, came before
// it, and the reset's data ("" if none came).
func replayBeforeReset(t *testing.T, url, token, lastID string, want int) (events, bytes int, reset string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Last-Event-ID", lastID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("resume answered %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	ready := 0 // 1: in the ready block, 2: past it
	block := 0 // bytes of the current block so far
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("after %d events (%d bytes): %v", events, bytes, err)
		}
		switch {
		case ready < 2:
			if line == "event: ready\n" || (ready == 1 && line == "\n") {
				ready++
			}
			continue
		case line == "event: reset\n":
			// Its id: line came first, and is the reset's own.
			data, _ := br.ReadString('\n')
			return events, bytes - block, strings.TrimSpace(strings.TrimPrefix(data, "data: "))
		case line == "event: n\n":
			events++
		}
		bytes += len(line)
		block += len(line)
		if line == "\n" {
			block = 0
		}
		if events == want && line == "\n" {
			return events, bytes, ""
		}
	}
}

// TestReplayTooLarge: a resume whose replay would pass REPLAY_MAX_BYTES
// gets its reset and no replayed event before it. (It used to be sent the
// replay up to the limit, then the reset: 16.5 MB of egress for one
// request at the default limit.) One under the limit, over several pages,
// is still replayed whole.
func TestReplayTooLarge(t *testing.T) {
	for _, target := range replayTargets {
		t.Run(target.name, func(t *testing.T) {
			const limit = 1 << 20
			d := target.start(t, map[string]string{"REPLAY_MAX_BYTES": fmt.Sprint(limit)})
			pad := strings.Repeat("p", 8000)
			for _, tt := range []struct {
				room   string
				events int // of about 8 KB each
				reset  string
			}{
				{"small", 100, ""},                     // 0.8 MB: four pages
				{"big", 400, `{"reason":"too_large"}`}, // 3.3 MB
			} {
				tok := d.session(tt.room+"-user", tt.room)
				s, start, err := openReady(context.Background(), d.url, bearer(tok))
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
				for i := range tt.events {
					if err := d.publish("room:"+tt.room, fmt.Sprintf(`{"event":"n","data":"%d %s"}`, i, pad)); err != nil {
						t.Fatal(err)
					}
				}
				events, bytes, reset := replayBeforeReset(t, d.url, tok, start, tt.events)
				t.Logf("%s: %d events of %d, %d bytes before the reset %q", tt.room, events, tt.events, bytes, reset)
				if reset != tt.reset {
					t.Errorf("%s: reset %q, want %q", tt.room, reset, tt.reset)
				}
				if tt.reset != "" && (events != 0 || bytes != 0) {
					t.Errorf("%s: %d replayed events (%d bytes) sent before the reset, want none", tt.room, events, bytes)
				}
				if tt.reset == "" && events != tt.events {
					t.Errorf("%s: %d events replayed, want %d", tt.room, events, tt.events)
				}
			}
			if got := metricAt(t, d.url, `ssebridge_resets_total{reason="too_large"}`); got != 1 {
				t.Errorf("too_large resets counted: %v, want 1", got)
			}
		})
	}
}

// TestResumeLimit: opens with a Last-Event-ID (header or ?lastEventId=)
// past MAX_RESUMES_PER_USER_PER_MINUTE are refused with 429 and a
// Retry-After, and counted; /events/check says so too, so that
// ssebridge.js waits; a new stream (no id) and another user's resumes are
// not held.
func TestResumeLimit(t *testing.T) {
	a := startApp(t, nil, map[string]string{"MAX_RESUMES_PER_USER_PER_MINUTE": "2"})
	alice, bob := a.session("alice"), a.session("bob")
	s, id, err := openReady(context.Background(), a.url, bearer(alice))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for i, st := range []struct {
		token, how string // how: header, query, none (no id), check
		status     int
	}{
		{alice, "header", 200},
		{alice, "query", 200},
		{alice, "header", 429}, // a burst of 2, then one every 30 s
		{alice, "query", 429},
		{alice, "check", 429},
		{alice, "none", 200}, // not a resume
		{bob, "header", 200},
		{bob, "header", 200},
		{bob, "header", 429},
	} {
		path, h := "/events", bearer(st.token)
		switch st.how {
		case "header":
			h.Set("Last-Event-ID", id)
		case "query":
			path += "?lastEventId=" + id
		case "check":
			path = "/events/check"
		}
		req, _ := http.NewRequest(http.MethodGet, a.url+path, nil)
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close() // a stream ends with its connection
		after := resp.Header.Get("Retry-After")
		if resp.StatusCode != st.status {
			t.Fatalf("step %d (%+v): status %d, want %d", i, st, resp.StatusCode, st.status)
		}
		if secs, _ := strconv.Atoi(after); st.status == 429 && (secs < 1 || secs > 30) {
			t.Fatalf("step %d (%+v): Retry-After %q, want 1 to 30 s", i, st, after)
		}
	}
	if got := a.metric(`ssebridge_handshakes_refused_total{reason="resume_limit"}`); got != 4 {
		t.Errorf("resume_limit refusals counted: %v, want 4", got)
	}
	if got := a.metric(`ssebridge_resume_limit_users`); got != 2 {
		t.Errorf("users tracked: %v, want 2", got)
	}
}
