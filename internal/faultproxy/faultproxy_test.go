package faultproxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// upstream is a loopback listener that hands each accepted connection to
// the test, so that a test holds both ends of a proxied connection.
type upstream struct {
	addr  string
	conns chan net.Conn
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{addr: ln.Addr().String(), conns: make(chan net.Conn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		close(u.conns)
		for c := range u.conns {
			c.Close()
		}
	})
	return u
}

// dial connects through p and returns the client's end and the upstream's.
func dial(t *testing.T, p *Proxy, u *upstream) (client, server net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	select {
	case s := <-u.conns:
		t.Cleanup(func() { s.Close() })
		// A byte through proves the pumps run, so the proxy has the
		// connection on its books (ResetAll sees it), unless stalled.
		if !p.stalledUp() {
			write(t, c, []byte{0})
			readN(t, s, 1, 5*time.Second)
		}
		return c, s
	case <-time.After(5 * time.Second):
		t.Fatal("the proxy did not connect upstream within 5s")
	}
	return nil, nil
}

// readN reads exactly n bytes within d.
func readN(t *testing.T, c net.Conn, n int, d time.Duration) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

// nothingFor checks that no byte arrives on c for d. A stall is the
// absence of an event, so it can only be observed over a window; d is
// short and the claim it supports ("nothing flowed") does not depend on
// the machine's speed.
func nothingFor(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, 1)
	n, err := c.Read(b)
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want nothing for %v, got %d bytes, %v", d, n, err)
	}
}

func write(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

func TestRefusesNonLoopbackUpstream(t *testing.T) {
	for _, addr := range []string{"10.0.0.1:6379", "192.168.1.1:6379", "example.com:6379", "0.0.0.0:6379", "localhost", ""} {
		if p, err := New(addr); err == nil {
			p.Close()
			t.Errorf("New(%q): no error, want a refusal", addr)
		}
	}
	p, err := New("127.0.0.2:6379")
	if err != nil {
		t.Fatalf("New(127.0.0.2:6379), a loopback address: %v", err)
	}
	p.Close()
	if host, _, _ := net.SplitHostPort(p.Addr()); host != "127.0.0.1" {
		t.Errorf("listens on %s, want 127.0.0.1", p.Addr())
	}
}

func TestForwardsBothWays(t *testing.T) {
	u := startUpstream(t)
	p := Start(t, u.addr)
	c, s := dial(t, p, u)
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	go func() { _, _ = c.Write(big) }()
	if got := readN(t, s, len(big), 10*time.Second); !bytes.Equal(got, big) {
		t.Fatal("client→upstream: bytes differ")
	}
	go func() { _, _ = s.Write(big) }()
	if got := readN(t, c, len(big), 10*time.Second); !bytes.Equal(got, big) {
		t.Fatal("upstream→client: bytes differ")
	}
	// An orderly end passes through as an end.
	_ = c.(*net.TCPConn).CloseWrite()
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := s.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the client's FIN: %d, %v; want EOF", n, err)
	}
	st := p.Stats()
	if st.Accepted != 1 || st.BytesUp != 1<<20+1 || st.BytesDown != 1<<20 {
		t.Errorf("stats %+v", st)
	}
}

func TestStallHoldsBytesWithoutClosing(t *testing.T) {
	u := startUpstream(t)
	p := Start(t, u.addr)
	c, s := dial(t, p, u)

	p.Stall(Down)
	write(t, c, []byte("up"))
	if got := readN(t, s, 2, 5*time.Second); string(got) != "up" {
		t.Fatalf("Up flows while only Down is stalled: got %q", got)
	}
	write(t, s, []byte("down"))
	nothingFor(t, c, 300*time.Millisecond)

	p.Stall(Both)
	write(t, c, []byte("held"))
	nothingFor(t, s, 300*time.Millisecond)
	// A new connection is taken, and nothing flows on it either.
	c2, s2 := dial(t, p, u)
	write(t, c2, []byte("new"))
	nothingFor(t, s2, 300*time.Millisecond)

	p.Resume(Both)
	if got := readN(t, c, 4, 5*time.Second); string(got) != "down" {
		t.Fatalf("after Resume: %q, want the bytes that waited", got)
	}
	if got := readN(t, s, 4, 5*time.Second); string(got) != "held" {
		t.Fatalf("after Resume: %q", got)
	}
	if got := readN(t, s2, 3, 5*time.Second); string(got) != "new" {
		t.Fatalf("after Resume, new connection: %q", got)
	}
	if st := p.Stats(); st.Open != 2 || st.Resets != 0 {
		t.Errorf("a stall must close nothing: %+v", st)
	}
}

func TestLatencyKeepsOrder(t *testing.T) {
	u := startUpstream(t)
	p := Start(t, u.addr)
	c, s := dial(t, p, u)
	const delay = 200 * time.Millisecond
	p.Latency(Down, delay)
	began := time.Now()
	var want bytes.Buffer
	for i := range 100 {
		b := []byte{byte(i)}
		want.Write(b)
		write(t, s, b)
	}
	first := readN(t, c, 1, 5*time.Second)
	if took := time.Since(began); took < delay {
		t.Errorf("first byte after %v, want at least the latency %v", took, delay)
	}
	rest := readN(t, c, 99, 5*time.Second)
	if got := append(first, rest...); !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("order lost: %v", got)
	}
	// Up has no latency set: a round trip there is not held for it.
	// Lifting it lets waiting chunks go at once.
	p.Latency(Down, time.Hour)
	write(t, s, []byte("x"))
	nothingFor(t, c, 100*time.Millisecond)
	p.Latency(Down, 0)
	if got := readN(t, c, 1, 5*time.Second); string(got) != "x" {
		t.Fatalf("after lifting latency: %q", got)
	}
}

func TestBandwidth(t *testing.T) {
	u := startUpstream(t)
	p := Start(t, u.addr)
	c, s := dial(t, p, u)
	const bps, size = 50_000, 100_000
	p.Bandwidth(Down, bps)
	go func() { _, _ = s.Write(make([]byte, size)) }()
	began := time.Now()
	readN(t, c, size, 20*time.Second)
	// 100 KB at 50 KB/s is 2 s; the first piece goes after 50 ms, so at
	// least 1.9 s. The upper bound only guards against a stuck pump.
	if took := time.Since(began); took < 1900*time.Millisecond {
		t.Errorf("100 KB at 50 KB/s took %v, want at least 1.9s", took)
	}
	p.Bandwidth(Down, 0)
	go func() { _, _ = s.Write(make([]byte, size)) }()
	readN(t, c, size, 5*time.Second) // unlimited again
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func TestResetAll(t *testing.T) {
	u := startUpstream(t)
	p := Start(t, u.addr)
	c, s := dial(t, p, u)
	p.ResetAll()
	for name, conn := range map[string]net.Conn{"client": c, "upstream": s} {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); !isReset(err) {
			t.Errorf("%s end: %v, want a reset", name, err)
		}
	}
	if st := p.Stats(); st.Resets != 1 {
		t.Errorf("resets %d, want 1", st.Resets)
	}
	// The proxy still takes new connections.
	c2, s2 := dial(t, p, u)
	write(t, c2, []byte("ok"))
	readN(t, s2, 2, 5*time.Second)
}

func TestResetEveryAndClose(t *testing.T) {
	u := startUpstream(t)
	before := runtime.NumGoroutine()
	p, err := New(u.addr)
	if err != nil {
		t.Fatal(err)
	}
	p.ResetEvery(50 * time.Millisecond)
	for i := range 3 { // each new connection is reset in turn
		c, _ := dial(t, p, u)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Fatalf("connection %d: %v, want a reset within 5s", i, err)
		}
	}
	c, s := dial(t, p, u)
	p.Close()
	p.Close() // idempotent
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("open connection after Close: %v, want it ended", err)
	}
	s.Close()
	if _, err := net.Dial("tcp", p.Addr()); err == nil {
		t.Error("the proxy still accepts after Close")
	}
	// Close waited for every goroutine of the proxy, the ResetEvery loop
	// included.
	if after := runtime.NumGoroutine(); after > before {
		buf := make([]byte, 1<<16)
		t.Errorf("goroutines: %d before, %d after Close\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

func TestUpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := Start(t, addr)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		return // reset before the dial returned: ended, as wanted
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("with nothing upstream: %v, want the connection ended", err)
	}
}

func (p *Proxy) stalledUp() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.links[Up].stalled
}
