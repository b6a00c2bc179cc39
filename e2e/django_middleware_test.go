package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// The Django example's accounts in a real browser: contrib.auth's LoginView
// and logout, with ssebridge_django's SSEBridgeSessionMiddleware giving the
// browser its ssebridge session (no view of the example calls login() for
// an account). And the example's join/leave, on an open stream.

// exampleAccounts makes the example's database at db (manage.py migrate)
// with one account per name, password "pw-<name>".
func exampleAccounts(t *testing.T, db string, names ...string) {
	t.Helper()
	manage := func(env []string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, python, append([]string{"manage.py"}, args...)...)
		cmd.Dir = filepath.Join(repoRoot, "examples", "django")
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("manage.py %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	manage(exampleEnv(t, "DJANGO_DB="+db), "migrate", "--noinput")
	for _, n := range names {
		manage(exampleEnv(t, "DJANGO_DB="+db, "DJANGO_SUPERUSER_USERNAME="+n,
			"DJANGO_SUPERUSER_PASSWORD=pw-"+n, "DJANGO_SUPERUSER_EMAIL="+n+"@example.com"),
			"createsuperuser", "--noinput")
	}
}

// logIn signs in with contrib.auth's LoginView form and waits for the
// stream of the page it leads to (/me).
func (p page) logIn(django, user string) {
	p.t.Helper()
	p.do(chromedp.Navigate(django+"/accounts/login/"),
		chromedp.SetValue("#id_username", user), chromedp.SetValue("#id_password", "pw-"+user),
		chromedp.Click("#login"), chromedp.WaitVisible("#dms"))
	p.await(user+"'s stream to be live", fmt.Sprintf(`document.getElementById('who').textContent === %q && document.getElementById('status').textContent === 'live'`, user))
}

// has: whether a list of the page (#dms, #feed, ...) has an item with text.
func has(list, text string) string {
	return fmt.Sprintf(`Array.from(document.querySelectorAll('#%s li')).some(li => li.textContent === %q)`, list, text)
}

func TestDjangoMiddleware(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	browserPrereqs(t)
	r := redistest.Start(t)
	sseAddr, djangoAddr := freeAddr(t), freeAddr(t)
	sseURL, djangoURL := "http://"+sseAddr, "http://"+djangoAddr
	startBinary(t, map[string]string{
		"REDIS_URL": r.URL(), "LISTEN_ADDR": sseAddr, "ALLOWED_ORIGINS": djangoURL,
		"RETRY_INTERVAL": "500ms", "SESSION_RECHECK_INTERVAL": "1s",
	})
	db := filepath.Join(t.TempDir(), "db.sqlite3")
	exampleAccounts(t, db, "alice", "bob")
	// SSEBRIDGE_SESSION_RENEW_INTERVAL=0: every page load renews (one
	// EXPIRE), so a key deleted in Redis is noticed at the next page load
	// rather than SESSION_TTL/10 later. That no command is sent while the
	// note is fresh is tests/test_middleware.py's.
	django := startDjango(t, djangoAddr, r.URL(), sseURL, "DJANGO_DB="+db, "SSEBRIDGE_SESSION_RENEW_INTERVAL=0")
	rdb := r.Client()
	ctx := context.Background()
	browser := startBrowser(t)

	tab, _ := newTab(t, browser, "alice's browser", chromedp.WithNewBrowserContext())
	tab.logIn(django, "alice")
	token, _ := sessionCookie(tab, sseURL)
	if got := rdb.Get(ctx, "session:"+token).Val(); !strings.Contains(got, `"user":"alice","rooms":["lobby"]`) {
		t.Fatalf("alice's ssebridge session after contrib.auth's login: %q", got)
	}

	t.Run("a session gone from Redis is renewed at the next page load", func(t *testing.T) {
		tab := tab.on(t)
		tab.dm("alice", "before the renewal")
		tab.await("the DM", has("dms", "alice: before the renewal"))
		rdb.Del(ctx, "session:"+token) // expired, or revoked behind Django's back
		// ssebridge's recheck ends the stream (event: logout), and a new
		// stream is refused with 401: ssebridge.js stops for good, as the
		// package's README says; nothing comes back without a page load.
		tab.await("the stream to end", `document.getElementById('status').textContent === 'signed out'`)
		if !slices.Contains(tab.log(), "end logout") {
			t.Fatalf("the stream's end: %q, want onend('logout')", tab.log())
		}
		status, err := chromedp.Run(tab.ctx, chromedp.Evaluate[int](fmt.Sprintf(`fetch(%q, {credentials: 'include'}).then(r => r.status)`, sseURL+"/events/check"), chromedp.EvalAwaitPromise))
		if err != nil || status != 401 {
			t.Fatalf("/events/check with the deleted session: %d %v, want 401", status, err)
		}
		screenshot(t, tab, "django-middleware-before-renewal.png")

		tab.do(chromedp.Reload(), chromedp.WaitVisible("#dms"))
		tab.await("the stream to be live again", `document.getElementById('status').textContent === 'live'`)
		renewed, _ := sessionCookie(tab, sseURL)
		if renewed == "" || renewed == token {
			t.Fatalf("the cookie after the page load: %q (was %q), want a new session", renewed, token)
		}
		if rdb.Exists(ctx, "session:"+renewed).Val() != 1 {
			t.Fatal("the new session is not in Redis")
		}
		tab.dm("alice", "after the renewal")
		tab.await("the DM on the renewed stream", has("dms", "alice: after the renewal"))
		screenshot(t, tab, "django-middleware-after-renewal.png")
		token = renewed
	})

	second, _ := newTab(t, tab.ctx, "alice's browser, second tab")
	t.Run("a user switch ends the old user's stream; the new one gets only its own events", func(t *testing.T) {
		tab, second := tab.on(t), second.on(t)
		tab.do(chromedp.Evaluate[chromedp.Void](`window.drawnForAlice = true`))
		second.logIn(django, "bob") // contrib.auth's login as another user, no logout first
		if rdb.Exists(ctx, "session:"+token).Val() != 0 {
			t.Fatal("alice's ssebridge session survived the switch to bob")
		}
		// Her stream ended (logout), and the tab, told the browser's session
		// is bob's now (onsession), reloaded: drawn for bob.
		tab.await("the first tab to be bob's", `!window.drawnForAlice && document.getElementById('who').textContent === 'bob' && document.getElementById('status').textContent === 'live'`)
		second.dm("alice", "for alice after the switch")
		second.dm("bob", "for bob after the switch")
		for _, p := range []page{tab, second} {
			p.await("bob's DM", has("dms", "bob: for bob after the switch"))
			if slices.ContainsFunc(p.log(), func(e string) bool { return strings.Contains(e, "for alice") }) {
				t.Fatalf("%s got alice's DM after the switch: %q", p.name, p.log())
			}
		}
	})

	t.Run("join and leave act on the open stream", func(t *testing.T) {
		tab := tab.on(t)
		carol, _ := newTab(t, browser, "carol", chromedp.WithNewBrowserContext())
		carol = carol.on(t)
		carol.signIn(django, "carol", "team-7") // the quick sign-in: on #team-7's page
		tab.do(chromedp.Evaluate[chromedp.Void](`window.sameStream = true`))
		tab.do(chromedp.Click("#join-team-7"))
		tab.await("the join to be answered", `!!document.getElementById('leave-team-7')`)
		carol.post("first in team-7")
		tab.await("team-7's message on the open stream", has("feed", "#team-7 carol: first in team-7"))
		screenshot(t, tab, "django-joined-team-7.png")

		tab.do(chromedp.Click("#leave-team-7"))
		tab.await("the leave to be answered", `!!document.getElementById('join-team-7')`)
		carol.post("second in team-7")
		// A DM sent after the post arrives after it would have: once it is
		// here, the post is certainly not coming.
		carol.dm("bob", "marker after the leave")
		tab.await("the marker", has("dms", "carol: marker after the leave"))
		if got := tab.items("feed"); !slices.Equal(got, []string{"#team-7 carol: first in team-7"}) {
			t.Fatalf("bob's feed after leaving team-7: %q", got)
		}
		if !tab.bool(`window.sameStream === true`) {
			t.Fatal("the page was reloaded: the join or leave reopened the stream")
		}
		if got := rdb.Get(ctx, "session:"+mustCookie(t, tab, sseURL)).Val(); !strings.Contains(got, `"rooms":["lobby"]`) {
			t.Fatalf("bob's session after the leave: %q", got)
		}
	})

	t.Run("logout ends the stream and clears the cookie", func(t *testing.T) {
		tab, second := tab.on(t), second.on(t)
		bobs := mustCookie(t, second, sseURL)
		// The sign-out form's POST, from a page that stays: a tab that
		// navigates away while it leads the shared stream may go before it
		// has told the other tabs the stream ended (seen under load: the
		// other tab stayed "live" for 20 s); that is ssebridge.js's, not
		// the middleware's.
		status, err := chromedp.Run(second.ctx, chromedp.Evaluate[int](`fetch('/signout', {method: 'POST', headers: {'X-CSRFToken': CSRF}, redirect: 'manual'}).then(r => r.type === 'opaqueredirect' ? 302 : r.status)`, chromedp.EvalAwaitPromise))
		if err != nil || status != 302 {
			t.Fatalf("signing out: %d %v, want the redirect", status, err)
		}
		for _, p := range []page{tab, second} {
			p.await("the stream to end", `document.getElementById('status').textContent === 'signed out'`)
			if !slices.Contains(p.log(), "end logout") {
				t.Fatalf("%s: the stream's end: %q, want onend('logout')", p.name, p.log())
			}
		}
		if v, ok := sessionCookie(second, sseURL); ok && v != "" {
			t.Fatalf("the cookie after the logout: %q, want none", v)
		}
		if rdb.Exists(ctx, "session:"+bobs).Val() != 0 {
			t.Fatal("bob's session survived the logout")
		}
	})
}

func mustCookie(t *testing.T, p page, url string) string {
	t.Helper()
	v, ok := sessionCookie(p, url)
	if !ok || v == "" {
		t.Fatalf("%s holds no sse_session cookie for %s", p.name, url)
	}
	return v
}
