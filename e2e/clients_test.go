package e2e

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The non-browser clients of docs/CLIENTS.md, run as processes against the
// real binary: examples/clients/node (npm's eventsource, pinned by its
// package-lock.json) and examples/clients/python (the standard library
// alone). Each prints one JSON line per event on stdout, which the tests
// read line by line.

// pythonPath is Debian's python3 (python, in django_chat_test.go): the
// Python client needs its standard library alone.
func pythonPath(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(python); err != nil {
		notRun(t, "CLIENT", python, "python3")
	}
	return python
}

// nodePath is node, of a version eventsource's package.json accepts.
func nodePath(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		notRun(t, "CLIENT", "node", "nodejs")
	}
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		t.Fatalf("node --version: %v", err)
	}
	v := strings.TrimSpace(string(out))
	major, _ := strconv.Atoi(strings.SplitN(strings.TrimPrefix(v, "v"), ".", 2)[0])
	if major < 18 {
		t.Fatalf("node %s is older than eventsource 3's engines (>=18); see docs/CLIENTS.md", v)
	}
	return node
}

var nodeExample struct {
	once sync.Once
	dir  string
	err  error
}

// nodeClient is the directory of the Node client, ready to run: a copy of
// examples/clients/node with the node_modules its package-lock.json pins.
// Installed once per test binary.
func nodeClient(t *testing.T) string {
	t.Helper()
	nodeExample.once.Do(func() { nodeExample.dir, nodeExample.err = installNodeExample() })
	if nodeExample.err != nil {
		t.Fatal("installing the Node client's packages:", nodeExample.err)
	}
	return nodeExample.dir
}

// installNodeExample does what `npm ci --ignore-scripts` would, without
// npm (Debian's is heavy, and CI has Go): each package of
// package-lock.json, from its resolved URL on the npm registry, checked
// against its integrity (sha512), unpacked under node_modules. Tarballs
// are kept in the user's cache directory by their hash, so a second run
// needs no network; a cached file is checked again before use.
func installNodeExample() (string, error) {
	src := filepath.Join(repoRoot, "examples", "clients", "node")
	dir := filepath.Join(buildDir, "node-client")
	var lock struct {
		LockfileVersion int `json:"lockfileVersion"`
		Packages        map[string]struct {
			Version, Resolved, Integrity string
		} `json:"packages"`
	}
	b, err := os.ReadFile(filepath.Join(src, "package-lock.json"))
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(b, &lock); err != nil {
		return "", fmt.Errorf("package-lock.json: %w", err)
	}
	if lock.LockfileVersion < 2 {
		return "", fmt.Errorf("package-lock.json: lockfileVersion %d; want 2 or 3 (a packages map)", lock.LockfileVersion)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	cache = filepath.Join(cache, "ssebridge-e2e", "npm")
	n := 0
	for key, p := range lock.Packages {
		if key == "" {
			continue // the example itself
		}
		if !strings.HasPrefix(key, "node_modules/") || strings.Contains(key, "..") {
			return "", fmt.Errorf("package-lock.json: unexpected package path %q", key)
		}
		if !strings.HasPrefix(p.Resolved, "https://registry.npmjs.org/") {
			return "", fmt.Errorf("%s: resolved %q is not on registry.npmjs.org", key, p.Resolved)
		}
		tgz, err := fetchVerified(cache, p.Resolved, p.Integrity)
		if err != nil {
			return "", fmt.Errorf("%s@%s: %w", key, p.Version, err)
		}
		if err := untarPackage(tgz, filepath.Join(dir, filepath.FromSlash(key))); err != nil {
			return "", fmt.Errorf("%s@%s: %w", key, p.Version, err)
		}
		n++
	}
	if n == 0 {
		return "", errors.New("package-lock.json lists no package")
	}
	// TestClientNodeEventSource's script, beside node_modules.
	if err := os.WriteFile(filepath.Join(dir, "eventsource-check.mjs"), []byte(eventsourceCheck), 0o644); err != nil {
		return "", err
	}
	for _, f := range []string{"client.mjs", "package.json"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// fetchVerified returns the bytes at url, whose SRI integrity
// ("sha512-<base64>") must match, from cache when there.
func fetchVerified(cache, url, integrity string) ([]byte, error) {
	want, ok := strings.CutPrefix(integrity, "sha512-")
	if !ok {
		return nil, fmt.Errorf("integrity %q: want sha512", integrity)
	}
	sum, err := base64.StdEncoding.DecodeString(want)
	if err != nil || len(sum) != sha512.Size {
		return nil, fmt.Errorf("integrity %q: not a sha512 in base64", integrity)
	}
	check := func(b []byte) bool { got := sha512.Sum512(b); return string(got[:]) == string(sum) }
	path := filepath.Join(cache, hex.EncodeToString(sum)+".tgz")
	if b, err := os.ReadFile(path); err == nil && check(b) {
		return b, nil
	}
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, err
	}
	if !check(b) {
		return nil, fmt.Errorf("GET %s: the tarball does not match package-lock.json's integrity", url)
	}
	if err := os.MkdirAll(cache, 0o755); err == nil {
		tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
		if os.WriteFile(tmp, b, 0o644) == nil {
			_ = os.Rename(tmp, path)
		}
	}
	return b, nil
}

// untarPackage unpacks an npm tarball (files under one top directory,
// "package/" as a rule) into dir: regular files and directories only,
// none outside dir.
func untarPackage(tgz []byte, dir string) error {
	zr, err := gzip.NewReader(strings.NewReader(string(tgz)))
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		_, rel, ok := strings.Cut(h.Name, "/")
		if !ok || rel == "" {
			continue
		}
		if !filepath.IsLocal(rel) {
			return fmt.Errorf("tarball entry %q leaves the package", h.Name)
		}
		target := filepath.Join(dir, filepath.FromSlash(rel))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			b, err := io.ReadAll(io.LimitReader(tr, 32<<20))
			if err != nil {
				return err
			}
			if err := os.WriteFile(target, b, 0o644); err != nil {
				return err
			}
		}
	}
}

// clientEvent is one line of a client's stdout.
type clientEvent struct {
	Event, ID, Data string
}

// client is a client process (node or python3).
type client struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	events chan clientEvent // its stdout, a line each; closed at its end
	stderr *syncBuffer
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// startClient runs path with args, and env on top of the test's
// environment. It is killed when the test ends, if still running.
func startClient(t *testing.T, name, path string, env map[string]string, args ...string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // bounded whatever happens
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	c := &client{t: t, name: name, cmd: cmd, events: make(chan clientEvent, 1024), stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = c.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer cancel()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var ev clientEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				ev = clientEvent{Event: "!unparsed", Data: sc.Text()}
			}
			c.events <- ev
		}
		close(c.events)
		c.err = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			t.Logf("%s client (pid %d) stderr:\n%s", name, cmd.Process.Pid, tail(c.stderr.String(), 32<<10))
		}
	})
	return c
}

// next is the client's next event; it fails the test if none comes within
// 10 s or the client ends.
func (c *client) next() clientEvent {
	c.t.Helper()
	select {
	case ev, ok := <-c.events:
		if !ok {
			<-c.exited
			c.t.Fatalf("%s client ended (%v) while an event was awaited", c.name, c.err)
		}
		if ev.Event == "!unparsed" {
			c.t.Fatalf("%s client printed a line that is not JSON: %q", c.name, ev.Data)
		}
		return ev
	case <-time.After(10 * time.Second):
		c.t.Fatalf("%s client: no event within 10s", c.name)
	}
	panic("unreachable")
}

// want reads the next event, which must be event with data (and, if id is
// not empty, that id).
func (c *client) want(event, data, id string) clientEvent {
	c.t.Helper()
	ev := c.next()
	if ev.Event != event || ev.Data != data || (id != "" && ev.ID != id) {
		c.t.Fatalf("%s client: want event %q data %q id %q, got %+v", c.name, event, data, id, ev)
	}
	return ev
}

// wantResumed reads a reconnection: a ready event, then the events with
// data (each name "chat"), in order, with their ids. Nothing else may come
// between them: a lost event, or one delivered twice, fails the test.
func (c *client) wantResumed(data, ids []string) {
	c.t.Helper()
	if ev := c.next(); ev.Event != "ready" {
		c.t.Fatalf("%s client: want ready on the new stream, got %+v", c.name, ev)
	}
	for i, d := range data {
		c.want("chat", d, ids[i])
	}
}

// awaitLog waits until the client's stderr holds s n times.
func (c *client) awaitLog(s string, n int) {
	c.t.Helper()
	eventually(c.t, 15*time.Second, fmt.Sprintf("%s client to log %q %d times", c.name, s, n), func() bool {
		return strings.Count(c.stderr.String(), s) >= n
	})
}

// exit waits up to 10 s for the client to end and returns its exit code.
func (c *client) exit() int {
	c.t.Helper()
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		c.t.Fatalf("%s client still running 10s after it should have stopped", c.name)
	}
	var ee *exec.ExitError
	if errors.As(c.err, &ee) {
		return ee.ExitCode()
	}
	if c.err != nil {
		c.t.Fatalf("%s client: %v", c.name, c.err)
	}
	return 0
}

// kill ends the client with SIGKILL, as a phone's OS ends an app, and
// waits for it.
func (c *client) kill() {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}

// clientVars are the instance's settings for these tests: a short retry:
// hint (jittered to 150-450 ms when a stream ends; Retry-After is then
// 1 s), and one stream per user, so that a second stream is refused with
// 429 and Retry-After.
func clientVars(addr string) map[string]string {
	return map[string]string{"LISTEN_ADDR": addr, "RETRY_INTERVAL": "300ms", "MAX_STREAMS_PER_USER": "1"}
}

// TestClientNode runs examples/clients/node (npm's eventsource) against
// ssebridge: the bearer token through eventsource's fetch option; a 429
// with Retry-After retried with a new EventSource that resumes from the
// kept id; the instance stopped and started again while durable events are
// published, each of them delivered once, in order; logout ends the
// process (exit 0), and so does a refused token (exit 2, after one
// request).
func TestClientNode(t *testing.T) {
	t.Parallel()
	node := nodePath(t)
	dir := nodeClient(t)
	addr := freeAddr(t)
	vars := clientVars(addr)
	a := startApp(t, nil, vars)
	tok := a.session("alice")

	// A stream of alice's is open already: with MAX_STREAMS_PER_USER=1 the
	// client's first request is refused (429, Retry-After: 1).
	hold, readyID, err := openReady(context.Background(), a.url, bearer(tok))
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	env := map[string]string{"SSEBRIDGE_URL": a.url + "/events", "SSEBRIDGE_TOKEN": tok, "SSEBRIDGE_LAST_EVENT_ID": readyID}
	c := startClient(t, "node", node, env, filepath.Join(dir, "client.mjs"), "chat")
	c.awaitLog("refused (429)", 1)
	one := publishDurable(t, a.rdb, "user:alice", `{"event":"chat","data":"one"}`)
	hold.Close()
	// The new EventSource carries the kept id: "one", published while the
	// client was refused, is replayed.
	c.wantResumed([]string{"one"}, []string{one})
	two := publishDurable(t, a.rdb, "user:alice", `{"event":"chat","data":"two"}`)
	c.want("chat", "two", two)

	// The instance goes away: its SIGTERM ends the stream with a retry:
	// hint, and eventsource's reconnects are refused by the closed port
	// until it is back. Two losses logged = a reconnect tried and failed,
	// with nothing but eventsource's timer and the client's keep-alive
	// holding the process.
	a.stop()
	three := publishDurable(t, a.rdb, "user:alice", `{"event":"chat","data":"three"}`)
	four := publishDurable(t, a.rdb, "user:alice", `{"event":"chat","data":"four"}`)
	c.awaitLog("connection lost", 2)
	b := startApp(t, a.redis, vars)
	c.wantResumed([]string{"three", "four"}, []string{three, four})
	five := publishDurable(t, b.rdb, "user:alice", `{"event":"chat","data":"five"}`)
	c.want("chat", "five", five)

	// The backend logs alice out: the client closes and its process ends.
	b.publish("control", `{"op":"logout","user":"alice"}`)
	c.want("logout", "{}", "")
	if code := c.exit(); code != 0 {
		t.Fatalf("after logout the client exited %d, want 0", code)
	}

	// A token with no session: 401, final.
	before := b.metric(`ssebridge_handshakes_refused_total{reason="unknown_session"}`)
	bad := startClient(t, "node", node, map[string]string{"SSEBRIDGE_URL": b.url + "/events", "SSEBRIDGE_TOKEN": "no-such-session"}, filepath.Join(dir, "client.mjs"))
	if code := bad.exit(); code != 2 {
		t.Fatalf("refused with 401, the client exited %d, want 2", code)
	}
	if n := b.metric(`ssebridge_handshakes_refused_total{reason="unknown_session"}`) - before; n != 1 {
		t.Fatalf("the refused client made %v requests, want 1", n)
	}
	if strings.Contains(c.stderr.String()+bad.stderr.String(), tok) {
		t.Fatal("a client logged the token")
	}
}

// eventsourceCheck is TestClientNodeEventSource's script: an EventSource
// with no keep-alive beside it, closed at its third error.
const eventsourceCheck = `import {EventSource} from 'eventsource'
let errors = 0
const es = new EventSource(process.argv[2])
es.addEventListener('error', () => {
  errors++
  console.log(JSON.stringify({event: 'error', data: String(errors)}))
  if (errors === 3) es.close()
})
`

// TestClientNodeEventSource records two facts of the pinned eventsource
// (3.0.7) that docs/CLIENTS.md states, so that a change of version that
// changes them fails here first. A server answers each request with a
// short stream that ends (retry: 100), so eventsource reconnects every
// 100 ms; a script with no keep-alive of its own closes at its third
// error.
//
//   - The reconnect timer keeps the process alive: the script gets to its
//     third error. (eventsource 5 unrefs it, and the same script exits
//     after the first, with status 0: hence the client's keep-alive.)
//   - A bare id (an "id:" line in a block with no data: what ssebridge's
//     mark on broadcast is) does not move the id eventsource sends back:
//     the third request carries the first stream's id, not the second's.
//     (eventsource 5 sends the bare id.)
func TestClientNodeEventSource(t *testing.T) {
	t.Parallel()
	node := nodePath(t)
	dir := nodeClient(t)
	var mu sync.Mutex
	var lastIDs []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		lastIDs = append(lastIDs, r.Header.Get("Last-Event-ID"))
		n := len(lastIDs)
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		if n == 1 {
			io.WriteString(w, "retry: 100\nid: E:1-0\ndata: x\n\n")
		} else {
			io.WriteString(w, "id: E:2-0\n\n")
		}
	}))
	defer srv.Close()
	c := startClient(t, "node", node, nil, filepath.Join(dir, "eventsource-check.mjs"), srv.URL+"/")
	for i := 1; i <= 3; i++ {
		c.want("error", strconv.Itoa(i), "")
	}
	if code := c.exit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"", "E:1-0", "E:1-0"}; fmt.Sprint(lastIDs) != fmt.Sprint(want) {
		t.Fatalf("Last-Event-ID of each request: %q, want %q", lastIDs, want)
	}
}

// TestClientPython runs examples/clients/python/ssebridge_client.py: a
// 429 waited out after its Retry-After; the instance stopped and started
// again, resumed with no event lost or doubled; the process killed
// (SIGKILL, as a phone's OS ends an app) and started again, resuming from
// the id it kept in its state file, durable events published meanwhile
// delivered once; logout ends it (exit 0); a 401 ends it after one
// request (exit 2).
func TestClientPython(t *testing.T) {
	t.Parallel()
	py := pythonPath(t)
	script := filepath.Join(repoRoot, "examples", "clients", "python", "ssebridge_client.py")
	addr := freeAddr(t)
	vars := clientVars(addr)
	a := startApp(t, nil, vars)
	tok := a.session("bob")
	state := filepath.Join(t.TempDir(), "last-id")
	run := func(token string) *client {
		return startClient(t, "python", py, map[string]string{"SSEBRIDGE_TOKEN": token}, "-u", script, "--state", state, "--idle-timeout", "20", "http://"+addr+"/events")
	}
	savedID := func(id string) {
		t.Helper()
		eventually(t, 5*time.Second, "the state file to hold "+id, func() bool {
			b, _ := os.ReadFile(state)
			return string(b) == id
		})
	}

	// Refused first (another stream of bob's is open): 429, Retry-After: 1.
	hold := a.open(tok, "")
	c := run(tok)
	c.awaitLog("refused with 429", 1)
	hold.Close()
	ready := c.next()
	if ready.Event != "ready" || ready.ID == "" {
		t.Fatalf("want ready with an id, got %+v", ready)
	}
	if !strings.Contains(c.stderr.String(), "retrying in 1.") {
		t.Fatalf("the 429's Retry-After (1 s) was not waited:\n%s", c.stderr.String())
	}
	savedID(ready.ID)
	one := publishDurable(t, a.rdb, "user:bob", `{"event":"chat","data":"one"}`)
	c.want("chat", "one", one)

	// The instance goes away and comes back on the same address.
	a.stop()
	two := publishDurable(t, a.rdb, "user:bob", `{"event":"chat","data":"two"}`)
	c.awaitLog("connection failed", 1) // a reconnect tried while it was away
	b := startApp(t, a.redis, vars)
	c.wantResumed([]string{"two"}, []string{two})
	savedID(two)

	// The process is killed; events are published while it is not running.
	c.kill()
	three := publishDurable(t, b.rdb, "user:bob", `{"event":"chat","data":"three"}`)
	four := publishDurable(t, b.rdb, "user:bob", `{"event":"chat","data":"four"}`)
	c = run(tok)
	c.wantResumed([]string{"three", "four"}, []string{three, four})
	five := publishDurable(t, b.rdb, "user:bob", `{"event":"chat","data":"five"}`)
	c.want("chat", "five", five)
	savedID(five)

	// Logout: the backend deletes the session and ends the streams.
	if err := b.rdb.Del(context.Background(), "session:"+tok).Err(); err != nil {
		t.Fatal(err)
	}
	b.publish("control", `{"op":"logout","user":"bob"}`)
	c.want("logout", "{}", "")
	if code := c.exit(); code != 0 {
		t.Fatalf("after logout the client exited %d, want 0", code)
	}

	// Started again, with the session gone: 401, one request, exit 2.
	before := b.metric(`ssebridge_handshakes_refused_total{reason="unknown_session"}`)
	c = run(tok)
	if code := c.exit(); code != 2 {
		t.Fatalf("refused with 401, the client exited %d, want 2", code)
	}
	if n := b.metric(`ssebridge_handshakes_refused_total{reason="unknown_session"}`) - before; n != 1 {
		t.Fatalf("the refused client made %v requests, want 1", n)
	}
	if !strings.Contains(c.stderr.String(), "refused with 401") {
		t.Fatalf("the client did not say why it stopped:\n%s", c.stderr.String())
	}
	if strings.Contains(c.stderr.String(), tok) {
		t.Fatal("the client logged the token")
	}
}

// TestClientPythonParsing feeds the Python client a stream written the
// ways the event stream format allows and ssebridge does not use (CR and
// CR LF line ends, a comment, a bare id) from a server of the test's own:
// each event is read whole, the bare id moves the position (written to
// the state file and sent back as Last-Event-ID), and the 401 that
// answers the resume ends the client after that one request.
func TestClientPythonParsing(t *testing.T) {
	t.Parallel()
	py := pythonPath(t)
	script := filepath.Join(repoRoot, "examples", "clients", "python", "ssebridge_client.py")
	var mu sync.Mutex
	var lastIDs []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		lastIDs = append(lastIDs, r.Header.Get("Last-Event-ID"))
		n := len(lastIDs)
		mu.Unlock()
		if n > 1 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"unknown or expired session"}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "retry: 100\nid: E:1-0\ndata: a\r\n\r\nevent: chat\rid: E:2-0\rdata: b\rdata: c\r\r: ping\n\nid: E:3-0\n\n")
	}))
	defer srv.Close()
	state := filepath.Join(t.TempDir(), "last-id")
	c := startClient(t, "python", py, map[string]string{"SSEBRIDGE_TOKEN": "t0ken"}, "-u", script, "--state", state, srv.URL+"/events")
	c.want("message", "a", "E:1-0")
	c.want("chat", "b\nc", "E:2-0")
	if code := c.exit(); code != 2 {
		t.Fatalf("refused with 401, the client exited %d, want 2", code)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"", "E:3-0"}; fmt.Sprint(lastIDs) != fmt.Sprint(want) {
		t.Fatalf("Last-Event-ID of each request: %q, want %q", lastIDs, want)
	}
	if b, _ := os.ReadFile(state); string(b) != "E:3-0" {
		t.Fatalf("the state file holds %q, want the bare id E:3-0", b)
	}
}
