package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// TestRedisLogThroughSlog: go-redis's own lines (here: dial errors, eight
// at once from the pool) come out as ssebridge's structured lines, a burst
// of one kind as one line.
func TestRedisLogThroughSlog(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close() // nothing listens there now: every dial is refused

	cmd := exec.Command(binary)
	cmd.Env = []string{"REDIS_URL=redis://" + closed, "LISTEN_ADDR=127.0.0.1:0", "LOG_LEVEL=info"}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var all []string
	timeout := time.After(10 * time.Second)
	// Up to go-redis's first dial error, then on to the end after SIGTERM.
	for seen := false; ; {
		select {
		case line, ok := <-lines:
			if !ok {
				goto done
			}
			all = append(all, line)
			if !seen && strings.Contains(line, "failed to dial") {
				seen = true
				if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			}
		case <-timeout:
			t.Fatalf("no dial error logged within 10s:\n%s", strings.Join(all, "\n"))
		}
	}
done:
	dial := 0
	for _, line := range all {
		if !strings.HasPrefix(line, "time=") {
			t.Errorf("an unstructured line: %q", line)
		}
		if strings.Contains(line, "failed to dial") {
			dial++
			if !strings.Contains(line, "level=WARN") || !strings.Contains(line, "source=go-redis") || !strings.Contains(line, closed) {
				t.Errorf("go-redis line %q: want level=WARN, source=go-redis and the address", line)
			}
		}
	}
	if dial != 1 {
		t.Errorf("%d dial-error lines, want 1 (a burst of one kind is one line a minute):\n%s", dial, strings.Join(all, "\n"))
	}
}

// TestHTTPLogLimited: net/http's own complaints, which any client causes
// (here: plain HTTP to the TLS port, a failed TLS handshake each), come out
// structured, at debug, one line a minute per kind with the count held
// back, however many connections.
func TestHTTPLogLimited(t *testing.T) {
	r := redistest.Start(t)
	cert, key, _ := selfSignedCert(t, t.TempDir())
	p := startBinary(t, map[string]string{"REDIS_URL": r.URL(), "TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "LOG_LEVEL": "debug"})
	const n = 100
	for range n {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", p.addr)
		_, _ = io.Copy(io.Discard, c) // net/http answers 400 and closes
		c.Close()
	}
	if err := p.stop(); err != nil { // its log is complete once it has exited
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(line, "TLS handshake error") {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "level=DEBUG") || !strings.Contains(lines[0], "source=net/http") {
		t.Fatalf("%d failed TLS handshakes logged %d lines, want 1 at debug from net/http:\n%s", n, len(lines), strings.Join(lines, "\n"))
	}
}

// TestHubLogLimited: lines that a publisher relaying users' text, or a
// client that never reads, cause once per message or stream come out once
// a minute per kind, with the count held back: 50 oversized payloads, and
// three streams ended as slow.
func TestHubLogLimited(t *testing.T) {
	a := startApp(t, nil, map[string]string{"STREAM_QUEUE": "4", "WRITE_TIMEOUT": "1s"})
	addr := strings.TrimPrefix(a.url, "http://")
	for i := range 3 { // they never read again
		c := rawStream(t, addr, a.session(fmt.Sprintf("slow%d", i), "lobby"))
		defer c.Close()
	}
	const n = 50
	big := `{"data":"` + strings.Repeat("x", 70_000) + `"}` // over MAX_EVENT_BYTES (64 KiB)
	for range n {
		a.publish("room:lobby", big)
	}
	eventually(t, 10*time.Second, "every oversized payload to be dropped", func() bool {
		return a.metric(`ssebridge_events_dropped_total{reason="too_large"}`) == n
	})
	// Events just under the limit fill the slow streams' sockets, then
	// their queues, in batches of 20.
	ok := `{"data":"` + strings.Repeat("y", 60_000) + `"}`
	// Slow, or late if the flood itself put the feed behind (a loaded
	// machine): either way queue full, logged once a minute per kind.
	ended := func() float64 {
		return a.metric(`ssebridge_streams_closed_total{reason="slow"}`) + a.metric(`ssebridge_streams_closed_total{reason="late"}`)
	}
	for i := 0; ended() < 3; i++ {
		if i == 100 {
			t.Fatal("2,000 events of 60 KB and the slow streams are not all ended")
		}
		pipe := a.rdb.Pipeline()
		for range 20 {
			pipe.Publish(context.Background(), a.cfg.ChannelPrefix+"room:lobby", ok)
		}
		if _, err := pipe.Exec(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	a.stop() // its log is complete once it has exited
	count := func(kind string) (lines []string) {
		for _, line := range strings.Split(a.proc.stderr.String(), "\n") {
			if strings.Contains(line, kind) {
				lines = append(lines, line)
			}
		}
		return lines
	}
	if lines := count("published message refused"); len(lines) != 1 {
		t.Errorf("%d lines of a refused message, want 1 a minute:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	slow, late := count(`msg="stream closed: queue full"`), count("stream closed: queue full of a burst")
	if len(slow) > 1 || len(late) > 1 || len(slow)+len(late) == 0 {
		t.Errorf("%d lines of a slow stream and %d of a late one, want at most 1 a minute each, and one at least:\n%s",
			len(slow), len(late), strings.Join(append(slow, late...), "\n"))
	}
}
