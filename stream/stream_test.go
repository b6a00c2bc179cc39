package stream

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// TestStreamSize: the record every idle stream holds stays in the 256-byte
// size class (see Stream); what only some streams need is made on demand.
func TestStreamSize(t *testing.T) {
	if n := unsafe.Sizeof(Stream{}); n > 256 {
		t.Fatalf("Stream is %d bytes, over the 256-byte size class", n)
	}
}

// TestEndedBeforeWriter: a stream ended before its writer goroutine began
// (its wake-up channel is made by the writer) still writes its final frame
// and ends.
func TestEndedBeforeWriter(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	s, err := h.Open(context.Background(), Spec{User: "u", Session: "k"})
	if err != nil {
		t.Fatal(err)
	}
	s.finish(ReasonLogout, logoutFrame)
	rec := httptest.NewRecorder()
	if why := s.serveResponse(context.Background(), rec, WriteOptions{Heartbeat: time.Hour, WriteTimeout: time.Second}); why != ReasonLogout {
		t.Fatalf("ended as %q, want %q", why, ReasonLogout)
	}
	if !strings.Contains(rec.Body.String(), "event: logout") {
		t.Fatalf("body %q has no logout", rec.Body.String())
	}
	h.Close(s, ReasonLogout)
}

// TestDoneChan: the channel made on demand is closed once the stream ends,
// whether it was asked for before or after.
func TestDoneChan(t *testing.T) {
	h, _ := newTestHub(t, testOpts)
	closed := func(c <-chan struct{}) bool {
		select {
		case <-c:
			return true
		default:
			return false
		}
	}
	before := newStream(h, "u", "k")
	c := before.doneChan()
	if closed(c) {
		t.Fatal("closed while the stream is open")
	}
	before.end(ReasonClient, nil)
	if !closed(c) || !closed(before.doneChan()) {
		t.Fatal("not closed once the stream ended")
	}
	after := newStream(h, "u", "k")
	after.end(ReasonClient, nil)
	if !closed(after.doneChan()) {
		t.Fatal("asked for after the end: not closed")
	}
}
