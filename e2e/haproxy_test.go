package e2e

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// ssebridge behind HAProxy, with the very config that deploy/haproxy.cfg
// documents, for a page on another origin (the layout of app.example.com
// plus push.example.com): in the seconds before the health checks mark the
// instances down, HAProxy answers a reconnect itself, and that answer must
// be a retry stream carrying the page's CORS headers, or the page's
// EventSource closes for good.

const (
	haproxyStreams   = 4  // EventSources on the cross-origin page
	haproxyEvents    = 30 // durable events published in all
	haproxyWindow    = 5  // published but not yet delivered to every stream, at most
	haproxyKillAt    = 10 // events published when both instances are SIGKILLed
	haproxyWhileDown = 5  // events published while no instance runs
	haproxyToken     = "haproxy-alice"
)

// The literal values in deploy/haproxy.cfg that a test run replaces, with
// how many times each must occur, so the committed file and the tested one
// differ only there.
var haproxyLiterals = []struct {
	text  string
	count int
}{
	{"10.0.0.11:8080", 2}, // the streams' backend and the other one
	{"10.0.0.12:8080", 2},
	{"bind :443 ssl crt /etc/haproxy/certs/sse.example.com.pem ", 1},
	{"bind :80\n", 1},
	{"-m str https://app.example.com\n", 1},
	{"log /dev/log local0\n", 1},
	{"    user haproxy\n    group haproxy\n", 1}, // the test runs HAProxy as itself
}

// haproxySetup is what a test fills into deploy/haproxy.cfg.
type haproxySetup struct {
	bin, upstreamA, upstreamB string
	pem                       string // certificate and key, one file
	allowed                   string // the one page origin the CORS ACL lists
	edit                      func(conf string) string
}

// haproxyServer is an HAProxy process owned by one test.
type haproxyServer struct {
	origin string // https://127.0.0.1:port
	log    *syncBuffer
}

// startHAProxy renders deploy/haproxy.cfg for loopback, with the retry
// answer beside it, and runs HAProxy in the foreground until the test ends.
func startHAProxy(t *testing.T, s haproxySetup) *haproxyServer {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	retry, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "haproxy-sse-retry.http"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// default-path config: the file's relative name resolves here.
	if err := os.WriteFile(filepath.Join(dir, "haproxy-sse-retry.http"), retry, 0o644); err != nil {
		t.Fatal(err)
	}
	tlsAddr := freeAddr(t)
	with := []string{s.upstreamA, s.upstreamB,
		"bind " + tlsAddr + " ssl crt " + s.pem + " ", "bind " + freeAddr(t) + "\n",
		"-m str " + s.allowed + "\n", "log stdout format raw local0\n", ""}
	conf := string(raw)
	for i, l := range haproxyLiterals {
		if c := strings.Count(conf, l.text); c != l.count {
			t.Fatalf("deploy/haproxy.cfg holds %q %d times; the test replaces it and wants it %d times", l.text, c, l.count)
		}
		conf = strings.ReplaceAll(conf, l.text, with[i])
	}
	if s.edit != nil {
		conf = s.edit(conf)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(s.bin, "-c", "-q", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	h := &haproxyServer{origin: "https://" + tlsAddr, log: &syncBuffer{}}
	cmd := exec.Command(s.bin, "-db", "-f", cfg) // -db: foreground, logging to stdout
	cmd.Stdout, cmd.Stderr = h.log, h.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}) // closed once HAProxy has exited, with waitErr set
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // a hard stop: streams end at once
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("haproxy (%s) output:\n%s", h.origin, tail(h.log.String(), 32<<10))
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", tlsAddr)
		if err == nil {
			c.Close()
			return h
		}
		select {
		case <-done:
			t.Fatalf("haproxy exited: %v\n%s", waitErr, h.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("haproxy did not listen within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// haproxyEvent is one /events line of HAProxy's log (option httplog).
type haproxyEvent struct {
	server, status, term string // server "<NOSRV>": none was up; term: the termination state
}

// The request is logged in absolute form over HTTP/2.
var haproxyLogRE = regexp.MustCompile(`ssebridge_events/(\S+) \S+ (\d+) \d+ \S+ \S+ (\S{4}) .*"GET (?:https://[^/"]+)?/events[ ?]`)

// events returns the /events lines of HAProxy's log.
func (h *haproxyServer) events() []haproxyEvent {
	var out []haproxyEvent
	for _, l := range strings.Split(h.log.String(), "\n") {
		if m := haproxyLogRE.FindStringSubmatch(l); m != nil {
			out = append(out, haproxyEvent{m[1], m[2], m[3]})
		}
	}
	return out
}

// retryAnswer reports whether HAProxy answered the stream itself, after a
// failed connect or with no server up (termination state "SC"). The log
// says 503, the status HAProxy meant; the errorfile's 200 is what was sent.
func (e haproxyEvent) retryAnswer() bool { return e.status == "503" && strings.HasPrefix(e.term, "SC") }

// haproxyPEM writes the test's certificate and key into one file, as
// HAProxy's crt wants them.
func haproxyPEM(t *testing.T, dir string) (pemFile string, pool *x509.CertPool) {
	certFile, keyFile, pool := selfSignedCert(t, dir)
	var b []byte
	for _, f := range []string{certFile, keyFile} {
		p, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, p...)
	}
	pemFile = filepath.Join(dir, "haproxy.pem")
	if err := os.WriteFile(pemFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return pemFile, pool
}

// rawEvents asks url's /events with the given Origin headers and returns
// the answer with its whole body (a retry answer ends; a real stream is
// read up to its ready event).
func rawEvents(t *testing.T, c *http.Client, url string, origins ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url+"/events", nil)
	req.Header.Set("Cookie", "sse_session="+haproxyToken)
	req.Header["Origin"] = origins
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body []byte
	buf := make([]byte, 4096)
	for !strings.Contains(string(body), "event: ready") {
		n, err := resp.Body.Read(buf)
		body = append(body, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading %s/events: %v", url, err)
		}
	}
	return resp, string(body)
}

// haproxyStreamsJS opens EventSources to another origin, with credentials;
// what they see is read with streamStatesJS (nginx_test.go).
const haproxyStreamsJS = `((url, n) => {
	window.nx = [];
	for (let k = 0; k < n; k++) {
		const s = {got: [], ids: [], opens: 0, errors: 0, readies: 0, closed: 0, resets: 0};
		const es = new EventSource(url, {withCredentials: true});
		s.es = es;
		es.onopen = () => { s.opens++; };
		es.onerror = () => { s.errors++; if (es.readyState === EventSource.CLOSED) s.closed++; };
		es.addEventListener('ready', () => { s.readies++; });
		es.addEventListener('reset', () => { s.resets++; });
		es.addEventListener('n', (e) => { s.got.push(Number(e.data)); s.ids.push(e.lastEventId); });
		window.nx.push(s);
	}
})(%q, %d)`

func TestHAProxyFailoverCrossOrigin(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	haproxyBin, _ := proxyPrereqs(t, "haproxy")
	start := time.Now()
	pem, pool := haproxyPEM(t, t.TempDir())
	r := redistest.Start(t)
	rdb := r.Client()
	ctx := context.Background()

	// The app's page, on another origin than HAProxy's (another port of
	// 127.0.0.1, https too: the same site, so the session cookie, SameSite=
	// Lax, rides along with the credentialed EventSource).
	app := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><meta charset="utf-8"><title>app</title><p>the app's page</p>`)
	}))
	t.Cleanup(app.Close)
	const foreign = "https://evil.example"

	addrA, addrB := freeAddr(t), freeAddr(t)
	vars := func(addr string) map[string]string {
		return map[string]string{"REDIS_URL": r.URL(), "LISTEN_ADDR": addr, "RETRY_INTERVAL": "500ms", "ALLOWED_ORIGINS": app.URL}
	}
	a, b := startBinary(t, vars(addrA)), startBinary(t, vars(addrB))
	setup := haproxySetup{bin: haproxyBin, upstreamA: "127.0.0.1:" + port(addrA), upstreamB: "127.0.0.1:" + port(addrB), pem: pem, allowed: app.URL}
	hap := startHAProxy(t, setup)
	if err := rdb.Set(ctx, "session:"+haproxyToken, `{"user":"alice","rooms":["lobby"]}`, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	client := h2Client(pool)

	t.Run("HAProxy's own answer echoes a listed origin only", func(t *testing.T) {
		// Through the live instances, ssebridge's answer keeps its own CORS
		// headers, not doubled by HAProxy's.
		resp, body := rawEvents(t, client, hap.origin, app.URL)
		if resp.StatusCode != 200 || !strings.Contains(body, "event: ready") {
			t.Fatalf("through HAProxy, Origin %s: %d %q, want 200 and ready", app.URL, resp.StatusCode, body)
		}
		if v := resp.Header.Values("Access-Control-Allow-Origin"); !slices.Equal(v, []string{app.URL}) {
			t.Errorf("ssebridge's answer through HAProxy: Access-Control-Allow-Origin %q, want [%s] once", v, app.URL)
		}
		if resp.ProtoMajor != 2 {
			t.Errorf("answered over %s, want HTTP/2", resp.Proto)
		}

		// HAProxy in front of two ports where nothing listens: every
		// answer to /events is its own.
		nowhere := setup
		nowhere.upstreamA, nowhere.upstreamB = freeAddr(t), freeAddr(t)
		down := startHAProxy(t, nowhere)
		for _, c := range []struct {
			what    string
			origins []string
			echo    bool
		}{
			{"the listed origin", []string{app.URL}, true},
			{"a foreign origin", []string{foreign}, false},
			{"no Origin", nil, false},
			{"the listed origin and a foreign one", []string{app.URL, foreign}, false},
			{"a foreign one and the listed origin", []string{foreign, app.URL}, false},
			{"the listed origin with a suffix", []string{app.URL + ".evil.example"}, false},
		} {
			resp, body := rawEvents(t, client, down.origin, c.origins...)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || body != "retry: 2000\n\n" {
				t.Errorf("%s, no instance up: %d %q %q, want 200 text/event-stream \"retry: 2000\\n\\n\"",
					c.what, resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
			acao := resp.Header.Values("Access-Control-Allow-Origin")
			switch {
			case c.echo && (!slices.Equal(acao, []string{app.URL}) || resp.Header.Get("Access-Control-Allow-Credentials") != "true" ||
				!slices.Contains(resp.Header.Values("Vary"), "Origin")):
				t.Errorf("%s: CORS headers %v, want the origin echoed once, with credentials and Vary: Origin", c.what, resp.Header)
			case !c.echo && (len(acao) > 0 || resp.Header.Get("Access-Control-Allow-Credentials") != ""):
				t.Errorf("%s: CORS headers %v, want none", c.what, resp.Header)
			}
		}
		// /events/check keeps real statuses: only /events gets the retry.
		resp, err := client.Get(down.origin + "/events/check")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Errorf("/events/check with no instance up: %d, want HAProxy's 503", resp.StatusCode)
		}
	})

	browser := startBrowser(t, chromedp.Flag("ignore-certificate-errors", true))
	if _, err := chromedp.Call(browser, network.SetCookie, network.SetCookieParams{
		Name: "sse_session", Value: haproxyToken, URL: hap.origin, Secure: new(true), HTTPOnly: new(true), SameSite: network.CookieSameSiteLax,
	}); err != nil {
		t.Fatal(err)
	}
	tab, _ := openTab(t, browser, "app page", app.URL+"/")
	tab.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(haproxyStreamsJS, hap.origin+"/events", haproxyStreams)))

	// states returns every stream's state, and fails at once if one of them
	// has given up for good.
	states := func() []esState {
		t.Helper()
		c, cancel := context.WithTimeout(tab.ctx, 5*time.Second)
		s, err := chromedp.Run(c, chromedp.Evaluate[[]esState](streamStatesJS))
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tab.name, err)
		}
		for i, e := range s {
			if e.Closed > 0 || e.State == 2 {
				t.Fatalf("stream %d: EventSource CLOSED for good (%+v)", i, e)
			}
		}
		return s
	}
	// awaitEach waits until every stream satisfies ok (given its index).
	awaitEach := func(what string, ok func(i int, e esState) bool) []esState {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			s := states()
			all := true
			for i, e := range s {
				all = all && ok(i, e)
			}
			if all {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: %+v", what, s)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	awaitAll := func(what string, ok func(esState) bool) []esState {
		t.Helper()
		return awaitEach(what, func(_ int, e esState) bool { return ok(e) })
	}
	awaitAll("every stream to be ready", func(e esState) bool { return e.Readies == 1 })
	t.Logf("streams open: A %d, B %d", streamsOpen(t, addrA), streamsOpen(t, addrB))

	var ids []string // ids[i] is event i+1's
	publish := func() {
		n := len(ids) + 1
		ids = append(ids, publishDurable(t, rdb, "room:lobby", fmt.Sprintf(`{"event":"n","data":%d}`, n)))
	}
	var outage time.Duration
	for len(ids) < haproxyEvents {
		if len(ids) == haproxyKillAt {
			killed, from := time.Now(), len(hap.events())
			a.kill()
			b.kill()
			for range haproxyWhileDown {
				publish()
			}
			// Every stream gets an answer of HAProxy's own (an open without
			// a ready: it passed the browser's CORS check) twice: in the
			// seconds before the health checks notice (a failed connect to
			// a server still marked up), and once they have marked both
			// down (no server). Awaited, not slept.
			awaitAll("HAProxy's retry answer to every stream's reconnect", func(e esState) bool { return e.Opens-e.Readies >= 1 })
			before := time.Since(killed)
			eventually(t, 15*time.Second, "the health checks to mark both instances down", func() bool {
				l := hap.log.String()
				return strings.Contains(l, "Server ssebridge_events/a is DOWN") && strings.Contains(l, "Server ssebridge_events/b is DOWN")
			})
			down := time.Since(killed)
			marked := states()
			awaitEach("a retry answer to every stream with no server up", func(i int, e esState) bool {
				return e.Opens-e.Readies > marked[i].Opens-marked[i].Readies
			})
			a, b = startBinary(t, vars(addrA)), startBinary(t, vars(addrB))
			outage = time.Since(killed)
			var failed, nosrv int
			for _, e := range hap.events()[from:] {
				switch {
				case !e.retryAnswer():
				case e.server == "<NOSRV>":
					nosrv++
				default:
					failed++
				}
			}
			if failed == 0 || nosrv == 0 {
				t.Errorf("HAProxy's retry answers during the outage: %d after a failed connect, %d with no server up; want both", failed, nosrv)
			}
			t.Logf("no instance for %v: every stream had a retry answer after %v; both marked down after %v; %d retry answers after a failed connect, %d with no server up",
				outage.Round(time.Millisecond), before.Round(time.Millisecond), down.Round(time.Millisecond), failed, nosrv)
		}
		low := len(ids) - haproxyWindow
		awaitAll(fmt.Sprintf("every stream to have %d events", low), func(e esState) bool { return len(e.Got) >= low })
		publish()
	}
	final := awaitAll("every event on every stream", func(e esState) bool { return len(e.Got) >= haproxyEvents })
	for i, e := range final {
		for j, n := range e.Got {
			if n != j+1 || j >= haproxyEvents {
				t.Fatalf("stream %d: events %v, want 1..%d once each, in order", i, e.Got, haproxyEvents)
			}
			if e.IDs[j] != ids[j] {
				t.Fatalf("stream %d: event %d has id %q, want %q", i, n, e.IDs[j], ids[j])
			}
		}
		if e.Resets != 0 {
			t.Errorf("stream %d: %d resets", i, e.Resets)
		}
		if e.Readies < 2 {
			t.Errorf("stream %d: %d readies, want a reconnect to a restarted instance", i, e.Readies)
		}
		t.Logf("stream %d: %d events in order; %d reconnects to ssebridge, %d retry answers from HAProxy, %d errors, never CLOSED",
			i, len(e.Got), e.Readies-1, e.Opens-e.Readies, e.Errors)
	}

	t.Run("without the CORS lines the cross-origin EventSource closes for good", func(t *testing.T) {
		// The control: HAProxy in front of nowhere, the committed config
		// and the same without its http-after-response lines.
		nowhere := setup
		nowhere.upstreamA, nowhere.upstreamB = freeAddr(t), freeAddr(t)
		withCORS := startHAProxy(t, nowhere)
		nowhere.edit = func(conf string) string {
			var kept []string
			for _, l := range strings.Split(conf, "\n") {
				if !strings.HasPrefix(strings.TrimSpace(l), "http-after-response ") {
					kept = append(kept, l)
				}
			}
			if len(kept) != strings.Count(conf, "\n")+1-3 {
				t.Fatal("deploy/haproxy.cfg has not three http-after-response lines")
			}
			return strings.Join(kept, "\n")
		}
		bare := startHAProxy(t, nowhere)
		p := tab.on(t)
		plain := watchES(t, p, bare.origin+"/events")
		cors := watchES(t, p, withCORS.origin+"/events")
		eventually(t, 10*time.Second, "the EventSource without CORS headers to close", func() bool { return plain().Closed })
		eventually(t, 10*time.Second, "the EventSource with them to reconnect after HAProxy's answer", func() bool {
			w := cors()
			if w.Closed {
				t.Fatalf("closed for good after HAProxy's retry answer with CORS headers: %+v", w)
			}
			return w.Opens >= 2
		})
		t.Logf("no instance up, cross-origin: with the CORS lines %+v; without %+v", cors(), plain())
	})

	t.Run("an instance's own 503 (its Redis is down) becomes a retry too", func(t *testing.T) {
		// With Redis stopped the instances refuse a new stream with 503
		// until the health checks (/readyz fails too) mark them down;
		// meanwhile HAProxy tries the other and then turns the last 503
		// into its retry answer (http-response return), with the CORS
		// headers: every answer is one, whichever path made it.
		from := len(hap.events())
		r.Stop()
		var answers int
		eventually(t, 10*time.Second, "an instance's own 503 turned into the retry answer", func() bool {
			resp, body := rawEvents(t, client, hap.origin, app.URL)
			answers++
			if resp.StatusCode != 200 || body != "retry: 2000\n\n" || resp.Header.Get("Access-Control-Allow-Origin") != app.URL {
				t.Fatalf("Redis down, answer %d: %d %q %v, want the retry answer with the listed origin", answers, resp.StatusCode, body, resp.Header)
			}
			for _, e := range hap.events()[from:] {
				// "LH": HAProxy answered itself (http-response return) in
				// place of the instance's answer.
				if e.server != "<NOSRV>" && strings.HasPrefix(e.term, "LH") {
					return true
				}
			}
			return false
		})
		r.Restart()
		t.Logf("Redis down: %d answers, each the retry answer with CORS headers; HAProxy's log: %+v", answers, hap.events()[from:])
	})

	t.Logf("%d durable events, %d cross-origin streams, no instance for %v; took %v",
		len(ids), haproxyStreams, outage.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
