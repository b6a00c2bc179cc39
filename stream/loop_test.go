//go:build linux

package stream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ssebridge/ssebridge/wire"
)

// The event-loop writer, on real loopback TCP connections: the server end
// of each goes to the stream's writer (Hub.startWriter) as after a take-over
// (Hub.Serve); the test reads (or does not read) the client end.

var loopWrite = WriteOptions{Heartbeat: time.Hour, WriteTimeout: 10 * time.Second}

// client is the browser's end of a stream taken over.
type client struct {
	net.Conn
	r *bufio.Reader
}

// readUntil reads until what was read ends with s.
func (c client) readUntil(t *testing.T, s string) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	for !strings.HasSuffix(b.String(), s) {
		r, err := c.r.ReadByte()
		if err != nil {
			t.Fatalf("read %q, then %v; want %q", b.String(), err, s)
		}
		b.WriteByte(r)
	}
	return b.String()
}

// readToEOF reads what is left until the server closes.
func (c client) readToEOF(t *testing.T) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c.r)
	if err != nil {
		t.Fatalf("read %q, then %v; want EOF", b, err)
	}
	return string(b)
}

// startN opens n streams of users u0… and starts their writers on the
// server ends.
// tune, if set, adjusts each pair of ends before the hand-over.
func startN(t *testing.T, h *Hub, n int, opts WriteOptions, tune func(server, client *net.TCPConn)) []client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	clients := make([]client, n)
	for i := range clients {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		srv, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if tune != nil {
			tune(srv.(*net.TCPConn), c.(*net.TCPConn))
		}
		s, err := h.Open(context.Background(), Spec{User: fmt.Sprint("u", i), Session: fmt.Sprint("t", i)})
		if err != nil {
			t.Fatal(err)
		}
		h.startWriter(s, srv, opts)
		clients[i] = client{c, bufio.NewReader(c)}
	}
	return clients
}

// eventually waits until cond holds, polling: what it waits for (a
// stream reaching its loop, its end being counted) sends no signal of
// its own.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func onLoops(h *Hub) int { return int(testutil.ToFloat64(h.metrics.OnLoops)) }

func closed(h *Hub, reason string) int {
	return int(testutil.ToFloat64(h.metrics.Closed.WithLabelValues(reason)))
}

// TestLoopIdleStreamsOwnNoGoroutine: N live streams on the loops add a
// handful of goroutines (the loops), not N; they get a broadcast, and a
// client that goes away is noticed without a goroutine reading.
func TestLoopIdleStreamsOwnNoGoroutine(t *testing.T) {
	const n = 500
	opts := testOpts
	opts.MaxStreams, opts.MaxStreamsPerUser = n, n
	h, _ := newTestHub(t, opts)
	before := runtime.NumGoroutine()
	clients := startN(t, h, n, loopWrite, nil)
	for _, c := range clients {
		c.readUntil(t, "event: ready\n")
	}
	eventually(t, "every stream on a loop", func() bool { return onLoops(h) == n })
	// The openings' goroutines are ending; none is left per stream.
	eventually(t, "goroutines back near the start", func() bool { return runtime.NumGoroutine()-before <= n/50 })

	h.Publish(wire.BroadcastChannel, live(`{"event":"hi","data":"all"}`), nil)
	for _, c := range clients {
		c.readUntil(t, "event: hi\ndata: all\n\n")
	}
	if got := testutil.ToFloat64(h.metrics.Delivered); got != n {
		t.Fatalf("delivered %v, want %d", got, n)
	}

	for _, c := range clients {
		c.Close()
	}
	if err := h.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := closed(h, ReasonClient); got != n {
		t.Fatalf("%d streams counted as closed by the client, want %d", got, n)
	}
	if got := onLoops(h); got != 0 {
		t.Fatalf("%d streams still on loops", got)
	}
}

// TestLoopUploadEndsStream: a byte from the client ends its stream at once.
func TestLoopUploadEndsStream(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	c := startN(t, h, 1, loopWrite, nil)[0]
	c.readUntil(t, "event: ready\n")
	eventually(t, "stream on a loop", func() bool { return onLoops(h) == 1 })
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	c.readToEOF(t)
	if err := h.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := closed(h, ReasonUpload); got != 1 {
		t.Fatalf("upload closes: %d", got)
	}
}

// smallBuffers keeps the kernel from absorbing much of what a client does
// not read, so that its socket fills soon.
func smallBuffers(server, client *net.TCPConn) {
	_ = server.SetWriteBuffer(4096)
	_ = client.SetReadBuffer(4096)
}

// fill publishes large events to u0 until its stream has ended.
func fill(h *Hub, s *Stream) {
	body := fmt.Sprintf(`{"event":"big","data":%q}`, strings.Repeat("x", 16<<10))
	for s.ended() == "" {
		h.Publish(wire.UserChannel("u0"), live(body), nil)
	}
}

func oneStream(h *Hub) *Stream {
	for _, s := range h.all() {
		return s
	}
	return nil
}

// TestLoopSlowReader: a client that stops reading fills its socket, then
// its queue; it is ended as slow (STREAM_QUEUE), and its connection closed
// at the write deadline, since the final frame cannot go out.
func TestLoopSlowReader(t *testing.T) {
	opts := testOpts
	opts.MaxEventBytes = 64 << 10
	h, _ := newTestHub(t, opts)
	c := startN(t, h, 1, WriteOptions{Heartbeat: time.Hour, WriteTimeout: 200 * time.Millisecond}, smallBuffers)[0]
	c.readUntil(t, "event: ready\n")
	eventually(t, "stream on a loop", func() bool { return onLoops(h) == 1 })
	fill(h, oneStream(h))
	if err := h.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := closed(h, ReasonSlow); got != 1 {
		t.Fatalf("slow closes: %d", got)
	}
	// The connection was closed under the client, with data unread.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("after the end: %v", err)
	}
}

// TestLoopWriteDeadline: a socket that stays full for WRITE_TIMEOUT ends
// its stream, though its queue never overflows.
func TestLoopWriteDeadline(t *testing.T) {
	opts := testOpts
	opts.MaxEventBytes, opts.QueueEvents, opts.QueueBytes = 64<<10, 1<<20, 1<<30
	h, _ := newTestHub(t, opts)
	c := startN(t, h, 1, WriteOptions{Heartbeat: time.Hour, WriteTimeout: 200 * time.Millisecond}, smallBuffers)[0]
	c.readUntil(t, "event: ready\n")
	eventually(t, "stream on a loop", func() bool { return onLoops(h) == 1 })
	body := fmt.Sprintf(`{"event":"big","data":%q}`, strings.Repeat("x", 16<<10))
	for range 64 { // 1 MiB: far more than both sockets hold
		h.Publish(wire.UserChannel("u0"), live(body), nil)
	}
	if err := h.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, slow := closed(h, ReasonWrite), closed(h, ReasonSlow); got != 1 || slow != 0 {
		t.Fatalf("write closes %d, slow %d; want 1, 0", got, slow)
	}
}

// TestLoopHeartbeat: an idle stream on a loop gets heartbeats.
func TestLoopHeartbeat(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	c := startN(t, h, 1, WriteOptions{Heartbeat: 50 * time.Millisecond, WriteTimeout: time.Second}, nil)[0]
	c.readUntil(t, "event: ready\n")
	c.readUntil(t, string(wire.Heartbeat))
	c.readUntil(t, string(wire.Heartbeat))
}

// TestLoopShutdown: Shutdown gives every stream on the loops its final
// frame after what was queued; one whose client does not read is cut at
// the deadline (Wait), and the loops stop.
func TestLoopShutdown(t *testing.T) {
	const n = 50
	opts := testOpts
	opts.MaxEventBytes = 64 << 10
	h, _ := newTestHub(t, opts)
	clients := startN(t, h, n, loopWrite, smallBuffers)
	for _, c := range clients {
		c.readUntil(t, "event: ready\n")
	}
	eventually(t, "every stream on a loop", func() bool { return onLoops(h) == n })
	// u0 stops reading and its socket fills (a little of its queue too).
	body := fmt.Sprintf(`{"event":"big","data":%q}`, strings.Repeat("x", 16<<10))
	for range 4 {
		h.Publish(wire.UserChannel("u0"), live(body), nil)
	}
	h.Publish(wire.BroadcastChannel, live(`{"event":"last","data":1}`), nil)
	h.Shutdown()
	for _, c := range clients[1:] {
		rest := c.readToEOF(t)
		if !strings.Contains(rest, "event: last\n") || !strings.HasPrefix(rest[strings.Index(rest, "event: last\n"):], "event: last\ndata: 1\n\nretry: ") {
			t.Fatalf("after shutdown: %q, want the queued event then retry:", rest)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := h.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with u0's socket full: %v", err)
	}
	clients[0].readToEOF(t) // cut
	if err := h.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := closed(h, ReasonShutdown); got != n {
		t.Fatalf("shutdown closes %d, want %d", got, n)
	}
}

// TestLoopJoin: a join moves a live stream off its loop for the catch-up
// and back; events of the joined room then reach it.
func TestLoopJoin(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	c := startN(t, h, 1, loopWrite, nil)[0]
	c.readUntil(t, "event: ready\n")
	eventually(t, "stream on a loop", func() bool { return onLoops(h) == 1 })
	h.control(wire.Control{Op: wire.OpJoin, User: "u0", Room: "r1"})
	h.Publish(wire.RoomChannel("r1"), live(`{"event":"room","data":1}`), nil)
	c.readUntil(t, "event: room\ndata: 1\n\n")
	eventually(t, "stream back on a loop", func() bool { return onLoops(h) == 1 })
	h.Publish(wire.RoomChannel("r1"), live(`{"event":"room","data":2}`), nil)
	c.readUntil(t, "event: room\ndata: 2\n\n")
}

// TestLoopConcurrentPublishers: streams on the loops, with small socket
// buffers (so that writes often find them full), get every event of four
// concurrent publishers: no wake-up of a loop is lost.
func TestLoopConcurrentPublishers(t *testing.T) {
	const n, publishers, each = 40, 4, 1000
	opts := testOpts
	opts.MaxStreams, opts.MaxStreamsPerUser, opts.QueueEvents = n, n, 1<<16
	h, _ := newTestHub(t, opts)
	clients := startN(t, h, n, loopWrite, smallBuffers)
	for _, c := range clients {
		c.readUntil(t, "event: ready\n")
	}
	eventually(t, "on loops", func() bool { return onLoops(h) == n })
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range each {
				h.Publish(wire.BroadcastChannel, live(fmt.Sprintf(`{"event":"n","data":"%d-%d"}`, p, i)), nil)
			}
		})
	}
	var rg sync.WaitGroup
	for i, c := range clients {
		rg.Go(func() {
			got := 0
			for got < publishers*each {
				// A deadline per read, not for the whole: under the race
				// detector on a busy machine 4,000 events to each of 40
				// clients can take longer than one wait.
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				line, err := c.r.ReadString('\n')
				if err != nil {
					t.Errorf("client %d: %d events, then %v", i, got, err)
					return
				}
				if strings.HasPrefix(line, "event: n") {
					got++
				}
			}
		})
	}
	wg.Wait()
	rg.Wait()
}

// TestLoopHandBackBeforeJoinReturns: a stream handed to a loop with a
// join's catch-up pending is handed back and over again (as another
// loopConn) before the first hand-over's join has returned; the stream
// must be on the loop by the second, and get its events. (Issue 17, item
// 5: the first join stored its dead loopConn over the live one after the
// second, and the stream got heartbeats but no event until it ended.)
func TestLoopHandBackBeforeJoinReturns(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	s, err := h.Open(context.Background(), Spec{User: "u0", Session: "t0"})
	if err != nil {
		t.Fatal(err)
	}
	if why := h.opening(context.Background(), s, &frames{}); why != "" {
		t.Fatalf("opening: %s", why)
	}
	// A join before the hand-over: the loop's first look at the stream
	// finds a catch-up to run, and hands it back.
	h.control(wire.Control{Op: wire.OpJoin, User: "u0", Room: "r1"})

	var (
		mu             sync.Mutex
		first, second  *loopConn
		secondDone     = make(chan struct{})
		firstDone      = make(chan struct{})
		releaseTimeout = time.After(10 * time.Second)
	)
	hook := func(c *loopConn, step handOverStep) {
		mu.Lock()
		if first == nil {
			first = c
		} else if c != first && second == nil {
			second = c
		}
		isFirst := c == first
		mu.Unlock()
		switch {
		case isFirst && step == handOverPublished:
			// Hold the first hand-over here, c published to its loop,
			// until the stream is back on a loop by the second. The loop
			// looks at once, as a busy one would (another stream's
			// event), not at its next tick.
			c.loop.poke()
			select {
			case <-secondDone:
			case <-releaseTimeout:
				t.Error("the stream was not handed over again within 10s")
			}
		case isFirst && step == handOverDone:
			close(firstDone)
		case step == handOverDone:
			close(secondDone)
		}
	}
	for _, l := range h.loops.all {
		l.handOver = hook
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := detach(srv)
	if err != nil {
		t.Fatal(err)
	}
	go h.loops.pick().join(s, fd, loopWrite)
	select {
	case <-firstDone:
	case <-time.After(20 * time.Second):
		t.Fatal("the first hand-over did not return within 20s")
	}

	mu.Lock()
	second0 := second
	mu.Unlock()
	if got := s.onLoop.Load(); got != second0 {
		t.Fatalf("the stream's place on a loop is %p (the first, dead, hand-over's: %v), want the second's %p", got, got == first, second0)
	}
	h.Publish(wire.RoomChannel("r1"), live(`{"event":"room","data":1}`), nil)
	client{cc, bufio.NewReader(cc)}.readUntil(t, "event: room\ndata: 1\n\n")
}
