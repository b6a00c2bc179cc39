package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
)

// binary is the path of ssebridge built once for the tests that run it as a
// separate process (signals, and the scale test's memory figure).
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ssebridge-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "ssebridge")
	// Built without -race: the scale test reports the real process's memory.
	// The race detector covers the same code in the in-process tests.
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building ssebridge: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

var listenRE = regexp.MustCompile(`msg="ssebridge listening" addr=(\S+)`)

// startBinary runs the ssebridge binary with vars and waits until it listens.
func startBinary(t *testing.T, vars map[string]string) *proc {
	t.Helper()
	cmd := exec.Command(binary)
	cmd.Env = append(os.Environ(), "LISTEN_ADDR=127.0.0.1:0", "LOG_LEVEL=info")
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := listenRE.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
			if testing.Verbose() {
				fmt.Fprintln(os.Stderr, "ssebridge:", sc.Text())
			}
		}
		p.done <- cmd.Wait()
	}()
	select {
	case p.addr = <-addr:
	case err := <-p.done:
		t.Fatal("ssebridge exited before listening:", err)
	case <-time.After(10 * time.Second):
		t.Fatal("ssebridge did not listen within 10s")
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

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
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
		p.done <- nil // for the cleanup
	case <-time.After(timeout + 2*time.Second):
		t.Fatalf("still running %v after SIGTERM (SHUTDOWN_TIMEOUT %v)", time.Since(start), timeout)
	}
}

func readAll(r *bufio.Reader) (string, error) {
	b, err := io.ReadAll(r)
	return string(b), err
}

func TestScale5000Streams(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the 5,000-stream test")
	}
	const n = 5000
	r := redistest.Start(t)
	p := startBinary(t, map[string]string{"REDIS_URL": r.URL()})
	rdb := r.Client()
	ctx := context.Background()

	// Sessions for n distinct users, pipelined.
	_, err := rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i := range n {
			pl.Set(ctx, fmt.Sprintf("session:s%d", i), fmt.Sprintf(`{"user":"u%d","rooms":["r%d"]}`, i, i%10), time.Hour)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 32 {
		wg.Go(func() {
			for i := range next {
				conns[i] = rawStream(t, p.addr, fmt.Sprintf("s%d", i))
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()

	clients, err := rdb.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	ours := strings.Count(clients, "name=ssebridge ")
	channels := len(rdb.PubSubChannels(ctx, "sse:*").Val())
	rss := rssKiB(t, p.cmd.Process.Pid)
	t.Logf("%d streams: %d Redis connections, %d Redis channels, RSS %d MiB (%.1f KiB per stream)",
		n, ours, channels, rss/1024, float64(rss)/n)
	// The pub/sub connection and REDIS_POOL_SIZE (8) others, and one more
	// that go-redis may dial while it fills the pool at start: a constant.
	if ours < 1 || ours > 10 {
		t.Errorf("%d Redis connections for %d streams; want a handful", ours, n)
	}
	if want := n + 10 + 2; channels != want { // users, rooms, broadcast, control
		t.Errorf("%d Redis channels subscribed, want %d", channels, want)
	}

	// The last stream of a channel leaving unsubscribes it in Redis.
	conns[0].Close()
	eventually(t, 10*time.Second, "u0's channel to be unsubscribed", func() bool {
		return rdb.PubSubNumSub(ctx, "sse:user:u0").Val()["sse:user:u0"] == 0
	})
	if rdb.PubSubNumSub(ctx, "sse:room:r0").Val()["sse:room:r0"] != 1 {
		t.Error("room r0 lost its subscription while 499 streams still need it")
	}
}

func rssKiB(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no VmRSS")
	}
	kb, _ := strconv.Atoi(string(m[1]))
	return kb
}
