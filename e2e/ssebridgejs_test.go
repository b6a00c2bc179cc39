package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/static"
)

// Tests of /ssebridge.js itself in headless Chromium: resuming after a
// refusal, reporting a refusal it cannot read, and one stream for all tabs.

// jsPages serves the test page at /, and /ssebridge.js as ssebridge does.
// The page loads ssebridge.js from ?src= and
// opens the stream ?events= with the options ?opts= (a JS object literal)
// added to its own. The page records what it receives in window.got (the
// data of "n" events, and resets), window.readies, window.problems and
// window.ended; window.seen is what the tab showed, in order: "ready
// <user>", "n <data>", and "session <user>" when the helper moved the tab to
// another session (onsession); window.h is the helper's handle;
// window.sseLog is every callback, for failure messages.
func jsPages(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /ssebridge.js", http.FileServerFS(static.FS))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		opts := q.Get("opts")
		if opts == "" {
			opts = "{}"
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><meta charset="utf-8"><title>ssebridge.js test</title>
<style>body { font: 15px system-ui, sans-serif; margin: 1.5em; } #role { font-weight: bold; }
  #last li { font-family: monospace; }</style>
<h1>ssebridge.js test page</h1>
<p>This tab: <span id="role">starting</span></p>
<p>Events received: <span id="count">0</span>; the last ones:</p>
<ul id="last"></ul>
<p id="end"></p>
<script src=%q></script>
<script>
  window.got = []; window.readies = 0; window.problems = []; window.ended = ''; window.sseLog = []; window.seen = [];
  function log(s) { window.sseLog.push(s); show(); }
  // What a person sees: the tab's part in the shared stream, the events.
  function show() {
    if (window.h && window.h.isLeader) {
      document.getElementById('role').textContent = window.h.isLeader()
        ? 'the leader: it holds the one EventSource' : 'a follower: the leader relays the events to it';
    }
    document.getElementById('count').textContent = window.got.length;
    document.getElementById('last').replaceChildren(...window.got.slice(-5).map(function (d) {
      var li = document.createElement('li'); li.textContent = d; return li; }));
    document.getElementById('end').textContent = window.ended ? 'stream ended: ' + window.ended : '';
  }
  window.h = SSEBridge.open(%q, Object.assign({
    on: {
      ready: function (e) { window.readies++; window.seen.push('ready ' + JSON.parse(e.data).user); log('ready ' + e.lastEventId + ' ' + e.data); },
      n: function (e) { window.got.push(e.data); window.seen.push('n ' + e.data); log('n ' + e.data + ' ' + e.lastEventId); },
      reset: function (e) { window.got.push('reset ' + e.data); log('reset ' + e.data); },
    },
    onproblem: function (info) { window.problems.push(info); log('problem ' + JSON.stringify(info)); },
    onend: function (why, status, message) { window.ended = why + ' ' + status; log('end ' + why + ' ' + status + ' ' + message); },
    onsession: function (info) { window.seen.push('session ' + info.user); log('session ' + JSON.stringify(info)); },
  }, %s));
  show();
</script>`, q.Get("src")+"/ssebridge.js", q.Get("events"), opts)
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func pageURL(pages *httptest.Server, src, events, opts string) string {
	return pages.URL + "/?" + url.Values{"src": {src}, "events": {events}, "opts": {opts}}.Encode()
}

func (p page) got() []string { return p.eval(`window.got`) }

// gateProxy forwards TCP connections to ssebridge. cut drops every
// connection and holds new ones (accepted, not forwarded) until open: the
// test decides what ssebridge sees when a page reconnects.
type gateProxy struct {
	l        net.Listener
	upstream string
	mu       sync.Mutex
	gate     chan struct{} // closed while connections go through
	conns    map[net.Conn]struct{}
	done     chan struct{}
}

func startGateProxy(t *testing.T, upstream string) *gateProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &gateProxy{l: l, upstream: upstream, gate: make(chan struct{}), conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
	close(p.gate)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { p.serve(c) })
		}
	})
	t.Cleanup(func() {
		close(p.done)
		l.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *gateProxy) url() string { return "http://" + p.l.Addr().String() }

// track keeps c for cut and the cleanup; false once the proxy is closed.
func (p *gateProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		c.Close()
		return false
	default:
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *gateProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *gateProxy) serve(c net.Conn) {
	if !p.track(c) {
		return
	}
	defer p.untrack(c)
	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	select {
	case <-gate:
	case <-p.done:
		return
	}
	up, err := net.Dial("tcp", p.upstream)
	if err != nil || !p.track(up) {
		return
	}
	defer p.untrack(up)
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	_, _ = io.Copy(c, up)
}

// hold holds new connections; those open go on.
func (p *gateProxy) hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gate = make(chan struct{})
}

// cut drops every connection (a page's stream, and any idle keep-alive one
// its next request could reuse) and holds new ones.
func (p *gateProxy) cut() {
	p.hold()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// open forwards the held connections, and new ones.
func (p *gateProxy) open() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.gate)
}

// durable publishes n on alice's channel as a durable event and returns its id.
func durableN(t *testing.T, a *app, n int) string {
	return publishDurable(t, a.rdb, "user:alice", fmt.Sprintf(`{"event":"n","data":"%d"}`, n))
}

func seq(from, to int) []string {
	var s []string
	for i := from; i <= to; i++ {
		s = append(s, strconv.Itoa(i))
	}
	return s
}

// A stream refused for a while (429) and reopened by the helper resumes
// where it was: the durable events published while it was refused arrive,
// once, in order, with no reset.
func TestBrowserJSResumeAfterRefusal(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browser := startBrowser(t)
	pages := jsPages(t)
	a := startApp(t, nil, map[string]string{
		"ALLOWED_ORIGINS": pages.URL, "MAX_STREAMS_PER_USER": "1", "RETRY_INTERVAL": "500ms",
	})
	proxy := startGateProxy(t, a.url[len("http://"):])
	token := a.session("alice")
	setCookie(t, browser, proxy.url(), token)
	tab, _ := openTab(t, browser, "alice", pageURL(pages, proxy.url(), proxy.url()+"/events", "{}"))
	tab.await("the stream", `window.readies === 1`)
	durableN(t, a, 1)
	durableN(t, a, 2)
	tab.await("events 1 and 2", `window.got.length === 2`)

	// Drop the page's stream, and hold its reconnection until another
	// stream of alice's has the only slot: then it is refused with 429,
	// and the EventSource gives up (CLOSED); the helper reopens it.
	refused := `ssebridge_handshakes_refused_total{reason="user_limit"}`
	proxy.cut()
	eventually(t, 10*time.Second, "the page's stream to end on the server", func() bool {
		return a.metric("ssebridge_streams_open") == 0
	})
	other := a.open(token, "")
	proxy.open()
	eventually(t, 20*time.Second, "the browser's reconnection and a reopening by the helper to be refused", func() bool {
		return a.metric(refused) >= 2
	})
	for i := 3; i <= 5; i++ {
		durableN(t, a, i)
	}
	n := a.metric(refused)
	eventually(t, 20*time.Second, "one more reopening to be refused after the events", func() bool {
		return a.metric(refused) > n
	})
	other.Close()
	tab.await("the helper to reopen the stream", `window.readies === 2`)
	durableN(t, a, 6)
	tab.await("event 6", `window.got.includes('6')`)
	if got, want := tab.got(), seq(1, 6); !slices.Equal(got, want) {
		t.Fatalf("the page got %q, want %q (every durable event once, in order, no reset)", got, want)
	}
}

// A refusal the helper cannot read (the page's origin is not allowed, so
// CORS hides /events/check's answer too; or ssebridge cannot be reached)
// is reported to onproblem after maxSilentTries tries, and the helper
// keeps trying.
func TestBrowserJSProblem(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browser := startBrowser(t)
	pages := jsPages(t) // not in ALLOWED_ORIGINS
	a := startApp(t, nil, nil)
	setCookie(t, browser, a.url, a.session("alice"))
	foreign, _ := openTab(t, browser, "a page on a foreign origin", pageURL(pages, a.url, a.url+"/events", "{}"))
	unreachable, _ := openTab(t, browser, "a page whose ssebridge is down",
		pageURL(pages, a.url, "http://"+freeAddr(t)+"/events", "{maxSilentTries: 2}"))

	// The default, 5 tries, takes 7.5 to 15 s of backoff (0.5-1 s, doubling).
	foreign.awaitWithin(30*time.Second, "onproblem", `window.problems.length > 0`)
	want := `window.problems[0].tries === 5 && /failed to fetch/i.test(window.problems[0].reason) &&
		['ALLOWED_ORIGINS', 'SameSite', 'not reachable'].every(s => window.problems[0].hint.includes(s))`
	if !foreign.bool(want) {
		t.Fatalf("onproblem's info: %q", foreign.eval(`[JSON.stringify(window.problems[0])]`))
	}
	if foreign.bool(`window.ended`) {
		t.Fatal("the helper gave up")
	}

	// The browser retries by itself while the server cannot be reached;
	// the helper counts those tries too, and goes on reporting.
	unreachable.awaitWithin(30*time.Second, "onproblem twice", `window.problems.length >= 2`)
	if !unreachable.bool(`window.problems[0].tries === 2 && window.problems[1].tries === 3 && window.problems[0].hint.includes('not reachable')`) {
		t.Fatalf("onproblem's info: %q", unreachable.eval(`[JSON.stringify(window.problems)]`))
	}
}

// Three tabs of one page share one stream: the leader's. When its tab
// closes, another takes over from the last id relayed: the remaining tabs
// get every durable event once, in order, those published between the two
// streams included. A logout ends the stream in every tab.
func TestBrowserJSSharedStream(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browser := startBrowser(t)
	pages := jsPages(t)
	a := startApp(t, nil, map[string]string{"ALLOWED_ORIGINS": pages.URL})
	// Streams and the tabs' /events/check go through the proxy, and
	// nothing else does (the pages load ssebridge.js from their own
	// server): the proxy can hold the next leader's stream until the old
	// one is gone and events were missed.
	proxy := startGateProxy(t, a.url[len("http://"):])
	setCookie(t, browser, proxy.url(), a.session("alice"))
	at := pageURL(pages, pages.URL, proxy.url()+"/events", "{}")
	var tabs []page
	var closers []func()
	for i := range 3 {
		p, close := openTab(t, browser, fmt.Sprintf("tab %d", i+1), at)
		p.await("the stream to be ready", `window.readies >= 1`)
		tabs, closers = append(tabs, p), append(closers, close)
	}
	leaders := func(tabs []page) []int {
		var l []int
		for i, p := range tabs {
			if p.bool(`window.h.isLeader()`) {
				l = append(l, i)
			}
		}
		return l
	}
	l := leaders(tabs)
	if len(l) != 1 {
		t.Fatalf("leaders: tabs %v, want one", l)
	}
	if n := a.metric("ssebridge_streams_open"); n != 1 {
		t.Fatalf("%v streams open for three tabs, want 1", n)
	}
	for i := 1; i <= 3; i++ {
		durableN(t, a, i)
	}
	for _, p := range tabs {
		p.await("events 1 to 3", `window.got.length === 3`)
		if got := p.got(); !slices.Equal(got, seq(1, 3)) {
			t.Fatalf("%s got %q", p.name, got)
		}
	}

	// Close the leader's tab while events keep coming.
	var sent atomic.Int64 // events published
	sent.Store(3)
	stop, done := make(chan struct{}), make(chan error, 1)
	go func() {
		defer close(done)
		for i := 4; i < 10000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond): // a steady flow, not synchronisation
			}
			if _, err := evalPublish(a.rdb, "user:alice", fmt.Sprintf(`{"event":"n","data":"%d"}`, i)); err != nil {
				done <- err
				return
			}
			sent.Store(int64(i))
		}
		done <- fmt.Errorf("still publishing after 10000 events")
	}()
	tabs[l[0]].await("events during the flow", `window.got.length >= 10`)
	// cut, not hold: every tab asked /events/check through the proxy, and
	// the next leader's EventSource could reuse such an idle connection.
	proxy.cut()
	closers[l[0]]()
	eventually(t, 10*time.Second, "the old leader's stream to end", func() bool { return a.metric("ssebridge_streams_open") == 0 })
	gap := sent.Load()
	eventually(t, 10*time.Second, "events to be published with no stream open", func() bool { return sent.Load() >= gap+5 })
	replayed := a.metric("ssebridge_events_replayed_total")
	proxy.open()

	rest := slices.Delete(slices.Clone(tabs), l[0], l[0]+1)
	for _, p := range rest {
		p.await("the new leader's stream", `window.readies >= 2`)
	}
	l = leaders(rest)
	if len(l) != 1 {
		t.Fatalf("leaders after the hand-over: %v, want one", l)
	}
	if from := rest[l[0]].eval(`[new URL(window.h.source().url).searchParams.get('lastEventId') || '']`); from[0] == "" {
		t.Fatalf("the new leader opened its stream without ?lastEventId=: %s", rest[l[0]].eval(`[window.h.source().url]`))
	}
	eventually(t, 10*time.Second, "one stream open again", func() bool { return a.metric("ssebridge_streams_open") == 1 })
	// Let the flow go on over the new leader's stream, then stop it.
	rest[0].await("events over the new stream", `window.got.length >= `+strconv.Itoa(len(rest[0].got())+10))
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	last := int(sent.Load()) + 1
	durableN(t, a, last)
	for _, p := range rest {
		p.await("the last event", `window.got.includes('`+strconv.Itoa(last)+`')`)
		if got, want := p.got(), seq(1, last); !slices.Equal(got, want) {
			t.Fatalf("%s got %d events, want %d once each, in order: %q", p.name, len(got), len(want), got)
		}
	}
	if n := a.metric("ssebridge_streams_open"); n != 1 {
		t.Fatalf("%v streams open for two tabs, want 1", n)
	}
	for i, p := range rest {
		role := "follower"
		if i == l[0] {
			role = "leader"
		}
		screenshot(t, p, "shared-tabs-"+role+".png")
	}
	if n := a.metric("ssebridge_events_replayed_total") - replayed; n < 5 {
		t.Fatalf("%v events replayed to the new leader, want at least the 5 published with no stream open", n)
	}

	// A logout, which only the leader's stream sees, ends it in every tab.
	a.publish("control", `{"op":"logout","user":"alice"}`)
	for _, p := range rest {
		p.await("the end of the stream", `window.ended === 'logout undefined'`)
	}
	eventually(t, 10*time.Second, "no stream open", func() bool { return a.metric("ssebridge_streams_open") == 0 })
	t.Logf("%d events; the leader's tab closed after event %d; the next stream was held until event %d at least", last, gap, gap+5)
}

// seenOnlyOwn checks what a tab showed (window.seen) against the rule of
// shared streams: a tab shows only events of a stream opened for the
// session it believes it has. The tab believes the session of its first
// ready, then that of each "session <user>" (onsession); every ready and
// every event ("n <user>-<k>") in between must be of that user. It returns
// what the tab showed.
func seenOnlyOwn(t *testing.T, p page) []string {
	t.Helper()
	seen := p.eval(`window.seen`)
	current := ""
	for i, s := range seen {
		kind, rest, _ := strings.Cut(s, " ")
		owner := rest
		switch kind {
		case "session":
			current = rest
			continue
		case "n":
			owner, _, _ = strings.Cut(rest, "-")
		}
		if current == "" && kind == "ready" {
			current = owner
		}
		if owner != current {
			t.Fatalf("%s showed %q (item %d) while it believed it was %q's: %q", p.name, s, i, current, seen)
		}
	}
	return seen
}

// Two sessions in one browser. alice's tab leads the shared stream and
// another of hers follows; bob logs in (the cookie is now his) and opens
// the page in a third tab. That tab gets bob's stream, never alice's ready
// or events; the two tabs of alice's learn that the browser's session
// changed, tell their page (onsession) and move to bob's stream: no tab
// shows an event of a stream opened for another session than the one it
// believes it has, and alice's stream is closed.
func TestBrowserJSSessionChange(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browser := startBrowser(t)
	pages := jsPages(t)
	a := startApp(t, nil, map[string]string{"ALLOWED_ORIGINS": pages.URL})
	at := pageURL(pages, pages.URL, a.url+"/events", "{}")
	setCookie(t, browser, a.url, a.session("alice"))
	alice1, _ := openTab(t, browser, "alice's first tab", at)
	alice1.await("alice's ready", `window.seen.includes('ready alice')`)
	alice2, _ := openTab(t, browser, "alice's second tab", at)
	alice2.await("alice's ready", `window.seen.includes('ready alice')`)
	a.publish("user:alice", `{"event":"n","data":"alice-1"}`)
	for _, p := range []page{alice1, alice2} {
		p.await("alice's event", `window.seen.includes('n alice-1')`)
	}
	if n := a.metric("ssebridge_streams_open"); n != 1 {
		t.Fatalf("%v streams open for alice's two tabs, want 1", n)
	}

	setCookie(t, browser, a.url, a.session("bob"))
	bob, _ := openTab(t, browser, "bob's tab", at)
	bob.await("bob's ready", `window.seen.includes('ready bob')`)
	for _, p := range []page{alice1, alice2} {
		p.await("the move to bob's session", `window.seen.includes('session bob') && window.seen.includes('ready bob')`)
	}
	eventually(t, 10*time.Second, "alice's stream to be closed: one stream, bob's", func() bool {
		return a.metric("ssebridge_streams_open") == 1
	})
	a.publish("user:alice", `{"event":"n","data":"alice-2"}`)
	a.publish("user:bob", `{"event":"n","data":"bob-1"}`)
	a.publish("user:bob", `{"event":"n","data":"bob-2"}`)
	for _, p := range []page{bob, alice1, alice2} {
		p.await("bob's events", `window.seen.includes('n bob-2')`)
	}
	for _, p := range []page{bob, alice1, alice2} {
		seenOnlyOwn(t, p)
	}
	if seen := bob.eval(`window.seen`); !slices.Equal(seen, []string{"ready bob", "n bob-1", "n bob-2"}) {
		t.Fatalf("bob's tab showed %q", seen)
	}
	for _, p := range []page{alice1, alice2} {
		if !p.bool(`window.h.session().user === 'bob'`) {
			t.Fatalf("%s believes it has %q's session", p.name, p.eval(`[String(window.h.session && window.h.session().user)]`))
		}
	}
}

// The browser's session changes with no tab of the new session open (bob
// logged in on a page without the helper): alice's tabs keep alice's
// stream, and show her events, until it reconnects. The reconnection
// carries bob's cookie; its ready says bob's session, and every tab moves
// to bob's stream, the leader's followers and a tab with a stream of its
// own (shared: false) too. Nothing of alice's is shown after the move.
func TestBrowserJSSessionChangeOnReconnect(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browser := startBrowser(t)
	pages := jsPages(t)
	a := startApp(t, nil, map[string]string{"ALLOWED_ORIGINS": pages.URL, "RETRY_INTERVAL": "500ms"})
	proxy := startGateProxy(t, a.url[len("http://"):])
	setCookie(t, browser, proxy.url(), a.session("alice"))
	at := pageURL(pages, pages.URL, proxy.url()+"/events", "{}")
	one, _ := openTab(t, browser, "tab 1", at)
	one.await("alice's ready", `window.seen.includes('ready alice')`)
	two, _ := openTab(t, browser, "tab 2", at)
	two.await("alice's ready", `window.seen.includes('ready alice')`)
	own, _ := openTab(t, browser, "a tab with its own stream", pageURL(pages, pages.URL, proxy.url()+"/events", "{shared: false}"))
	own.await("alice's ready", `window.seen.includes('ready alice')`)
	tabs := []page{one, two, own}

	setCookie(t, browser, proxy.url(), a.session("bob"))
	a.publish("user:alice", `{"event":"n","data":"alice-1"}`)
	for _, p := range tabs {
		p.await("alice's event on alice's stream", `window.seen.includes('n alice-1')`)
	}
	proxy.cut()
	proxy.open()
	for _, p := range tabs {
		p.await("the move to bob's session", `window.seen.includes('session bob') && window.seen.includes('ready bob')`)
	}
	eventually(t, 10*time.Second, "bob's streams only: the shared one and the unshared tab's", func() bool {
		return a.metric("ssebridge_streams_open") == 2
	})
	if n := len(slices.DeleteFunc([]page{one, two}, func(p page) bool { return !p.bool(`window.h.isLeader()`) })); n != 1 {
		t.Fatalf("%d leaders among the two shared tabs, want 1", n)
	}
	a.publish("user:alice", `{"event":"n","data":"alice-2"}`)
	a.publish("user:bob", `{"event":"n","data":"bob-1"}`)
	for _, p := range tabs {
		p.await("bob's event", `window.seen.includes('n bob-1')`)
		seenOnlyOwn(t, p)
	}
}

// bob logs in where alice was (the backend revokes alice's session, and
// her streams get event: logout): alice's tabs, whose browser now holds
// bob's session, move to bob's stream rather than end.
func TestBrowserJSSessionChangeOnLogout(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browser := startBrowser(t)
	pages := jsPages(t)
	a := startApp(t, nil, map[string]string{"ALLOWED_ORIGINS": pages.URL})
	alice := a.session("alice")
	setCookie(t, browser, a.url, alice)
	at := pageURL(pages, pages.URL, a.url+"/events", "{}")
	one, _ := openTab(t, browser, "tab 1", at)
	one.await("alice's ready", `window.seen.includes('ready alice')`)
	two, _ := openTab(t, browser, "tab 2", at)
	two.await("alice's ready", `window.seen.includes('ready alice')`)

	// What ssebridge_django's login does, and a logout for alice's streams
	// (ssebridge sends the same when its recheck finds the key gone).
	setCookie(t, browser, a.url, a.session("bob"))
	if err := a.rdb.Del(context.Background(), a.cfg.SessionPrefix+alice).Err(); err != nil {
		t.Fatal(err)
	}
	a.publish("control", `{"op":"logout","user":"alice"}`)
	for _, p := range []page{one, two} {
		p.await("the move to bob's session", `window.seen.includes('session bob') && window.seen.includes('ready bob')`)
	}
	eventually(t, 10*time.Second, "one stream, bob's", func() bool { return a.metric("ssebridge_streams_open") == 1 })
	a.publish("user:bob", `{"event":"n","data":"bob-1"}`)
	for _, p := range []page{one, two} {
		p.await("bob's event", `window.seen.includes('n bob-1')`)
		seenOnlyOwn(t, p)
		if p.bool(`window.ended`) {
			t.Fatalf("%s ended: %q", p.name, p.eval(`[window.ended]`))
		}
	}
}

// TestBrowserJSEventNamedError: a published event named "error" (or
// "open") is dispatched by EventSource as its own error (open) event: the
// page's onerror runs, and ssebridge.js takes its stream to have dropped
// and forgets whose it is, so it shows nothing more until a reconnection
// that never comes (the stream is open). A relayed payload's name silences
// every tab on its channel. ssebridge refuses them as it refuses its own
// names.
func TestBrowserJSEventNamedError(t *testing.T) {
	browser := startBrowser(t)
	pages := jsPages(t)
	a := startApp(t, nil, map[string]string{"ALLOWED_ORIGINS": pages.URL})
	setCookie(t, browser, a.url, a.session("alice"))
	tab, _ := openTab(t, browser, "alice", pageURL(pages, a.url, a.url+"/events", "{}"))
	tab.await("the stream", `window.readies === 1`)
	a.publish("user:alice", `{"event":"error","data":"from a relayed payload"}`)
	a.publish("user:alice", `{"event":"open","data":"from a relayed payload"}`)
	durableN(t, a, 1)
	tab.awaitWithin(10*time.Second, "event 1 after the events named error and open", `window.got.includes('1')`)
	if got := a.metric(`ssebridge_events_dropped_total{reason="bad_field"}`); got != 2 {
		t.Errorf("refused as bad_field: %v, want 2 (error, open)", got)
	}
}

// TestBrowserJSSessionRewritten: the backend rewrites the session under the
// browser's token to another user (SECURITY.md: its streams close with a
// retry hint and come back as that user). The tab's stream comes back as
// bob's, with the same session id (made of the token alone): ssebridge.js
// takes it for the session it had, shows bob's events in the page drawn
// for alice and never calls onsession.
func TestBrowserJSSessionRewritten(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browser := startBrowser(t)
	pages := jsPages(t)
	a := startApp(t, nil, map[string]string{"ALLOWED_ORIGINS": pages.URL, "SESSION_RECHECK_INTERVAL": "200ms"})
	token := a.session("alice")
	setCookie(t, browser, a.url, token)
	tab, _ := openTab(t, browser, "alice's tab", pageURL(pages, pages.URL, a.url+"/events", "{}"))
	tab.await("alice's ready", `window.seen.includes('ready alice')`)
	setSession(t, a.rdb, a.cfg.SessionPrefix+token, "bob")
	tab.await("bob's ready", `window.seen.includes('ready bob')`)
	a.publish("user:bob", `{"event":"n","data":"bob-1"}`)
	tab.await("bob's event", `window.seen.includes('n bob-1')`)
	seen := tab.eval(`window.seen`)
	if i := slices.Index(seen, "session bob"); i < 0 || i > slices.Index(seen, "ready bob") {
		t.Fatalf("the tab showed %q: bob's stream without onsession first", seen)
	}
}

// TestBrowserJSEventNamedLikeObjectKeys: a page's handler for an event
// named "constructor" (any name an Object has by inheritance) is called;
// ssebridge.js kept its names in a plain object, took "constructor" for
// one it already listened to, and never listened to it.
func TestBrowserJSEventNamedLikeObjectKeys(t *testing.T) {
	browser := startBrowser(t)
	pages := jsPages(t)
	a := startApp(t, nil, map[string]string{"ALLOWED_ORIGINS": pages.URL})
	setCookie(t, browser, a.url, a.session("alice"))
	opts := `{on: {ready: function () { window.readies++; }, constructor: function (e) { window.got.push(e.data); }}}`
	tab, _ := openTab(t, browser, "alice", pageURL(pages, a.url, a.url+"/events", opts))
	tab.await("the stream", `window.readies === 1`)
	a.publish("user:alice", `{"event":"constructor","data":"c1"}`)
	tab.awaitWithin(10*time.Second, "the event named constructor", `window.got.includes('c1')`)
}

// retryFront stands for a proxy in front of ssebridge: while up it passes
// requests through; while down it answers /events as deploy/nginx.conf
// does when no ssebridge answers (200, text/event-stream, only a retry:
// line) and /events/check with 502. down also ends the streams passing
// through.
type retryFront struct {
	srv     *httptest.Server
	down    atomic.Bool
	retries atomic.Int32 // retry-only answers given
	mu      sync.Mutex
	streams map[*http.Request]context.CancelFunc
}

func startRetryFront(t *testing.T, upstream string) *retryFront {
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	f := &retryFront{streams: map[*http.Request]context.CancelFunc{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !f.down.Load() {
			ctx, cancel := context.WithCancel(r.Context())
			r = r.WithContext(ctx)
			f.mu.Lock()
			f.streams[r] = cancel
			f.mu.Unlock()
			defer func() {
				f.mu.Lock()
				delete(f.streams, r)
				f.mu.Unlock()
				cancel()
			}()
			rp.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		if r.URL.Path != "/events" {
			http.Error(w, "bad gateway", http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "retry: 300\n\n")
		f.retries.Add(1)
	}))
	t.Cleanup(func() {
		f.setDown(true) // Close waits for the streams passing through
		f.srv.Close()
	})
	return f
}

// setDown takes the front down (ending the streams through it) or up.
func (f *retryFront) setDown(down bool) {
	f.down.Store(down)
	if !down {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, cancel := range f.streams {
		cancel()
	}
}

// While only a proxy answers (retry: and nothing else, the connection
// opening each time), the helper says 'connecting' in every tab, not
// 'live'; 'live' comes back with ssebridge's ready.
func TestBrowserJSStateWhileProxyRetries(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browser := startBrowser(t)
	pages := jsPages(t)
	a := startApp(t, nil, map[string]string{"ALLOWED_ORIGINS": pages.URL})
	front := startRetryFront(t, a.url)
	setCookie(t, browser, front.srv.URL, a.session("alice"))
	opts := `{onstate: function (s) { (window.states = window.states || []).push(s); }}`
	u := pageURL(pages, front.srv.URL, front.srv.URL+"/events", opts)
	first, _ := openTab(t, browser, "the leader", u)
	first.await("the stream", `window.readies === 1`)
	second, _ := openTab(t, browser, "a follower", u)
	second.await("the relayed ready", `window.readies === 1`)
	last := `window.states && window.states[window.states.length - 1]`
	for _, p := range []page{first, second} {
		p.await("live", last+` === 'live'`)
	}

	front.setDown(true)
	for _, p := range []page{first, second} {
		p.await("connecting", last+` === 'connecting'`)
	}
	n := front.retries.Load()
	eventually(t, 20*time.Second, "the browser to open the proxy's retry-only answer twice more", func() bool {
		return front.retries.Load() >= n+2
	})
	for _, p := range []page{first, second} {
		if s := p.eval(`[String(` + last + `)]`)[0]; s != "connecting" {
			t.Fatalf("%s: state %q while only the proxy answers, want connecting (states %q)", p.name, s, p.eval(`window.states`))
		}
	}

	front.setDown(false)
	for _, p := range []page{first, second} {
		p.awaitWithin(30*time.Second, "live again", `window.readies === 2 && `+last+` === 'live'`)
	}
}

// A logout ends the stream in every tab, also when the leader's tab goes
// away while it handles it (a page that leaves for its login page on
// logout) and so never tells the others why the stream ended: a follower
// that took the lead reopened the stream (a logout control message ends
// the streams without deleting the session) and stayed live.
func TestBrowserJSLogoutWhenTheLeaderLeaves(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browser := startBrowser(t)
	pages := jsPages(t)
	a := startApp(t, nil, map[string]string{"ALLOWED_ORIGINS": pages.URL})
	setCookie(t, browser, a.url, a.session("alice"))
	// The leader's page closes its handle in its logout handler, before the
	// helper could ask ssebridge why the stream ended.
	leaves := `{on: {ready: function () { window.readies++; }, logout: function () { window.h.close(); }}}`
	leader, _ := openTab(t, browser, "the leader", pageURL(pages, pages.URL, a.url+"/events", leaves))
	leader.await("the stream", `window.readies === 1 && window.h.isLeader()`)
	follower, _ := openTab(t, browser, "a follower", pageURL(pages, pages.URL, a.url+"/events", "{}"))
	follower.await("the relayed ready", `window.readies === 1`)

	a.publish("control", `{"op":"logout","user":"alice"}`)
	follower.await("the end of the stream", `window.ended !== ''`)
	if got := follower.eval(`[window.ended]`)[0]; !strings.HasPrefix(got, "logout") {
		t.Fatalf("the follower's stream ended with %q, want logout", got)
	}
	if n := follower.eval(`[String(window.readies)]`)[0]; n != "1" {
		t.Fatalf("the follower got %s readies: it opened the stream again after the logout", n)
	}
	eventually(t, 10*time.Second, "no stream open", func() bool { return a.metric("ssebridge_streams_open") == 0 })
}
