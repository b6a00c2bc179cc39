package stream

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ssebridge/ssebridge/wire"
)

// Hub.Serve, from the authorized request to the stream's end: the
// take-over of an HTTP/1.1 connection and its response head, a request
// with bytes after it, and the path through net/http's writer.

var takeOverWrite = WriteOptions{Heartbeat: time.Hour, WriteTimeout: 10 * time.Second}

// serveEvents starts an HTTP server whose every request opens a stream of
// alice's and hands it to h.Serve, as the events handler does.
func serveEvents(t *testing.T, h *Hub) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := h.Open(r.Context(), Spec{User: "alice", Session: "a"})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Access-Control-Allow-Origin", "https://app.example") // set by the handler: goes out in the head
		h.Serve(w, r, s, takeOverWrite)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// sendEvents connects to a server of h's streams (serveEvents), writes
// req in one write, and returns the connection, closed when the test ends.
func sendEvents(t *testing.T, h *Hub, req string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", serveEvents(t, h))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitStreams waits until a stream of h closed for reason and h has no
// stream left, and returns how many closed for reason. The close is
// awaited first: the test learns of the stream through its socket, which
// the race detector does not see, and Wait must not race the handler's
// Open (a WaitGroup's Add beside its Wait).
func waitStreams(t *testing.T, h *Hub, reason string) int {
	t.Helper()
	closed := func() int { return int(testutil.ToFloat64(h.metrics.Closed.WithLabelValues(reason))) }
	for deadline := time.Now().Add(10 * time.Second); closed() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no stream closed for %s within 10s", reason)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	return closed()
}

// TestServeTakesOverHTTP1: the head is ssebridge's own (no chunked
// framing, the connection closes with the stream), with the headers the
// handler set, and the body is the stream.
func TestServeTakesOverHTTP1(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	c := sendEvents(t, h, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no",
		"Access-Control-Allow-Origin": "https://app.example",
	} {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	if resp.Proto != "HTTP/1.1" || resp.StatusCode != http.StatusOK || !resp.Close || len(resp.TransferEncoding) > 0 {
		t.Errorf("%s %s, close %v, transfer encoding %v: want HTTP/1.1 200, closing, not chunked",
			resp.Proto, resp.Status, resp.Close, resp.TransferEncoding)
	}
	body := bufio.NewReader(resp.Body)
	for {
		line, err := body.ReadString('\n')
		if err != nil {
			t.Fatalf("before event: ready: %v", err)
		}
		if line == "event: ready\n" {
			break
		}
	}
	c.Close()
	if got := waitStreams(t, h, ReasonClient); got != 1 {
		t.Fatalf("client closes: %d, want 1", got)
	}
}

// TestServeBytesAfterRequest: a client that sends bytes after its request
// (no EventSource does) gets its connection closed, with nothing written,
// and its stream is counted as upload.
func TestServeBytesAfterRequest(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	// One write: the byte after the request is read with it, so net/http
	// holds it when the connection is taken over.
	c := sendEvents(t, h, "GET /events HTTP/1.1\r\nHost: x\r\n\r\nx")
	if b, err := io.ReadAll(c); len(b) > 0 || err != nil {
		t.Fatalf("read %q, then %v; want nothing, then EOF", b, err)
	}
	if got := waitStreams(t, h, ReasonUpload); got != 1 {
		t.Fatalf("upload closes: %d, want 1", got)
	}
}

// hijackSpy is a recorder that could be hijacked, and notes if it is.
type hijackSpy struct {
	*recorder
	hijacked bool
}

func (w *hijackSpy) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.hijacked = true
	return nil, nil, http.ErrNotSupported
}

// TestServeThroughResponseWriter: an HTTP/2 request is never taken over,
// and one whose writer cannot be (hijack fails) is not either: both are
// written through net/http's writer, the status and head by it, until the
// stream ends.
func TestServeThroughResponseWriter(t *testing.T) {
	for name, proto := range map[string]int{"HTTP/2": 2, "hijack fails": 1} {
		t.Run(name, func(t *testing.T) { serveThroughResponseWriter(t, proto) })
	}
}

func serveThroughResponseWriter(t *testing.T, proto int) {
	h, _ := newTestHub(t, testOpts)
	s, err := h.Open(context.Background(), Spec{User: "alice", Session: "a"})
	if err != nil {
		t.Fatal(err)
	}
	w := &hijackSpy{recorder: &recorder{ResponseRecorder: httptest.NewRecorder(), written: make(chan struct{}, 1)}}
	r := httptest.NewRequest(http.MethodGet, "/events", nil)
	r.ProtoMajor = proto
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.Serve(w, r, s, takeOverWrite)
	}()
	w.await(t, "event: ready")
	awaitLive(t, s)
	h.control(wire.Control{Op: wire.OpLogout, User: "alice"})
	<-done
	if got := waitStreams(t, h, ReasonLogout); got != 1 {
		t.Fatalf("logout closes: %d, want 1", got)
	}
	if w.hijacked != (proto == 1) {
		t.Errorf("hijack tried: %v", w.hijacked)
	}
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/event-stream" || w.Header().Get("Connection") != "" {
		t.Errorf("%d, head %v", w.Code, w.Header())
	}
	if body := w.body(); !strings.HasSuffix(body, "event: logout\ndata: {}\n\n") {
		t.Errorf("body %q", body)
	}
}
