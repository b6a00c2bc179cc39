package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/internal/ssetest"
)

// presenceVars are the instances' settings in the presence tests: a short
// grace and TTL, so that the bounds are seconds.
var presenceVars = map[string]string{
	"PUBLISH_TOKEN":   "pt",
	"PRESENCE_EVENTS": "chat-",
	"PRESENCE_GRACE":  "1s",
	"PRESENCE_TTL":    "3s",
}

// presenceOf asks an instance GET /presence?query with the publish token.
func (a *app) presenceOf(query string) (status int, body map[string]any) {
	a.t.Helper()
	return presenceAt(a.t, a.url, query)
}

func presenceAt(t *testing.T, url, query string) (status int, body map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", url+"/presence?"+query, nil)
	req.Header.Set("Authorization", "Bearer pt")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("GET /presence?%s: %d %q", query, resp.StatusCode, b)
	}
	return resp.StatusCode, body
}

// presenceEvents reads a watcher's stream until the marker event, and
// returns the presence events before it ("join alice").
func presenceEvents(t *testing.T, s *ssetest.Stream, marker string, within time.Duration) []string {
	t.Helper()
	var got []string
	deadline := time.Now().Add(within)
	for {
		ev, err := s.NextEvent(time.Until(deadline))
		if err != nil {
			t.Fatalf("after presence events %v: %v (want the event %q)", got, err, marker)
		}
		switch ev.Event {
		case marker:
			return got
		case "presence":
			var d struct{ Room, User, Op string }
			if err := json.Unmarshal([]byte(ev.Data), &d); err != nil || d.Room != "chat-1" {
				t.Fatalf("presence event %q", ev.Data)
			}
			got = append(got, d.Op+" "+d.User)
		}
	}
}

// awaitPresence reads a watcher's stream until the presence events want
// have come, in any order, and returns how long that took.
func awaitPresence(t *testing.T, s *ssetest.Stream, within time.Duration, want ...string) time.Duration {
	t.Helper()
	start := time.Now()
	left := map[string]bool{}
	for _, w := range want {
		left[w] = true
	}
	for len(left) > 0 {
		ev, err := s.NextEvent(within - time.Since(start))
		if err != nil {
			t.Fatalf("awaiting presence events %v: %v", left, err)
		}
		if ev.Event != "presence" {
			continue
		}
		var d struct{ User, Op string }
		_ = json.Unmarshal([]byte(ev.Data), &d)
		got := d.Op + " " + d.User
		if !left[got] {
			t.Fatalf("presence event %q, want one of %v", got, left)
		}
		delete(left, got)
	}
	return time.Since(start)
}

// TestPresenceAcrossInstances: three instances on one redis-server. Each
// stream's user joins the room's presence, as every instance answers; a
// reconnect within the grace, to another instance, causes no event; a
// SIGKILLed instance's users leave every answer within PRESENCE_TTL, and
// their leave events come once.
func TestPresenceAcrossInstances(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	r := redistest.Start(t)
	a := startApp(t, r, presenceVars)
	b := startApp(t, r, presenceVars)
	c := startApp(t, r, presenceVars)

	watcher := a.open(a.session("carol", "chat-1"), "")
	awaitPresence(t, watcher, 10*time.Second, "join carol")
	alice := a.open(a.session("alice", "chat-1"), "")
	bob := a.open(a.session("bob", "chat-1"), "")
	b.open(b.session("dave", "chat-1", "lobby"), "")
	awaitPresence(t, watcher, 10*time.Second, "join alice", "join bob", "join dave")

	want := map[string]any{
		"room":  "chat-1",
		"users": map[string]any{"alice": 1.0, "bob": 1.0, "carol": 1.0, "dave": 1.0},
		"count": map[string]any{"users": 4.0, "streams": 4.0},
	}
	for _, inst := range []*app{a, b, c} {
		if code, got := inst.presenceOf("room=chat-1"); code != 200 || !reflect.DeepEqual(got, want) {
			t.Fatalf("room: %d %v, want %v", code, got, want)
		}
	}
	// The command line answers the same, asking an instance or reading Redis.
	for _, args := range [][]string{
		{"presence", "-room", "chat-1", "-url", c.url, "-token", "pt"},
		{"presence", "-room", "chat-1", "-redis", r.URL()},
	} {
		out, errOut, code := runCommand(t, nil, args...)
		var got map[string]any
		if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 || !reflect.DeepEqual(got, want) {
			t.Fatalf("ssebridge %v: %d %s %s, want %v", args, code, out, errOut, want)
		}
	}
	// And so does the Django package, reading Redis.
	if got := djangoPresence(t, r.URL(), `sse.room_presence("chat-1")`); !reflect.DeepEqual(got, want) {
		t.Fatalf("ssebridge_django.room_presence: %v, want %v", got, want)
	}
	if _, got := c.presenceOf("room=chat-1&limit=2&after=alice"); !reflect.DeepEqual(got["users"], map[string]any{"bob": 1.0, "carol": 1.0}) || got["next"] != "carol" {
		t.Fatalf("a page: %v", got)
	}
	if _, got := c.presenceOf("user=dave"); !reflect.DeepEqual(got, map[string]any{
		"user": "dave", "streams": 1.0, "rooms": map[string]any{"chat-1": 1.0, "lobby": 1.0},
	}) {
		t.Fatalf("user: %v", got)
	}

	// alice reloads onto another instance within the grace; bob leaves for
	// good after her. Her leave, were it sent, would come before his.
	alice.Close()
	b.open(b.session("alice", "chat-1"), "")
	bob.Close()
	awaitPresence(t, watcher, 10*time.Second, "leave bob")
	a.publish("room:chat-1", `{"event":"marker","data":1}`)
	if got := presenceEvents(t, watcher, "marker", 10*time.Second); len(got) != 0 {
		t.Fatalf("presence events after bob's leave: %v (alice came back within the grace)", got)
	}

	// b dies: alice and dave leave, within PRESENCE_TTL (3 s; 5 s asserted,
	// for a loaded machine), once, whether a or c swept it.
	b.proc.kill()
	took := awaitPresence(t, watcher, 20*time.Second, "leave alice", "leave dave")
	t.Logf("the SIGKILLed instance's users left %v after the kill", took.Round(10*time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("the killed instance's users left after %v, want within PRESENCE_TTL (3 s)", took)
	}
	a.publish("room:chat-1", `{"event":"marker","data":2}`)
	if got := presenceEvents(t, watcher, "marker", 10*time.Second); len(got) != 0 {
		t.Fatalf("presence events after the sweep: %v, want none (each leave once)", got)
	}
	for _, inst := range []*app{a, c} {
		if _, got := inst.presenceOf("room=chat-1"); !reflect.DeepEqual(got["users"], map[string]any{"carol": 1.0}) {
			t.Fatalf("after the kill: %v", got)
		}
		if _, got := inst.presenceOf("user=dave"); got["streams"] != 0.0 {
			t.Fatalf("dave after the kill: %v", got)
		}
	}
}

// djangoPresence evaluates call (with ssebridge_django as sse) in a Python
// whose settings name redisURL, and returns its answer.
func djangoPresence(t *testing.T, redisURL, call string) map[string]any {
	t.Helper()
	if out, err := exec.Command(python, "-c", "import django, redis").CombinedOutput(); err != nil {
		notRun(t, "DJANGO", "python3-django/python3-redis ("+strings.TrimSpace(string(out))+")", "python3-django python3-redis")
	}
	script := `import json, sys
from django.conf import settings
settings.configure(SSEBRIDGE={"REDIS_URL": sys.argv[1]})
import ssebridge_django as sse
print(json.dumps(` + call + `))`
	cmd := exec.Command(python, "-c", script, redisURL)
	cmd.Env = exampleEnv(t)
	out, err := cmd.Output()
	var got map[string]any
	if err != nil || json.Unmarshal(out, &got) != nil {
		t.Fatalf("python: %v: %s", err, out)
	}
	return got
}

// TestPresenceCleanShutdown: an instance stopped with SIGTERM tells its
// streams to reconnect and sets its beat back: a user whose stream comes
// back on another instance within PRESENCE_GRACE stays without an event;
// one who does not leaves, once, after the grace.
func TestPresenceCleanShutdown(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	r := redistest.Start(t)
	a := startApp(t, r, presenceVars)
	b := startApp(t, r, presenceVars)
	watcher := a.open(a.session("carol", "chat-1"), "")
	dave := b.open(b.session("dave", "chat-1"), "")
	b.open(b.session("eve", "chat-1"), "")
	awaitPresence(t, watcher, 10*time.Second, "join carol", "join dave", "join eve")
	b.stop()
	if _, err := dave.NextEvent(10 * time.Second); err == nil {
		for err == nil { // read to its end: the retry hint, then EOF
			_, err = dave.NextEvent(10 * time.Second)
		}
	}
	a.open(a.session("dave", "chat-1"), "") // back, on a, within the grace
	awaitPresence(t, watcher, 10*time.Second, "leave eve")
	a.publish("room:chat-1", `{"event":"marker","data":1}`)
	if got := presenceEvents(t, watcher, "marker", 10*time.Second); len(got) != 0 {
		t.Fatalf("presence events after eve's leave: %v (dave came back within the grace)", got)
	}
	if _, got := a.presenceOf("room=chat-1"); !reflect.DeepEqual(got["users"], map[string]any{"carol": 1.0, "dave": 1.0}) {
		t.Fatalf("after the shutdown: %v", got)
	}
}

// TestPresenceOnCluster: two instances on a three-master Redis Cluster
// (a room's presence in its partition, its events SPUBLISHed there): each
// answers for both, and a stream on one sees a user arrive and leave on the
// other.
func TestPresenceOnCluster(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	a, _ := startClusterApp(t, rc, presenceVars)
	b, _ := startClusterApp(t, rc, presenceVars)
	watcher := openCluster(t, cc, a, "carol", "chat-1")
	awaitPresence(t, watcher, 10*time.Second, "join carol")
	alice := openCluster(t, cc, b, "alice", "chat-1", "lobby")
	awaitPresence(t, watcher, 10*time.Second, "join alice")
	want := map[string]any{
		"room":  "chat-1",
		"users": map[string]any{"alice": 1.0, "carol": 1.0},
		"count": map[string]any{"users": 2.0, "streams": 2.0},
	}
	for _, url := range []string{a, b} {
		if code, got := presenceAt(t, url, "room=chat-1"); code != 200 || !reflect.DeepEqual(got, want) {
			t.Fatalf("room: %d %v, want %v", code, got, want)
		}
		if _, got := presenceAt(t, url, "user=alice"); !reflect.DeepEqual(got["rooms"], map[string]any{"chat-1": 1.0, "lobby": 1.0}) {
			t.Fatalf("user: %v", got)
		}
	}
	alice.Close()
	awaitPresence(t, watcher, 10*time.Second, "leave alice")
	if _, got := presenceAt(t, a, "room=chat-1"); !reflect.DeepEqual(got["users"], map[string]any{"carol": 1.0}) {
		t.Fatalf("after alice left: %v", got)
	}
}

// TestPresenceRoute: GET /presence needs the publish token and a valid
// room or user, and says what was wrong.
func TestPresenceRoute(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	a := startApp(t, nil, presenceVars)
	for _, tc := range []struct {
		name, query, token string
		code               int
		says               string
	}{
		{"no token", "room=x", "", 401, "PUBLISH_TOKEN"},
		{"a wrong token", "room=x", "nope", 401, "PUBLISH_TOKEN"},
		{"neither", "", "pt", 400, "room=NAME or user=NAME"},
		{"both", "room=x&user=y", "pt", 400, "not both"},
		{"a bad room", "room=a%20b", "pt", 400, "room:"},
		{"a bad limit", "room=x&limit=-1", "pt", 400, "limit"},
		{"too long", "room=" + strings.Repeat("x", 2000), "pt", 414, "query over"},
		{"an empty room", "room=x", "pt", 200, `"count":{"users":0,"streams":0}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", a.url+"/presence?"+tc.query, nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.says) {
				t.Fatalf("%d %s, want %d saying %q", resp.StatusCode, body, tc.code, tc.says)
			}
		})
	}
}

// TestBrowserPresence: two people's pages in a room, in Chromium, each
// with its own browser (its own cookie): each page sees the other arrive,
// and the one that stays sees the other leave once its tab is closed and
// PRESENCE_GRACE has passed. Screenshots in artifacts/.
func TestBrowserPresence(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	pages := jsPages(t)
	vars := map[string]string{"ALLOWED_ORIGINS": pages.URL}
	for k, v := range presenceVars {
		vars[k] = v
	}
	a := startApp(t, nil, vars)
	opts := `{on: {presence: function (e) { var d = JSON.parse(e.data); window.got.push(d.op + ' ' + d.user); show(); }}}`
	open := func(user string) (page, func()) {
		browser := startBrowser(t)
		setCookie(t, browser, a.url, a.session(user, "chat-1"))
		return openTab(t, browser, user, pageURL(pages, pages.URL, a.url+"/events", opts))
	}
	alice, _ := open("alice")
	alice.await("alice's own arrival", `window.got.includes('join alice')`)
	bob, closeBob := open("bob")
	alice.await("bob's arrival, on alice's page", `window.got.includes('join bob')`)
	bob.await("bob's arrival, on his own page", `window.got.includes('join bob')`)
	screenshot(t, alice, "presence-alice-sees-bob-arrive.png")
	screenshot(t, bob, "presence-bob-arrived.png")
	closeBob()
	alice.await("bob's departure, on alice's page", `window.got.includes('leave bob')`)
	screenshot(t, alice, "presence-alice-sees-bob-leave.png")
	if got := alice.eval(`window.got`); !reflect.DeepEqual(got, []string{"join alice", "join bob", "leave bob"}) {
		t.Fatalf("alice's page saw %v", got)
	}
}
