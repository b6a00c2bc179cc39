package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// ssebridge serving HTTPS and HTTP/2 itself (TLS_CERT_FILE, TLS_KEY_FILE):
// a browser multiplexes ten streams on one connection, where HTTP/1.1 would
// give it six at most.

// runApp runs ssebridge (startBinary) with environ until the test ends,
// and returns its address.
func runApp(t *testing.T, environ map[string]string) string {
	return startBinary(t, environ).addr
}

// runAppStop is runApp that also returns stop, which ends ssebridge with
// SIGTERM and waits for it (the test's end calls it too).
func runAppStop(t *testing.T, environ map[string]string) (string, func()) {
	p := startBinary(t, environ)
	return p.addr, func() { _ = p.stop() }
}

// metricOver reads one series from /metrics with client.
func metricOver(t *testing.T, client *http.Client, base, series string) float64 {
	t.Helper()
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(body)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == series {
			var v float64
			fmt.Sscan(f[1], &v)
			return v
		}
	}
	return 0
}

// TestTLSBadFiles: TLS_CERT_FILE and TLS_KEY_FILE both set, but a file
// cannot be read or is no PEM: ssebridge stops at once, exit 1, naming the
// variable (and starts nothing, not even the embedded Redis).
func TestTLSBadFiles(t *testing.T) {
	dir := t.TempDir()
	cert, key, _ := selfSignedCert(t, dir)
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct{ cert, key, want string }{
		{missing, key, "TLS_CERT_FILE: open " + missing},
		{cert, missing, "TLS_KEY_FILE: open " + missing},
		{junk, key, "TLS_CERT_FILE " + junk + " and TLS_KEY_FILE " + key},
		{cert, junk, "TLS_CERT_FILE " + cert + " and TLS_KEY_FILE " + junk},
	} {
		_, stderr, code := runCommand(t, map[string]string{"LISTEN_ADDR": "127.0.0.1:0", "TLS_CERT_FILE": tc.cert, "TLS_KEY_FILE": tc.key})
		if code != 1 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "ssebridge listening") {
			t.Errorf("with %s, %s: exit %d, stderr:\n%s\nwant exit 1 before listening, with %q", tc.cert, tc.key, code, stderr, tc.want)
		}
	}
}

// tenStreamsJS opens ten EventSources at once on the page's own origin and
// records, for each, the ready events and the data of "chat" events.
const tenStreamsJS = `(() => {
	window.ten = [];
	for (let k = 0; k < 10; k++) {
		const s = {readies: 0, chats: [], errors: 0};
		s.es = new EventSource('/events');
		s.es.addEventListener('ready', () => { s.readies++; });
		s.es.addEventListener('chat', (e) => { s.chats.push(e.data); });
		s.es.onerror = () => { s.errors++; };
		window.ten.push(s);
	}
})()`

func TestTLSHTTP2(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	r := redistest.Start(t)
	cert, key, pool := selfSignedCert(t, t.TempDir())
	addr, stop := runAppStop(t, map[string]string{
		"REDIS_URL": r.URL(), "TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "SHUTDOWN_TIMEOUT": "8s",
	})
	base := "https://" + addr
	client := h2Client(pool) // trusts the test's certificate only

	// Go's client first: the certificate is served, h2 is negotiated.
	resp, err := client.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.TLS == nil || resp.TLS.NegotiatedProtocol != "h2" {
		t.Fatalf("GET /healthz over %s, want HTTP/2 negotiated by ALPN", resp.Proto)
	}
	if c := resp.TLS.PeerCertificates[0]; c.Subject.CommonName != "127.0.0.1" {
		t.Fatalf("served certificate %q, want the test's", c.Subject.CommonName)
	}
	// Plain HTTP on the same port gets no stream.
	if resp, err := http.Get("http://" + addr + "/events"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP to the TLS port answered 200")
		}
	}

	const token = "tls-alice"
	if err := r.Client().Set(context.Background(), "session:"+token, `{"user":"alice","rooms":["lobby"]}`, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}

	// open loads the demo page over https in a browser started with flags,
	// then (the page's own session check done: it opens no stream of its
	// own) gives it alice's cookie and opens ten EventSources at once.
	// The browser goes through a TCP proxy, which counts its connections.
	open := func(t *testing.T, name string, flags ...chromedp.ExecAllocatorOption) (page, *gateProxy) {
		proxy := startGateProxy(t, addr)
		browser := startBrowser(t, append(flags, chromedp.Flag("ignore-certificate-errors", true))...)
		origin := "https://" + proxy.l.Addr().String()
		p, _ := openTab(t, browser, name, origin+"/")
		p.await("the demo page's session check", `document.body.dataset.checked === 'none'`)
		setCookie(t, browser, origin, token)
		p.do(chromedp.Evaluate[chromedp.Void](tenStreamsJS))
		return p, proxy
	}
	// Connections from the browser open now: the proxy holds two for each
	// (the browser's and its own to ssebridge).
	connections := func(proxy *gateProxy) int {
		proxy.mu.Lock()
		defer proxy.mu.Unlock()
		return len(proxy.conns) / 2
	}
	readies := `window.ten.filter(s => s.readies === 1).length`

	t.Run("HTTP/2: ten streams at once, multiplexed", func(t *testing.T) {
		p, proxy := open(t, "h2 page")
		p.await("ten streams ready", readies+` === 10`)
		if n := metricOver(t, client, base, "ssebridge_streams_open"); n != 10 {
			t.Fatalf("ssebridge_streams_open = %v, want 10", n)
		}
		// One, and at times a spare one Chromium opened ahead: never one
		// per stream.
		if n := connections(proxy); n > 2 {
			t.Fatalf("the browser holds %d connections for the page and its ten streams, want one (or two)", n)
		}
		if err := r.Client().Publish(context.Background(), "sse:room:lobby", `{"event":"chat","data":"over h2"}`).Err(); err != nil {
			t.Fatal(err)
		}
		p.await("the chat event on all ten", `window.ten.every(s => s.chats.length === 1 && s.chats[0] === 'over h2')`)
		if errs := p.eval(`window.ten.filter(s => s.errors > 0).map(s => String(s.errors))`); len(errs) > 0 {
			t.Fatalf("streams with errors: %v", errs)
		}
		// What the browser says it spoke: the page and the script it loaded.
		protos := p.eval(`[performance.getEntriesByType('navigation')[0].nextHopProtocol].concat(
			performance.getEntriesByType('resource').map(e => new URL(e.name).pathname + ' ' + e.nextHopProtocol))`)
		t.Logf("nextHopProtocol: %q", protos)
		if protos[0] != "h2" {
			t.Fatalf("the page came over %q, want h2", protos[0])
		}
		for _, e := range protos[1:] {
			if !strings.HasSuffix(e, " h2") {
				t.Fatalf("a resource came over another protocol: %q", e)
			}
		}
	})

	t.Run("HTTP/1.1 control: six streams, the other four wait", func(t *testing.T) {
		p, proxy := open(t, "http/1.1 page", chromedp.Flag("disable-http2", true))
		p.await("six streams ready", readies+` === 6`)
		if proto := p.eval(`[performance.getEntriesByType('navigation')[0].nextHopProtocol]`)[0]; proto != "http/1.1" {
			t.Fatalf("the page came over %q, want http/1.1 (--disable-http2)", proto)
		}
		time.Sleep(2 * time.Second) // the four others are queued in the browser, not refused
		if n := p.eval(`[String(` + readies + `)]`)[0]; n != "6" {
			t.Fatalf("%s streams ready over HTTP/1.1, want 6", n)
		}
		// (The first subtest's streams end with its browser.)
		eventually(t, 5*time.Second, "ssebridge_streams_open to be 6", func() bool {
			return metricOver(t, client, base, "ssebridge_streams_open") == 6
		})
		if n := connections(proxy); n < 6 {
			t.Fatalf("the browser holds %d connections, want one per stream, 6", n)
		}
	})

	t.Run("shutdown: HTTP/2 streams end with retry:, at once", func(t *testing.T) {
		eventually(t, 5*time.Second, "the browsers' streams to end", func() bool {
			return metricOver(t, client, base, "ssebridge_streams_open") == 0
		})
		// Two streams on the one connection of Go's client.
		var bodies []*bufio.Reader
		for range 2 {
			req, _ := http.NewRequest("GET", base+"/events", nil)
			req.Header.Set("Cookie", "sse_session="+token)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
				t.Fatalf("GET /events: %s over %s", resp.Status, resp.Proto)
			}
			bodies = append(bodies, bufio.NewReader(resp.Body))
		}
		readUntil := func(b *bufio.Reader, prefix string) {
			t.Helper()
			for {
				line, err := b.ReadString('\n')
				if strings.HasPrefix(line, prefix) {
					return
				}
				if err != nil {
					t.Fatalf("the stream ended (%v) before a line %q", err, prefix)
				}
			}
		}
		for _, b := range bodies {
			readUntil(b, "event: ready")
		}
		start := time.Now()
		stopped := make(chan struct{})
		go func() { stop(); close(stopped) }()
		for _, b := range bodies {
			readUntil(b, "retry:") // the shutdown's hint, then the end
			if rest, err := io.ReadAll(b); err != nil || strings.TrimSpace(string(rest)) != "" {
				t.Fatalf("after retry: %q, %v; want a clean end", rest, err)
			}
		}
		// Well within SHUTDOWN_TIMEOUT: the streams were told, not cut.
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("the HTTP/2 streams ended %v after the stop (SHUTDOWN_TIMEOUT 8s)", d)
		}
		<-stopped
	})
}
