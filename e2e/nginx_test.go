package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// ssebridge behind nginx, with the very config that deploy/nginx.conf
// documents: TLS and HTTP/2 at the edge, two instances sharing one Redis,
// one instance crashing and then the other restarting while durable events
// keep coming. Every browser stream must survive it all (nginx's 502 turned
// into a retry, never a closed EventSource) and get every event once, in order.

const (
	nginxStreamsPerPage = 4  // two pages: 8 streams on one HTTP/2 connection, more than HTTP/1.1's 6
	nginxEvents         = 60 // durable events published in all
	nginxWindow         = 5  // published but not yet delivered to every stream, at most
	nginxKillAt         = 15 // events published when instance A is SIGKILLed
	nginxRestartAt      = 35 // ...when instance B is stopped (SIGTERM), then started again
	nginxWhileDown      = 5  // events published while no instance runs
)

// The literal values in deploy/nginx.conf that a test run replaces; each
// must occur exactly once, so the committed file and the tested one differ
// only there.
const (
	confUpstreamA   = "10.0.0.11:8080"
	confUpstreamB   = "10.0.0.12:8080"
	confListenTLS   = "listen 443 ssl http2;"
	confListenPlain = "listen 80;"
	confCert        = "/etc/ssl/ssebridge/fullchain.pem"
	confKey         = "/etc/ssl/ssebridge/privkey.pem"
	confErrorLog    = "/var/log/nginx/ssebridge.error.log"
	confAccessLog   = "/var/log/nginx/ssebridge.access.log"
	confOrigin      = `"https://app.example.com"` // the map of origins the retry answer's CORS headers admit
)

// proxyPrereqs finds a proxy (nginx, haproxy: Debian's, in /usr/sbin when
// not on a non-root PATH) and Chromium; missing, the test skips loudly, or
// fails under CI (.ci/run installs them).
func proxyPrereqs(t *testing.T, proxy string) (bin, chromium string) {
	var missing []string
	bin, err := exec.LookPath(proxy)
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/" + proxy); serr == nil {
			bin = "/usr/sbin/" + proxy
		} else {
			missing = append(missing, proxy)
		}
	}
	chromium, err = exec.LookPath("chromium")
	if err != nil {
		missing = append(missing, "chromium")
	}
	if len(missing) == 0 {
		return bin, chromium
	}
	msg := strings.ToUpper(proxy) + " TEST NOT RUN: " + strings.Join(missing, " and ") + " missing; apt-get install -y " + proxy + " chromium (.ci/run does)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	fmt.Fprintf(os.Stderr, "\n*** %s ***\n\n", msg)
	t.Skip(msg)
	return "", ""
}

// selfSignedCert writes an ECDSA certificate for 127.0.0.1 and its key.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// nginxServer is an nginx process owned by one test, in its own prefix dir.
type nginxServer struct {
	dir, accessLog, errorLog string
	origin                   string // https://127.0.0.1:port
	cmd                      *exec.Cmd
	done                     chan error
}

// nginxSetup is what a test fills into deploy/nginx.conf.
type nginxSetup struct {
	bin, upstreamA, upstreamB, cert, key string
	origin                               string                   // the page origin the retry answer admits (CORS); "" for none of the test's
	edit                                 func(conf string) string // a deliberate change, for the controls; nil for none
}

// startNginx renders deploy/nginx.conf for loopback and runs nginx in the
// foreground until the test ends.
func startNginx(t *testing.T, s nginxSetup) *nginxServer {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	n := &nginxServer{dir: dir, accessLog: filepath.Join(dir, "access.log"), errorLog: filepath.Join(dir, "error.log"), done: make(chan error, 1)}
	tlsAddr := freeAddr(t)
	n.origin = "https://" + tlsAddr
	conf := string(raw)
	origin := s.origin
	if origin == "" {
		origin = "https://unused.invalid"
	}
	for _, r := range [][2]string{
		{confOrigin, strconv.Quote(origin)},
		{confUpstreamA, s.upstreamA}, {confUpstreamB, s.upstreamB},
		{confListenTLS, "listen " + tlsAddr + " ssl http2;"}, {confListenPlain, "listen " + freeAddr(t) + ";"},
		{confCert, s.cert}, {confKey, s.key}, {confErrorLog, n.errorLog}, {confAccessLog, n.accessLog},
	} {
		if c := strings.Count(conf, r[0]); c != 1 {
			t.Fatalf("deploy/nginx.conf holds %q %d times; the test replaces it and wants it exactly once", r[0], c)
		}
		conf = strings.Replace(conf, r[0], r[1], 1)
	}
	if s.edit != nil {
		conf = s.edit(conf)
	}
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	global := "pid " + filepath.Join(dir, "nginx.pid") + ";"
	if out, err := exec.Command(s.bin, "-t", "-q", "-p", dir, "-c", confFile, "-g", global).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	n.cmd = exec.Command(s.bin, "-p", dir, "-c", confFile, "-g", "daemon off; "+global)
	out, err := os.Create(filepath.Join(dir, "nginx.out"))
	if err != nil {
		t.Fatal(err)
	}
	n.cmd.Stdout, n.cmd.Stderr = out, out
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.done <- n.cmd.Wait() }()
	t.Cleanup(func() {
		_ = n.cmd.Process.Signal(syscall.SIGQUIT) // graceful: the master stops its workers too
		select {
		case <-n.done:
		case <-time.After(3 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.done
		}
		if t.Failed() {
			for _, f := range []string{"nginx.out", "error.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("nginx %s:\n%s", f, b)
			}
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", tlsAddr)
		if err == nil {
			c.Close()
			return n
		}
		select {
		case err := <-n.done:
			b, _ := os.ReadFile(filepath.Join(dir, "nginx.out"))
			t.Fatalf("nginx exited: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("nginx did not listen within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// nginxAccess is one /events line of the access log (format "ssebridge").
type nginxAccess struct {
	status, proto, conn, upstream, upStatus string
}

var accessRE = regexp.MustCompile(`"GET /events[ ?][^"]*" (\d+) \d+ (\S+) conn=(\d+) up=(.*) up_status=(.*) rt=`)

// events returns the access log's /events lines.
func (n *nginxServer) events(t *testing.T) []nginxAccess {
	t.Helper()
	f, err := os.Open(n.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []nginxAccess
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := accessRE.FindStringSubmatch(sc.Text()); m != nil {
			lines = append(lines, nginxAccess{m[1], m[2], m[3], m[4], m[5]})
		}
	}
	return lines
}

// retryAnswer reports whether nginx answered the stream itself (@sse_retry):
// a 200 whose last upstream did not answer 200.
func (a nginxAccess) retryAnswer() bool {
	ups := strings.Split(a.upStatus, ", ")
	return a.status == "200" && ups[len(ups)-1] != "200"
}

// h2Client trusts the test's certificate only, and speaks HTTP/2.
func h2Client(pool *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true,
	}}
}

// openThrough opens /events through nginx with an Origin header and returns
// the status, and for a 200 the first lines up to the ready event.
func openThrough(t *testing.T, c *http.Client, url, token, origin string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url+"/events", nil)
	req.Header.Set("Cookie", "sse_session="+token)
	req.Header.Set("Origin", origin)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Errorf("%s: answered over %s, want HTTP/2", url, resp.Proto)
	}
	if resp.StatusCode != 200 {
		return resp, ""
	}
	var got strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		got.WriteString(sc.Text() + "\n")
		if strings.HasPrefix(sc.Text(), "data:") {
			break
		}
	}
	return resp, got.String()
}

// streamsOpen reads ssebridge_streams_open from an instance, directly.
func streamsOpen(t *testing.T, addr string) int {
	t.Helper()
	return int(metricOf(t, addr, "ssebridge_streams_open"))
}

func metricOf(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return 0
}

// esState is what a page knows about one of its EventSources.
type esState struct {
	Got     []int    `json:"got"`     // data of each "n" event, in arrival order
	IDs     []string `json:"ids"`     // lastEventId after each "n" event
	Opens   int      `json:"opens"`   // open events: every 200 text/event-stream answer
	Errors  int      `json:"errors"`  // error events: every end of a connection
	Readies int      `json:"readies"` // ready events: every stream ssebridge accepted
	Closed  int      `json:"closed"`  // errors after which the EventSource was CLOSED for good
	Resets  int      `json:"resets"`
	State   int      `json:"state"` // readyState now
}

const openStreamsJS = `(() => {
	window.nx = [];
	for (let k = 0; k < %d; k++) {
		const s = {got: [], ids: [], opens: 0, errors: 0, readies: 0, closed: 0, resets: 0};
		const es = new EventSource('/events', {withCredentials: true});
		s.es = es;
		es.onopen = () => { s.opens++; };
		es.onerror = () => { s.errors++; if (es.readyState === EventSource.CLOSED) s.closed++; };
		es.addEventListener('ready', () => { s.readies++; });
		es.addEventListener('reset', () => { s.resets++; });
		es.addEventListener('n', (e) => { s.got.push(Number(e.data)); s.ids.push(e.lastEventId); });
		window.nx.push(s);
	}
})()`

const streamStatesJS = `window.nx.map(s => ({got: s.got, ids: s.ids, opens: s.opens, errors: s.errors,
	readies: s.readies, closed: s.closed, resets: s.resets, state: s.es.readyState}))`

func TestNginxFailoverHTTP2(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	nginxBin, chromium := proxyPrereqs(t, "nginx")
	start := time.Now()
	dir := t.TempDir()
	certFile, keyFile, pool := selfSignedCert(t, dir)
	r := redistest.Start(t)
	rdb := r.Client()
	ctx := context.Background()

	// Two instances on fixed loopback ports (B comes back on the same one),
	// with no ALLOWED_ORIGINS: the pages are same-origin through nginx.
	addrA, addrB := freeAddr(t), freeAddr(t)
	vars := func(addr string) map[string]string {
		return map[string]string{"REDIS_URL": r.URL(), "LISTEN_ADDR": addr, "RETRY_INTERVAL": "500ms"}
	}
	a, b := startBinary(t, vars(addrA)), startBinary(t, vars(addrB))
	setup := nginxSetup{bin: nginxBin, upstreamA: "127.0.0.1:" + port(addrA), upstreamB: "127.0.0.1:" + port(addrB), cert: certFile, key: keyFile}
	ngx := startNginx(t, setup)
	const token = "nginx-alice"
	if err := rdb.Set(ctx, "session:"+token, `{"user":"alice","rooms":["lobby"]}`, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	client := h2Client(pool)

	t.Run("the origin check passes through nginx as same-origin", func(t *testing.T) {
		resp, head := openThrough(t, client, ngx.origin, token, ngx.origin)
		if resp.StatusCode != 200 || !strings.Contains(head, "event: ready") {
			t.Fatalf("Origin %s through nginx: %d %q, want 200 and ready", ngx.origin, resp.StatusCode, head)
		}
		if acao := resp.Header.Get("Access-Control-Allow-Origin"); acao != "" {
			t.Fatalf("admitted as a listed cross-origin (%q), want as ssebridge's own origin", acao)
		}
		// ssebridge's own origin is https (X-Forwarded-Proto) with nginx's
		// port (Host $http_host): the same host with http, or without the
		// port, is another origin.
		for _, o := range []string{strings.Replace(ngx.origin, "https:", "http:", 1), "https://127.0.0.1"} {
			if resp, _ := openThrough(t, client, ngx.origin, token, o); resp.StatusCode != 403 {
				t.Errorf("Origin %s through nginx: %d, want 403", o, resp.StatusCode)
			}
		}
		// The controls: the same config with $host, or without
		// X-Forwarded-Proto, refuses the page's own origin.
		for _, c := range []struct{ what, from, to string }{
			{"Host $host", "proxy_set_header Host $http_host;", "proxy_set_header Host $host;"},
			{"no X-Forwarded-Proto", "proxy_set_header X-Forwarded-Proto $scheme;", ""},
		} {
			s := setup
			s.edit = func(conf string) string {
				if strings.Count(conf, c.from) != 1 {
					t.Fatalf("deploy/nginx.conf has no single %q", c.from)
				}
				return strings.Replace(conf, c.from, c.to, 1)
			}
			bad := startNginx(t, s)
			if resp, _ := openThrough(t, client, bad.origin, token, bad.origin); resp.StatusCode != 403 {
				t.Errorf("with %s: the page's own origin got %d, want 403 (so the config's line is what makes it pass)", c.what, resp.StatusCode)
			}
		}
	})

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium), chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("ignore-certificate-errors", true))
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	if err := chromedp.Do(browser); err != nil {
		t.Fatal(err)
	}
	// Two tabs of one profile: one cookie jar, one HTTP/2 connection to nginx.
	first, _ := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	if err := chromedp.Do(first); err != nil {
		t.Fatal(err)
	}
	second, _ := chromedp.NewContext(first)
	if err := chromedp.Do(second); err != nil {
		t.Fatal(err)
	}
	pages := []page{{t, "tab 1", first}, {t, "tab 2", second}}
	if _, err := chromedp.Call(first, network.SetCookie, network.SetCookieParams{
		Name: "sse_session", Value: token, URL: ngx.origin, Secure: new(true), HTTPOnly: new(true), SameSite: network.CookieSameSiteLax,
	}); err != nil {
		t.Fatal(err)
	}
	browserFrom := len(ngx.events(t)) // the access log's lines from here on are the browser's
	for _, p := range pages {
		// The demo page, served by ssebridge through nginx: the streams the
		// test opens in it are same-origin. It opens none of its own.
		p.do(chromedp.Navigate(ngx.origin + "/"))
		proto, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`performance.getEntriesByType('navigation')[0].nextHopProtocol`))
		if err != nil || proto != "h2" {
			t.Fatalf("%s: the page came over %q (%v), want h2", p.name, proto, err)
		}
		p.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(openStreamsJS, nginxStreamsPerPage)))
	}

	// states returns every stream's state, and fails at once if one of them
	// has given up for good.
	states := func() []esState {
		t.Helper()
		var all []esState
		for _, p := range pages {
			c, cancel := context.WithTimeout(p.ctx, 5*time.Second)
			s, err := chromedp.Run(c, chromedp.Evaluate[[]esState](streamStatesJS))
			cancel()
			if err != nil {
				t.Fatalf("%s: %v", p.name, err)
			}
			for i, e := range s {
				if e.Closed > 0 || e.State == 2 {
					t.Fatalf("%s, stream %d: EventSource CLOSED for good (%+v)", p.name, i, e)
				}
			}
			all = append(all, s...)
		}
		return all
	}
	// awaitAll waits until every stream satisfies ok.
	awaitAll := func(what string, ok func(esState) bool) []esState {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			s := states()
			all := true
			for _, e := range s {
				all = all && ok(e)
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
	const streams = 2 * nginxStreamsPerPage
	awaitAll("every stream to be ready", func(e esState) bool { return e.Readies == 1 })
	// More than six streams of one profile are open at once: HTTP/2.
	onA, onB := streamsOpen(t, addrA), streamsOpen(t, addrB)
	if onA+onB != streams || onA == 0 || onB == 0 {
		t.Fatalf("streams per instance: A %d, B %d; want %d in all, on both", onA, onB, streams)
	}

	var ids []string // ids[i] is event i+1's
	publish := func() {
		n := len(ids) + 1
		ids = append(ids, publishDurable(t, rdb, "room:lobby", fmt.Sprintf(`{"event":"n","data":%d}`, n)))
	}
	var replayedB1 float64
	var stopped time.Time
	for len(ids) < nginxEvents {
		switch len(ids) {
		case nginxKillAt:
			t.Logf("SIGKILL instance A (%d streams on it, %d on B)", streamsOpen(t, addrA), streamsOpen(t, addrB))
			a.kill()
		case nginxRestartAt:
			if n := streamsOpen(t, addrB); n != streams {
				t.Fatalf("%d streams on B after A's crash, want all %d", n, streams)
			}
			replayedB1 = metricOf(t, addrB, "ssebridge_events_replayed_total")
			before := len(ngx.events(t))
			stopped = time.Now()
			if err := b.stop(); err != nil {
				t.Fatalf("B's exit after SIGTERM: %v", err)
			}
			for range nginxWhileDown {
				publish()
			}
			// Start B again once nginx has answered every stream's
			// reconnect itself (no instance left): awaited, not slept.
			eventually(t, 10*time.Second, "nginx to answer every stream's reconnect with a retry", func() bool {
				n := 0
				for _, l := range ngx.events(t)[before:] {
					if l.retryAnswer() {
						n++
					}
				}
				return n >= streams
			})
			b = startBinary(t, vars(addrB))
			t.Logf("B down for %v", time.Since(stopped).Round(time.Millisecond))
		}
		// Paced by delivery: at most nginxWindow events ahead of the slowest stream.
		low := len(ids) - nginxWindow
		awaitAll(fmt.Sprintf("every stream to have %d events", low), func(e esState) bool { return len(e.Got) >= low })
		publish()
	}
	final := awaitAll("every event on every stream", func(e esState) bool { return len(e.Got) >= nginxEvents })
	replayedB2 := metricOf(t, addrB, "ssebridge_events_replayed_total")

	for i, e := range final {
		name := fmt.Sprintf("%s, stream %d", pages[i/nginxStreamsPerPage].name, i%nginxStreamsPerPage)
		for j, n := range e.Got {
			if n != j+1 || j >= nginxEvents {
				t.Fatalf("%s: events %v, want 1..%d once each, in order", name, e.Got, nginxEvents)
			}
			if e.IDs[j] != ids[j] {
				t.Fatalf("%s: event %d has id %q, want %q", name, n, e.IDs[j], ids[j])
			}
		}
		if e.Resets != 0 {
			t.Errorf("%s: %d resets", name, e.Resets)
		}
		// Every stream lived through B's restart: one more ready at least,
		// and at least one answer of nginx's own (an open without a ready).
		if e.Readies < 2 || e.Opens-e.Readies < 1 {
			t.Errorf("%s: %d readies, %d opens: want a reconnect and a retry answer from nginx", name, e.Readies, e.Opens)
		}
		t.Logf("%s: %d events in order; %d reconnects to ssebridge, %d retry answers from nginx, %d errors, never CLOSED",
			name, len(e.Got), e.Readies-1, e.Opens-e.Readies, e.Errors)
	}

	// nginx's side: every stream went over HTTP/2, a reconnect found the
	// live instance after a refused one, and the retries were nginx's own.
	var failover, retries int
	conns := map[string]bool{}
	for _, l := range ngx.events(t)[browserFrom:] {
		conns[l.conn] = true
		if l.proto != "HTTP/2.0" {
			t.Errorf("a stream went over %s: %+v", l.proto, l)
		}
		if l.status == "200" && strings.Contains(l.upStatus, ", 200") {
			failover++
		}
		if l.retryAnswer() {
			retries++
		}
	}
	if failover == 0 {
		t.Error("no reconnect went to the next instance after a failed one (proxy_next_upstream)")
	}
	if replayedB1 == 0 || replayedB2 == 0 {
		t.Errorf("replayed events: %v on B before its restart, %v after; want some on both (events published while streams were away)", replayedB1, replayedB2)
	}
	if len(conns) != 1 {
		t.Errorf("the browser's streams came over %d connections, want one HTTP/2 connection", len(conns))
	}
	t.Run("with no instance, nginx's retry answer keeps EventSource alive; a bare 502 closes it", func(t *testing.T) {
		// nginx in front of two ports where nothing listens: the committed
		// config, and the same without the error_page line.
		nowhere := setup
		nowhere.upstreamA, nowhere.upstreamB = freeAddr(t), freeAddr(t)
		nowhere.origin = ngx.origin // the pages' origin, listed in the map
		withRetry := startNginx(t, nowhere)
		// The retry answer's CORS headers: for a listed origin only.
		for _, c := range []struct{ origin, acao, acac string }{
			{ngx.origin, ngx.origin, "true"},
			{"https://evil.example", "", ""},
		} {
			resp, _ := openThrough(t, client, withRetry.origin, token, c.origin)
			if acao, acac := resp.Header.Get("Access-Control-Allow-Origin"), resp.Header.Get("Access-Control-Allow-Credentials"); resp.StatusCode != 200 || acao != c.acao || acac != c.acac {
				t.Errorf("the retry answer to Origin %s: %d, Access-Control-Allow-Origin %q, -Credentials %q; want 200, %q, %q",
					c.origin, resp.StatusCode, acao, acac, c.acao, c.acac)
			}
		}
		nowhere.edit = func(conf string) string {
			const line = "error_page 502 503 504 = @sse_retry;"
			if strings.Count(conf, line) != 1 {
				t.Fatalf("deploy/nginx.conf has no single %q", line)
			}
			return strings.Replace(conf, line, "", 1)
		}
		bare := startNginx(t, nowhere)

		tab := func(name, url string) page {
			ctx, _ := chromedp.NewContext(first)
			if err := chromedp.Do(ctx); err != nil { // opened with no timeout: it lives as long as the test
				t.Fatal(err)
			}
			p := page{t, name, ctx}
			p.do(chromedp.Navigate(url)) // nginx's own 502 page: a document of that origin
			return p
		}
		plain := watchES(t, tab("bare 502", bare.origin+"/"), bare.origin+"/events")
		same := watchES(t, tab("retry answer", withRetry.origin+"/"), withRetry.origin+"/events")
		// From the first tab, another origin: the retry answer carries CORS headers.
		cross := watchES(t, pages[0].on(t), withRetry.origin+"/events")
		eventually(t, 10*time.Second, "the bare 502 to close its EventSource", func() bool { return plain().Closed })
		for what, w := range map[string]func() watched{"same-origin": same, "cross-origin": cross} {
			// Two answers opened: it reconnected after the first by itself.
			eventually(t, 10*time.Second, what+" EventSource to reconnect after nginx's answer", func() bool {
				s := w()
				if s.Closed {
					t.Fatalf("%s EventSource closed for good after nginx's retry answer: %+v", what, s)
				}
				return s.Opens >= 2
			})
			t.Logf("%s, no instance up: %+v", what, w())
		}
		t.Logf("bare 502: %+v", plain())
	})

	t.Run("an instance's own 503 (its Redis is down) becomes a retry too", func(t *testing.T) {
		// B alone is up (A was killed); without Redis it refuses a new
		// stream with 503, which nginx turns into its retry answer
		// (proxy_intercept_errors); once Redis is back the stream opens.
		from := len(ngx.events(t))
		r.Stop()
		es := watchES(t, pages[0].on(t), ngx.origin+"/events")
		eventually(t, 10*time.Second, "a refusal by the instance answered with nginx's retry", func() bool {
			if w := es(); w.Closed {
				t.Fatalf("the EventSource closed for good on the instance's 503: %+v", w)
			}
			for _, l := range ngx.events(t)[from:] {
				if l.retryAnswer() && strings.Contains(l.upStatus, "503") {
					return true
				}
			}
			return false
		})
		r.Restart()
		eventually(t, 15*time.Second, "the stream to open once Redis is back", func() bool {
			w := es()
			if w.Closed {
				t.Fatalf("the EventSource closed for good: %+v", w)
			}
			return w.Readies == 1
		})
		t.Logf("Redis down, then back: %+v", es())
	})

	t.Logf("%d durable events, %d streams in 2 tabs over %d HTTP/2 connection; %d reconnects failed over to the next instance, %d answered by nginx's retry; B replayed %v events after A's crash and %v after its own restart; took %v",
		len(ids), streams, len(conns), failover, retries, replayedB1, replayedB2, time.Since(start).Round(time.Millisecond))
}

// watchJS opens one more EventSource in a page and counts what happens to it.
const watchJS = `((url) => {
	const s = {opens: 0, errors: 0, readies: 0, closed: false};
	const es = new EventSource(url, {withCredentials: true});
	es.onopen = () => { s.opens++; };
	es.onerror = () => { s.errors++; if (es.readyState === EventSource.CLOSED) s.closed = true; };
	es.addEventListener('ready', () => { s.readies++; });
	s.es = es;
	(window.watched = window.watched || []).push(s);
	return window.watched.length - 1;
})(%q)`

type watched struct {
	Opens, Errors, Readies int
	Closed                 bool
}

// watchES opens an EventSource to url in p and returns a probe of its state.
func watchES(t *testing.T, p page, url string) func() watched {
	t.Helper()
	i, err := chromedp.Run(p.ctx, chromedp.Evaluate[int](fmt.Sprintf(watchJS, url)))
	if err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	return func() watched {
		w, err := chromedp.Run(p.ctx, chromedp.Evaluate[watched](fmt.Sprintf(
			`(s => ({Opens: s.opens, Errors: s.errors, Readies: s.readies, Closed: s.closed}))(window.watched[%d])`, i)))
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		return w
	}
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
