package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// Headless Chromium for the browser tests (demo_page_test.go,
// django_chat_test.go, ssebridgejs_test.go, tls_test.go): starting it, its
// tabs, and what a test does on a page.

// notRun skips a test (of kind, "BROWSER", "CLIENT"), loudly, when
// something it needs is missing; in CI (.ci/run installs everything) it
// fails instead.
func notRun(t *testing.T, kind, missing, packages string) {
	t.Helper()
	msg := kind + " TESTS NOT RUN: " + missing + " is missing; apt-get install -y " + packages + " (.ci/run does)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	fmt.Fprintf(os.Stderr, "\n*** %s ***\n\n", msg)
	t.Skip(msg)
}

// chromiumPath is where Chromium is; missing, the test skips loudly
// (notRun).
func chromiumPath(t *testing.T) string {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		notRun(t, "BROWSER", "chromium", "chromium")
	}
	return chromium
}

// startBrowser starts headless Chromium with the flags of PITFALLS.md and
// more; it closes before what the test started earlier (cleanups run last
// first). Missing, it skips loudly, except under CI, where it fails.
func startBrowser(t *testing.T, more ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	chromium := chromiumPath(t)
	opts := append([]chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium), chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1000, 900),
	}, more...)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	browser, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(cancel)
	if err := chromedp.Do(browser); err != nil { // starts Chromium
		t.Fatal(err)
	}
	return browser
}

// page is one browser tab.
type page struct {
	t    *testing.T
	name string
	ctx  context.Context
}

// newTab opens a tab in parent: the browser (its default profile, whose
// tabs share cookies, Web Locks and BroadcastChannels), another tab (the
// same profile), or with chromedp.WithNewBrowserContext() a profile of its
// own. A tab lives as long as the context of its first action, so it is
// opened with no timeout, and the timeouts of later actions do not close
// it; it lives until close is called or its parent ends.
func newTab(t *testing.T, parent context.Context, name string, opts ...chromedp.ContextOption) (p page, close func()) {
	t.Helper()
	ctx, cancel := chromedp.NewContext(parent, opts...)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("%s: opening the tab: %v", name, err)
	}
	return page{t, name, ctx}, cancel
}

// openTab is newTab in the browser's default profile, at url.
func openTab(t *testing.T, browser context.Context, name, url string) (p page, close func()) {
	t.Helper()
	p, close = newTab(t, browser, name)
	p.do(chromedp.Navigate(url))
	return p, close
}

// on returns the page reporting to t (a subtest's).
func (p page) on(t *testing.T) page { p.t = t; return p }

func (p page) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
}

// await waits until the expression is true on the page, for 20s at most.
func (p page) await(what, expr string) { p.t.Helper(); p.awaitWithin(20*time.Second, what, expr) }

// awaitWithin is await with a deadline of its own.
func (p page) awaitWithin(within time.Duration, what, expr string) {
	p.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`!!(`+expr+`)`))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
			defer cancel()
			state, derr := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + '\n' + document.body.innerText + '\nevents: ' + JSON.stringify(window.sseLog)`))
			p.t.Fatalf("%s: waiting %v for %s (last error: %v)\nthe page (%v):\n%s", p.name, within, what, err, derr, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p page) eval(expr string) []string {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[[]string](expr))
	if err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
	return v
}

func (p page) bool(expr string) bool {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](`!!(`+expr+`)`))
	if err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
	return v
}

// setCookie gives the browser the session cookie for ssebridge's host (all
// ports of 127.0.0.1: the test pages are on the same site).
func setCookie(t *testing.T, browser context.Context, sseURL, token string) {
	t.Helper()
	_, err := chromedp.Call(browser, network.SetCookie, network.SetCookieParams{Name: "sse_session", Value: token, URL: sseURL})
	if err != nil {
		t.Fatal(err)
	}
}

// sessionCookie is the sse_session cookie the tab's profile holds for
// url, and whether it holds one.
func sessionCookie(p page, url string) (string, bool) {
	p.t.Helper()
	cookies, err := chromedp.Call(p.ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{url}})
	if err != nil {
		p.t.Fatalf("%s: reading the cookies for %s: %v", p.name, url, err)
	}
	for _, c := range cookies.Cookies {
		if c.Name == "sse_session" {
			return c.Value, true
		}
	}
	return "", false
}

// screenshot keeps a picture of the page in artifacts/ (not committed; CI keeps it).
func screenshot(t *testing.T, p page, name string) {
	buf, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100)) // quality 100: a PNG
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join(repoRoot, "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}
