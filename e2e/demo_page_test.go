package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/chromedp"

	"github.com/ssebridge/ssebridge/wire"
)

// TestDemoPageTryOut uses the demo page as a person would, in embedded mode
// (no REDIS_URL): log in, publish, see the event, log out.
func TestDemoPageTryOut(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // where the try-out file goes
	base := "http://" + runApp(t, nil)
	browser := startBrowser(t)
	p, _ := newTab(t, browser, "demo page")
	// What the console shows as an error (a failed request included): a
	// visit with no session is expected, and shows none.
	var mu sync.Mutex
	var consoleErrors []string
	if err := chromedp.Listen(p.ctx, func(ev any) {
		if e, ok := ev.(*cdplog.EventEntryAdded); ok && e.Entry.Level == cdplog.EntryLevelError {
			mu.Lock()
			consoleErrors = append(consoleErrors, e.Entry.Text+" "+e.Entry.URL)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	p.do(chromedp.Navigate(base + "/"))

	text := func(id string) string {
		t.Helper()
		return p.eval(fmt.Sprintf(`[document.getElementById(%q).textContent]`, id))[0]
	}
	visible := func(id string) bool {
		t.Helper()
		return p.bool(fmt.Sprintf(`!document.getElementById(%q).hidden`, id))
	}
	events := func() []string {
		return p.eval(`Array.from(document.querySelectorAll('#events li .ev'), n => n.textContent.trim() + ' ' + n.nextSibling.textContent)`)
	}

	p.await("the try-out steps", `!document.getElementById('dev').hidden && document.body.dataset.checked === 'none'`)
	mu.Lock()
	if len(consoleErrors) > 0 {
		t.Errorf("the console shows errors on a visit with no session: %q", consoleErrors)
	}
	mu.Unlock()
	if got := p.eval(`Array.from(document.querySelectorAll('.step h2'), h => h.textContent)`); strings.Join(got, "|") != "1. Log in|2. Publish|3. Log out" {
		t.Fatalf("steps: %q", got)
	}
	if s := text("status"); s != "not connected" {
		t.Fatalf("status before login: %q", s)
	}
	if !p.bool(`document.getElementById('logout').disabled`) || !p.bool(`document.getElementById('step-login').classList.contains('next')`) {
		t.Fatal("before login, step 1 should be the next one and log-out disabled")
	}
	screenshot(t, p, "demo-1-start.png")

	// A mistake first: the error shows, and goes once the login succeeds.
	p.do(chromedp.SetValue(chromedp.CSS(`#login [name=user]`), "alice smith"), chromedp.Click(chromedp.CSS("#login-btn")))
	p.await("the login error", `!document.getElementById('error').hidden`)
	if e := text("error"); !strings.Contains(e, "user:") {
		t.Fatalf("error after a bad user name: %q", e)
	}
	p.do(chromedp.SetValue(chromedp.CSS(`#login [name=user]`), "alice"),
		chromedp.SetValue(chromedp.CSS(`#login [name=rooms]`), "lobby"),
		chromedp.Click(chromedp.CSS("#login-btn")))
	p.await("the stream to be live", `document.getElementById('status').textContent === 'live'`)
	if visible("error") {
		t.Fatalf("a stale error after a successful login: %q", text("error"))
	}
	if w := text("who"); w != "logged in as alice, rooms: lobby" {
		t.Fatalf("who: %q", w)
	}
	token, _ := sessionCookie(p, base)
	if ev := events(); len(ev) != 1 || ev[0] != `ready {"user":"alice","rooms":["lobby"],"session":"`+wire.SessionID(token, "alice")+`"}` {
		t.Fatalf("events after login: %q", ev)
	}

	// Reloaded, the page knows the session (GET /events/check) and offers
	// to open the stream; it opens none by itself.
	p.do(chromedp.Reload())
	p.await("the session check", `document.body.dataset.checked === 'session'`)
	p.await("the open button", `!document.getElementById('connect').hidden`)
	if s, w := text("status"), text("who"); s != "not connected" || w != "logged in as alice, rooms: lobby" {
		t.Fatalf("after a reload: status %q, who %q", s, w)
	}
	p.do(chromedp.Click(chromedp.CSS("#connect")))
	p.await("the stream to be live again", `document.getElementById('status').textContent === 'live'`)
	if visible("connect") {
		t.Fatal("the open button is still shown with the stream live")
	}

	// Publish through the page's form.
	p.do(chromedp.SetValue(chromedp.CSS(`#publish [name=channel]`), "room:lobby"),
		chromedp.SetValue(chromedp.CSS(`#publish [name=payload]`), `{"event":"chat","data":{"from":"bob","text":"hi from the demo"}}`),
		chromedp.Click(chromedp.CSS("#publish-btn")))
	p.await("the chat event in the list", `document.querySelectorAll('#events li').length === 2`)
	if ev := events(); ev[1] != `chat {"from":"bob","text":"hi from the demo"}` {
		t.Fatalf("events after publish: %q", ev)
	}
	if n := text("note"); n != "published on room:lobby" {
		t.Fatalf("note after publish: %q", n)
	}

	token, _ = sessionCookie(p, base)
	if token == "" {
		t.Fatal("no sse_session cookie after login")
	}
	screenshot(t, p, "demo-2-before-logout.png")

	// Log out with the button: the stream gets event: logout (through the
	// control channel) and the page says so.
	p.do(chromedp.Click(chromedp.CSS("#logout")))
	p.await("the page to show logged out", `document.getElementById('status').textContent === 'logged out'`)
	if ev := events(); len(ev) != 3 || !strings.HasPrefix(ev[2], "logout ") {
		t.Fatalf("events after logout: %q, want the stream's logout event last", ev)
	}
	if w := text("who"); w != "not logged in" || visible("error") {
		t.Fatalf("after logout: who %q, error shown %v (%q)", w, visible("error"), text("error"))
	}
	screenshot(t, p, "demo-3-after-logout.png")

	// The cookie is gone from the browser, the session from Redis, and the
	// stream from ssebridge.
	if _, ok := sessionCookie(p, base); ok {
		t.Fatalf("the cookie is still there after logout")
	}
	req, _ := http.NewRequest("GET", base+"/events/check", nil)
	req.Header.Set("Cookie", "sse_session="+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("the old token after logout: %d, want 401 (session deleted)", resp.StatusCode)
	}
	eventually(t, 5*time.Second, "no stream open", func() bool {
		return metricOver(t, http.DefaultClient, base, "ssebridge_streams_open") == 0
	})
	if n := metricOver(t, http.DefaultClient, base, `ssebridge_streams_closed_total{reason="logout"}`); n != 1 {
		t.Fatalf(`ssebridge_streams_closed_total{reason="logout"} = %v, want 1`, n)
	}
}

// TestDemoPageLogoutRoute: POST /dev/logout with no session only clears the
// cookie, and it does not exist with REDIS_URL.
func TestDemoPageLogoutRoute(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	base := "http://" + runApp(t, nil)
	for _, cookie := range []string{"", "sse_session=no-such-token"} {
		req, _ := http.NewRequest("POST", base+"/dev/logout", nil)
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"not logged in"`) ||
			!strings.Contains(resp.Header.Get("Set-Cookie"), "sse_session=;") {
			t.Errorf("logout with cookie %q: %d %s, Set-Cookie %q", cookie, resp.StatusCode, body, resp.Header.Get("Set-Cookie"))
		}
	}

	a := startApp(t, nil, nil)
	resp, err := http.Post(a.url+"/dev/logout", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == 200 {
		t.Error("POST /dev/logout answered 200 with REDIS_URL set")
	}
}
