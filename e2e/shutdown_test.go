package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// TestSIGTERM: on SIGTERM every stream gets a retry hint and a clean end,
// and the process exits 0 within SHUTDOWN_TIMEOUT.
func TestSIGTERM(t *testing.T) {
	r := redistest.Start(t)
	const timeout = 3 * time.Second
	p := startBinary(t, map[string]string{"REDIS_URL": r.URL(), "SHUTDOWN_TIMEOUT": timeout.String(), "RETRY_INTERVAL": "2s"})
	rdb := r.Client()
	var conns []*bufio.Reader
	for i := range 3 {
		tok := fmt.Sprintf("t%d", i)
		rdb.Set(context.Background(), "session:"+tok, `{"user":"u`+strconv.Itoa(i)+`"}`, time.Hour)
		c := rawStream(t, p.addr, tok)
		defer c.Close()
		conns = append(conns, bufio.NewReader(c))
	}
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i, r := range conns {
		// Each stream gets a retry: hint (jittered around RETRY_INTERVAL), then its end.
		rest, err := readAll(r)
		m := regexp.MustCompile(`retry: (\d+)\n\n`).FindStringSubmatch(rest)
		if m == nil {
			t.Fatalf("stream %d: no retry: before the end, got %q", i, rest)
		}
		if ms, _ := strconv.Atoi(m[1]); ms < 1000 || ms > 3000 {
			t.Errorf("stream %d: retry %dms, want within [1000, 3000]", i, ms)
		}
		if err != nil || !strings.HasSuffix(rest, m[0]) { // the retry hint, then the connection's clean close
			t.Errorf("stream %d: not a clean end after the retry hint: %q, %v", i, rest, err)
		}
	}
	exited, err := p.wait(timeout + 2*time.Second)
	if !exited {
		t.Fatalf("still running %v after SIGTERM (SHUTDOWN_TIMEOUT %v)", time.Since(start), timeout)
	}
	if err != nil {
		t.Fatalf("exit: %v", err)
	}
}

func readAll(r *bufio.Reader) (string, error) {
	b, err := io.ReadAll(r)
	return string(b), err
}
