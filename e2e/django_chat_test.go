package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// The whole flow in a real browser: the Django example, Redis, ssebridge,
// and headless Chromium with its native EventSource.

const python = "/usr/bin/python3" // Debian's, which sees python3-django and python3-redis

// browserPrereqs skips the browser test, loudly, when Chromium or Django is
// missing; in CI (.ci/run installs both) it fails instead.
func browserPrereqs(t *testing.T) {
	t.Helper()
	missing := ""
	if _, err := exec.LookPath("chromium"); err != nil {
		missing = "chromium"
	} else if out, err := exec.Command(python, "-c", "import django, redis").CombinedOutput(); err != nil {
		missing = "python3-django/python3-redis (" + strings.TrimSpace(string(out)) + ")"
	}
	if missing != "" {
		notRun(t, "BROWSER", missing, "chromium python3-django python3-redis")
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// exampleEnv is the environment of the example's manage.py: the
// repository's clients/django first on the path (the package under test,
// not one that may be installed), and more ("NAME=value").
func exampleEnv(t *testing.T, more ...string) []string {
	pkg, err := filepath.Abs(filepath.Join(repoRoot, "clients", "django"))
	if err != nil {
		t.Fatal(err)
	}
	pythonPath := pkg
	if p := os.Getenv("PYTHONPATH"); p != "" {
		pythonPath += string(os.PathListSeparator) + p
	}
	return append(append(os.Environ(), "PYTHONUNBUFFERED=1", "PYTHONPATH="+pythonPath), more...)
}

// startDjango runs the example with Django's development server, its
// environment exampleEnv's with more ("NAME=value").
func startDjango(t *testing.T, addr, redisURL, sseURL string, more ...string) string {
	cmd := exec.Command(python, "manage.py", "runserver", addr, "--noreload")
	cmd.Dir = filepath.Join(repoRoot, "examples", "django")
	// The accounts' database in the test's own directory, unless more names one.
	db := "DJANGO_DB=" + filepath.Join(t.TempDir(), "db.sqlite3")
	cmd.Env = exampleEnv(t, append([]string{"REDIS_URL=" + redisURL, "SSE_URL=" + sseURL, db}, more...)...)
	log, err := os.Create(filepath.Join(t.TempDir(), "django.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("django log:\n%s", b)
		}
	})
	url := "http://" + addr
	eventually(t, 20*time.Second, "Django to answer", func() bool {
		resp, err := http.Get(url + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return url
}

// items returns the texts of a list on the page (#messages or #dms).
func (p page) items(list string) []string {
	return p.eval(`Array.from(document.querySelectorAll('#` + list + ` li'), li => li.textContent)`)
}

// log returns every event the page received, as "name data".
func (p page) log() []string { return p.eval(`window.sseLog || []`) }

func (p page) signIn(django, user string, rooms ...string) {
	p.t.Helper()
	actions := []chromedp.Action[chromedp.Void]{
		chromedp.Navigate(django + "/"),
		chromedp.SetValue("#user", user),
	}
	for _, r := range rooms {
		actions = append(actions, chromedp.Click("#room-"+r))
	}
	// Wait for the next page's elements before polling it: a poll started on
	// the page that is navigating away never answers.
	p.do(append(actions, chromedp.Click("#signin"), chromedp.WaitVisible("#dms"))...)
	p.await(user+"'s stream to be live", `document.getElementById('status') && document.getElementById('status').textContent === 'live'`)
}

// send submits a form of the page and waits for Django's answer (the page
// clears the field then), so that posts are published in the order sent.
func (p page) send(form, field, text string) {
	p.t.Helper()
	input := fmt.Sprintf(`document.querySelector('#%s [name=%s]')`, form, field)
	p.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`%s.value = %q; document.getElementById(%q).requestSubmit()`, input, text, form)))
	p.await("the post to be answered", input+".value === ''")
}

func (p page) post(text string) { p.send("post", "text", text) }

func (p page) dm(to, text string) {
	p.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.getElementById('dm-to').value = %q`, to)))
	p.send("dm", "text", text)
}

func TestBrowserFlow(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	top := t     // what outlives the subtests (ssebridge restarted in one) is the top test's
	browserPrereqs(t)
	start := time.Now()
	r := redistest.Start(t)
	sseAddr, djangoAddr := freeAddr(t), freeAddr(t)
	sseURL, djangoURL := "http://"+sseAddr, "http://"+djangoAddr
	vars := map[string]string{
		"REDIS_URL": r.URL(), "LISTEN_ADDR": sseAddr, "ALLOWED_ORIGINS": djangoURL,
		"RETRY_INTERVAL": "500ms", "SESSION_RECHECK_INTERVAL": "1s", "LOG_LEVEL": "debug",
	}
	sse := startBinary(t, vars)
	django := startDjango(t, djangoAddr, r.URL(), sseURL)

	// A page on an origin ssebridge does not allow, on the same site (so
	// Bob's cookie rides along): it must not get a stream.
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `<!doctype html><script>
			window.result = 'pending';
			var es = new EventSource(%q, {withCredentials: true});
			es.addEventListener('ready', function () { window.result = 'ready'; });
			es.onerror = function () { if (es.readyState === EventSource.CLOSED) window.result = 'closed'; };
		</script>`, sseURL+"/events")
	}))
	t.Cleanup(foreign.Close) // after the browser's end (cleanups run last first)

	browser := startBrowser(t)
	person := func(name string) page { // a browser profile of its own: its own cookies
		p, _ := newTab(t, browser, name, chromedp.WithNewBrowserContext())
		return p
	}
	alice, bob, carol := person("alice"), person("bob"), person("carol")
	alice.signIn(django, "alice", "lobby")
	bob.signIn(django, "bob", "lobby")
	carol.signIn(django, "carol")
	bobDMs, _ := newTab(t, bob.ctx, "bob's second tab")
	bobDMs.do(chromedp.Navigate(django+"/me"), chromedp.WaitVisible("#dms"))
	bobDMs.await("bob's second stream", `document.getElementById('status').textContent === 'live'`)

	t.Run("a message reaches the lobby, not Carol", func(t *testing.T) {
		alice, bob, carol := alice.on(t), bob.on(t), carol.on(t)
		alice.post("hello from alice")
		for _, p := range []page{alice, bob} {
			p.await("the message", `Array.from(document.querySelectorAll('#messages li')).some(li => li.textContent === 'alice: hello from alice')`)
		}
		// Carol is not in the lobby: once a later message to her arrives,
		// the lobby message has certainly not.
		alice.dm("carol", "marker for carol")
		carol.await("the marker", `window.sseLog.some(e => e.includes('marker for carol'))`)
		if slices.ContainsFunc(carol.log(), func(e string) bool { return strings.Contains(e, "hello from alice") }) {
			t.Fatalf("carol got the lobby message: %q", carol.log())
		}
	})

	t.Run("a direct message reaches only Bob", func(t *testing.T) {
		alice, bob, carol := alice.on(t), bob.on(t), carol.on(t)
		alice.dm("bob", "psst bob")
		bob.await("the DM", `Array.from(document.querySelectorAll('#dms li')).some(li => li.textContent === 'alice: psst bob')`)
		carol.dm("alice", "marker for alice")
		alice.await("the marker", `window.sseLog.some(e => e.includes('marker for alice'))`)
		carol.dm("carol", "marker 2 for carol")
		carol.await("the marker", `window.sseLog.some(e => e.includes('marker 2 for carol'))`)
		for _, p := range []page{alice, carol} {
			if slices.ContainsFunc(p.log(), func(e string) bool { return strings.Contains(e, "psst bob") }) {
				t.Fatalf("%s got bob's DM: %q", p.name, p.log())
			}
		}
	})

	t.Run("a foreign origin gets no stream with Bob's cookie", func(t *testing.T) {
		evil, _ := newTab(t, bob.ctx, "bob on a foreign page")
		evil.do(chromedp.Navigate(foreign.URL))
		evil.await("the EventSource to give up", `window.result !== 'pending'`)
		if got, _ := chromedp.Run(evil.ctx, chromedp.Evaluate[string](`window.result`)); got != "closed" {
			t.Fatalf("the foreign page's EventSource: %q, want closed", got)
		}
		if metricAt(t, sseURL, `ssebridge_handshakes_refused_total{reason="origin"}`) == 0 {
			t.Fatal("no refusal for origin counted")
		}
	})

	t.Run("messages posted while ssebridge restarts arrive once, in order", func(t *testing.T) {
		alice, bob := alice.on(t), bob.on(t)
		if err := sse.stop(); err != nil {
			t.Fatalf("ssebridge exit: %v", err)
		}
		for i := 1; i <= 3; i++ {
			alice.post(fmt.Sprintf("during the restart %d", i))
		}
		// Django has published them durably; wait until all three are in
		// Redis before ssebridge comes back, so they are truly missed live.
		eventually(t, 10*time.Second, "three more events in the lobby's history", func() bool {
			return r.Client().XLen(context.Background(), "sse:{room:lobby}:history").Val() == 4
		})
		sse = startBinary(top, vars)
		want := []string{"alice: hello from alice", "alice: during the restart 1", "alice: during the restart 2", "alice: during the restart 3"}
		for _, p := range []page{alice, bob} {
			p.await("the messages posted during the restart", `document.querySelectorAll('#messages li').length >= 4`)
			if got := p.items("messages"); !slices.Equal(got, want) {
				t.Fatalf("%s's messages:\n%q\nwant\n%q", p.name, got, want)
			}
		}
		// And nothing more comes: a new message is the next one.
		alice.post("after the restart")
		bob.await("the next message", `document.querySelectorAll('#messages li').length === 5`)
		if got := bob.items("messages"); got[4] != "alice: after the restart" {
			t.Fatalf("bob's messages: %q", got)
		}
	})

	t.Run("sign-out ends Bob's streams; the old cookie opens nothing", func(t *testing.T) {
		bob, bobDMs := bob.on(t), bobDMs.on(t)
		old, _ := sessionCookie(bob, sseURL)
		if old == "" {
			t.Fatal("bob has no sse_session cookie for ssebridge's origin")
		}
		screenshot(t, bob, "bob-lobby.png")
		bob.do(chromedp.Click("#signout"))
		bobDMs.await("bob's other tab to be signed out", `document.getElementById('status').textContent === 'signed out'`)

		_, err := chromedp.Call(bob.ctx, network.SetCookie, network.SetCookieParams{Name: "sse_session", Value: old, URL: sseURL})
		if err != nil {
			t.Fatal(err)
		}
		bob.do(chromedp.Navigate(sseURL + "/"))
		status, err := chromedp.Run(bob.ctx, chromedp.Evaluate[int](`fetch('/events/check', {credentials: 'include'}).then(r => r.status)`, chromedp.EvalAwaitPromise))
		if err != nil || status != 401 {
			t.Fatalf("checking the old cookie: %d %v, want 401", status, err)
		}
		screenshot(t, bobDMs, "bob.png")
	})
	t.Logf("browser flow took %v", time.Since(start).Round(time.Millisecond))
}

// TestDjangoChatOrigins: the Django chat through the package
// (clients/django), with the page opened at http://localhost:<port> and at
// http://127.0.0.1:<port>, configured as examples/django/README.md tells
// users to: ssebridge's ALLOWED_ORIGINS lists both origins, and Django's
// SSE_URL names ssebridge on the same host name as the page. At each: two
// people log in with the lobby ticked, one sees the other's message, and
// logging out ends the stream (in the tab that stays open).
func TestDjangoChatOrigins(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browserPrereqs(t)
	r := redistest.Start(t)
	djangoPort := port(freeAddr(t))
	origins := "http://127.0.0.1:" + djangoPort + ",http://localhost:" + djangoPort
	sse := startBinary(t, map[string]string{"REDIS_URL": r.URL(), "ALLOWED_ORIGINS": origins})
	browser := startBrowser(t)
	for _, host := range []string{"localhost", "127.0.0.1"} {
		t.Run(host, func(t *testing.T) {
			// Django on 127.0.0.1 (localhost reaches it too), its pages
			// naming ssebridge on the page's host name.
			startDjango(t, "127.0.0.1:"+djangoPort, r.URL(), "http://"+host+":"+port(sse.addr))
			django := "http://" + host + ":" + djangoPort
			person := func(name string) page {
				p, _ := newTab(t, browser, name+" at "+host, chromedp.WithNewBrowserContext()) // cookies of its own
				return p
			}
			alice, bob := person("alice"), person("bob")
			alice.signIn(django, "alice", "lobby")
			bob.signIn(django, "bob", "lobby")
			if got := bob.eval(`[location.origin]`); got[0] != django {
				t.Fatalf("bob's page is at %q, want %q", got[0], django)
			}
			text := "hello from alice at " + host
			alice.post(text)
			bob.await("alice's message", fmt.Sprintf(`Array.from(document.querySelectorAll('#messages li')).some(li => li.textContent === %q)`, "alice: "+text))
			screenshot(t, bob, "django-chat-"+host+".png")
			// Bob's second tab keeps its page (and stream) while the first
			// signs out: its stream ends with the logout.
			bob2, _ := newTab(t, bob.ctx, "bob's second tab at "+host)
			bob2.do(chromedp.Navigate(django+"/me"), chromedp.WaitVisible("#dms"))
			bob2.await("bob's second stream", `document.getElementById('status').textContent === 'live'`)
			bob.do(chromedp.Click("#signout"), chromedp.WaitVisible("#signin"))
			bob2.await("bob's stream to end", `document.getElementById('status').textContent === 'signed out'`)
		})
	}
	// Both origins were let in, and none refused.
	// (Every known reason is there from the start, at 0.)
	if n := metricAt(t, "http://"+sse.addr, `ssebridge_handshakes_refused_total{reason="origin"}`); n != 0 {
		t.Errorf("%v streams refused for their origin, want none", n)
	}
}
