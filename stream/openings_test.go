package stream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// gatedServer serves handler on a loopback listener under o, as serve.go
// does (the requests opens says open a stream hold their slot), and
// returns its address.
func gatedServer(t *testing.T, o *Openings, opens func(*http.Request) bool, handler http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: o.Handler(opens, handler), ConnState: o.ConnState, ConnContext: o.ConnContext, ReadHeaderTimeout: 10 * time.Second}
	gated := o.Listener(ln)
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(gated) }()
	t.Cleanup(func() { srv.Close(); <-served })
	return ln.Addr().String()
}

// everyRequest opens a stream, for gatedServer: each holds its slot while
// its handler runs.
func everyRequest(*http.Request) bool { return true }

// get sends a GET on a new connection and returns the status line.
func get(addr string) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

// awaitValue waits until f returns want.
func awaitValue(t *testing.T, what string, f func() int64, want int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); f() != want; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s is %d, not %d, after 10s", what, f(), want)
		}
	}
}

// TestOpeningsBoundRequests: with a budget of 2, two requests are served
// while three more connections wait, accepted; each served request lets
// one more in, and all five are served.
func TestOpeningsBoundRequests(t *testing.T) {
	o := NewOpenings(2, prometheus.NewRegistry())
	var in, most atomic.Int64
	release := make(chan struct{})
	addr := gatedServer(t, o, everyRequest, func(w http.ResponseWriter, r *http.Request) {
		n := in.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		<-release
		in.Add(-1)
	})
	var clients sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		clients.Go(func() {
			status, err := get(addr)
			if err == nil && !strings.Contains(status, " 200 ") {
				err = errors.New(status)
			}
			errs <- err
		})
	}
	awaitValue(t, "requests in the handler", in.Load, 2)
	awaitValue(t, "connections waiting", o.waiting.Load, 3)
	if n := in.Load(); n != 2 {
		t.Fatalf("%d requests in the handler with 3 waiting, budget 2", n)
	}
	close(release)
	clients.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if m := most.Load(); m != 2 {
		t.Errorf("at most %d requests at once, budget 2", m)
	}
	awaitValue(t, "slots held", func() int64 { return int64(len(o.slots)) }, 0)
}

// TestOpeningsSilentConnection: a connection that sends nothing gives its
// slot back after headerGrace, so the only slot is not held by it.
func TestOpeningsSilentConnection(t *testing.T) {
	o := NewOpenings(1, nil)
	addr := gatedServer(t, o, everyRequest, func(w http.ResponseWriter, r *http.Request) {})
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	awaitValue(t, "slots held", func() int64 { return int64(len(o.slots)) }, 1)
	status, err := get(addr)
	if err != nil || !strings.Contains(status, " 200 ") {
		t.Fatalf("a request behind a silent connection: %q, %v", status, err)
	}
}

// TestOpeningsClaim: a stream claims its connection's slot; one whose
// connection gave its slot back waits for a slot of its own, and is
// refused with ErrOpeningsBusy when none comes free in time.
func TestOpeningsClaim(t *testing.T) {
	o := NewOpenings(1, nil)
	o.slots <- struct{}{} // what the listener does before admit
	client, server := net.Pipe()
	defer client.Close()
	conn := o.admit(server).(*admittedConn)
	ctx := o.ConnContext(context.Background(), conn)

	first, err := o.claim(ctx)
	if err != nil || first != conn.slot {
		t.Fatalf("first claim: %v, %v; want the connection's slot", first, err)
	}
	o.ConnState(conn, http.StateIdle) // claimed: the stream's, not given back
	if len(o.slots) != 1 {
		t.Fatal("an idle connection gave back the slot its stream claimed")
	}

	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := o.claim(short); !errors.Is(err, ErrOpeningsBusy) {
		t.Fatalf("a second stream with every slot held: %v, want ErrOpeningsBusy", err)
	}

	first.free(slotClaimed)
	first.free(slotClaimed) // once only
	if len(o.slots) != 0 {
		t.Fatalf("%d slots held after the opening", len(o.slots))
	}
	own, err := o.claim(ctx)
	if err != nil || own == nil || own == conn.slot || len(o.slots) != 1 {
		t.Fatalf("a stream on a connection whose slot went back: %v, %v, %d held", own, err, len(o.slots))
	}
	own.free(slotClaimed)
	if nothing, err := (*Openings)(nil).claim(ctx); nothing != nil || err != nil {
		t.Fatal("no budget claimed something")
	}
}

// TestOpenGivesSlotBack: Hub.Open claims a slot, the stream's opening or
// its close gives it back, and Open past a full budget is refused.
func TestOpenGivesSlotBack(t *testing.T) {
	opts := testOpts
	opts.Openings = NewOpenings(1, nil)
	h, _ := newTestHub(t, opts)
	o := opts.Openings
	o.slots <- struct{}{}
	client, server := net.Pipe()
	defer client.Close()
	ctx := o.ConnContext(context.Background(), o.admit(server))

	s, err := h.Open(ctx, Spec{User: "alice", Session: "a"})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := h.Open(short, Spec{User: "bob", Session: "b"}); !errors.Is(err, ErrOpeningsBusy) {
		t.Fatalf("Open with the budget held: %v, want ErrOpeningsBusy", err)
	}
	h.Close(s, "")
	if len(o.slots) != 0 {
		t.Fatal("a stream closed before its opening kept its slot")
	}
}

// TestOpeningsStalledBody: a request that opens no stream gives its slot
// back before its handler runs, and one that does when its handler
// returns: requests whose body never comes (net/http reads it to discard
// it after a refusal, with no deadline) do not hold the budget. (Found by
// review: two such requests held a budget of two for good.)
func TestOpeningsStalledBody(t *testing.T) {
	o := NewOpenings(2, nil)
	opens := func(r *http.Request) bool { return r.URL.Path == "/events" }
	addr := gatedServer(t, o, opens, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			http.Error(w, "refused", http.StatusUnauthorized) // its body unread
		}
	})
	for _, path := range []string{"/publish", "/events"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The head complete, 10 bytes of body promised, none sent.
		if _, err := io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	status, err := get(addr)
	if err != nil || !strings.Contains(status, " 200 ") {
		t.Fatalf("a GET behind 2 stalled request bodies (budget 2): %q, %v; slots held %d", status, err, len(o.slots))
	}
}

// TestOpeningHoldBound: a stream whose opening goes on past the hold bound
// (a slow reader's long replay) gives its slot back all the same.
func TestOpeningHoldBound(t *testing.T) {
	o := NewOpenings(1, nil)
	o.hold = 10 * time.Millisecond
	o.slots <- struct{}{}
	client, server := net.Pipe()
	defer client.Close()
	ctx := o.ConnContext(context.Background(), o.admit(server))
	if _, err := o.claim(ctx); err != nil {
		t.Fatal(err)
	}
	awaitValue(t, "slots held", func() int64 { return int64(len(o.slots)) }, 0)
}
