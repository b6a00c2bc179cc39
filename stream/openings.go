package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrOpeningsBusy is Hub.Open's answer when no opening slot came free
// within the request's time for Redis (OPEN_CONCURRENCY).
var ErrOpeningsBusy = errors.New("too many streams opening at once")

// headerGrace is how long a new connection may take to send its request
// head while it holds an opening slot. A browser sends it with the
// connection's first packet; one that trickles it in goes on being read
// (up to net/http's ReadHeaderTimeout), outside the budget, so that a few
// hundred such connections cannot hold every slot.
const headerGrace = time.Second

// openingHold is the longest a stream keeps its slot. An opening takes
// milliseconds, or seconds under a storm; one that takes longer (a resume
// that replays megabytes to a client reading slowly) goes on outside the
// budget, so that a few hundred such clients cannot hold every slot.
// Its replay is bounded by REPLAY_INFLIGHT_BYTES all the same.
const openingHold = 5 * time.Second

// Openings bounds the streams being opened at once, and what net/http
// spends on their connections before that. A mass reconnect (a deploy, a
// network cut) would otherwise hold, for every returning stream at the same
// time, a goroutine, net/http's buffers, a session read, a place in the
// pub/sub connection's queue and a replay: 10,000 streams coming back within
// a second took the RSS from 52 to 349 MiB, and a 2-core machine spent so
// long collecting it that Redis's answers timed out.
//
// A new connection is accepted at once (the kernel's backlog is not where
// it waits: past it, clients wait for a SYN retry) but handed to net/http
// only once one of the budget's slots is free. Its slot comes back when a
// stream it carries has been opened (live, or refused), when the
// connection goes idle or closes, or after headerGrace without a request
// head. A stream on a connection whose slot went back (HTTP/2's next
// stream, a keep-alive connection's next request) takes a slot of its
// own in Hub.Open.
type Openings struct {
	slots   chan struct{}
	waiting atomic.Int64  // connections accepted, not yet handed to net/http
	hold    time.Duration // openingHold; shorter in tests
}

// NewOpenings makes a budget of n openings at once and registers its
// metrics; n <= 0 is no budget (nil).
func NewOpenings(n int, reg prometheus.Registerer) *Openings {
	if n <= 0 {
		return nil
	}
	o := &Openings{slots: make(chan struct{}, n), hold: openingHold}
	inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ssebridge_openings_in_flight",
		Help: "Connections and streams holding an opening slot now (OPEN_CONCURRENCY).",
	}, func() float64 { return float64(len(o.slots)) })
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ssebridge_openings_waiting",
		Help: "New connections accepted and waiting for an opening slot (OPEN_CONCURRENCY).",
	}, func() float64 { return float64(o.waiting.Load()) })
	if reg != nil {
		reg.MustRegister(inFlight, queued)
	}
	return o
}

// A slot is one opening's place in the budget. It is held by a new
// connection until a stream on it claims it (Hub.Open), then by that
// stream until its opening is over; it goes back once, whichever of its
// holders lets go first.
type slot struct {
	o     *Openings
	state atomic.Int32 // slotHeld, slotClaimed, slotFree
	grace *time.Timer  // a connection's headerGrace; nil for a stream's own slot
}

const (
	slotHeld    = iota // by a connection
	slotClaimed        // by a stream being opened
	slotFree           // given back
)

// free gives the slot back if it is in state from. (A grace timer still
// running then finds it free, and does nothing.)
func (s *slot) free(from int32) {
	if s != nil && s.state.CompareAndSwap(from, slotFree) {
		<-s.o.slots
	}
}

// Listener returns ln with its connections handed on within the budget.
// Closing it closes ln and the connections still waiting.
func (o *Openings) Listener(ln net.Listener) net.Listener {
	l := &gatedListener{Listener: ln, o: o, more: make(chan struct{}, 1), closed: make(chan struct{})}
	l.accepting.Go(l.acceptAll)
	return l
}

// gatedListener accepts every connection at once, and hands them to its
// caller (net/http's Serve) one slot at a time.
type gatedListener struct {
	net.Listener
	o         *Openings
	accepting sync.WaitGroup // acceptAll

	mu      sync.Mutex
	waiting []net.Conn // accepted, in order of arrival
	err     error      // the listener's own error, once it has one
	more    chan struct{}

	closeOnce sync.Once
	closed    chan struct{}
}

// acceptAll accepts until the listener fails; a temporary failure (out of
// file descriptors) is waited out, as net/http's Serve would.
func (l *gatedListener) acceptAll() {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if ne, ok := err.(net.Error); ok && ne.Timeout() || isTemporary(err) {
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
				continue
			case <-l.closed:
				return
			}
		}
		backoff = 0
		l.mu.Lock()
		if err != nil {
			l.err = err
		} else {
			l.waiting = append(l.waiting, c)
			l.o.waiting.Add(1)
		}
		l.mu.Unlock()
		select {
		case l.more <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// isTemporary reports an accept error worth waiting out (EMFILE, ENFILE,
// ECONNABORTED), which net.Error's deprecated Temporary still tells.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Accept waits for a connection, then for a slot, and returns the
// connection holding the slot. (In that order: an Accept waiting for the
// next connection holds no slot.)
func (l *gatedListener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		n, err := len(l.waiting), l.err
		l.mu.Unlock()
		if n == 0 && err != nil {
			return nil, err
		}
		if n == 0 {
			select {
			case <-l.more:
				continue
			case <-l.closed:
				return nil, net.ErrClosed
			}
		}
		select {
		case l.o.slots <- struct{}{}:
		case <-l.closed:
			return nil, net.ErrClosed
		}
		if c := l.next(); c != nil {
			return l.o.admit(c), nil
		}
		<-l.o.slots // Close took it meanwhile
	}
}

// next takes the oldest waiting connection, if any.
func (l *gatedListener) next() net.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.waiting) == 0 {
		return nil
	}
	c := l.waiting[0]
	l.waiting[0] = nil
	l.waiting = l.waiting[1:]
	l.o.waiting.Add(-1)
	return c
}

// Close closes the listener and the connections still waiting.
func (l *gatedListener) Close() error {
	err := net.ErrClosed
	l.closeOnce.Do(func() {
		close(l.closed)
		err = l.Listener.Close()
		l.accepting.Wait()
		l.mu.Lock()
		for _, c := range l.waiting {
			c.Close()
		}
		l.o.waiting.Add(-int64(len(l.waiting)))
		l.waiting = nil
		l.mu.Unlock()
	})
	return err
}

// admit wraps c with a slot already taken, given back after headerGrace
// unless a request head has come by then.
func (o *Openings) admit(c net.Conn) net.Conn {
	s := &slot{o: o}
	s.grace = time.AfterFunc(headerGrace, func() { s.free(slotHeld) })
	return &admittedConn{Conn: c, slot: s}
}

// admittedConn is a connection handed on with a slot. The hub takes its
// socket over (NetConn) once a stream is open on it.
type admittedConn struct {
	net.Conn
	slot *slot
}

// NetConn returns the connection under the slot's wrapper.
func (c *admittedConn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the connection, as net/http does before it
// closes one whose request it refused unread.
func (c *admittedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close closes the connection and gives its slot back.
func (c *admittedConn) Close() error {
	c.slot.free(slotHeld)
	return c.Conn.Close()
}

// slotOf returns the slot of c (an admittedConn, possibly under TLS), or
// nil.
func slotOf(c net.Conn) *slot {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	if a, ok := c.(*admittedConn); ok {
		return a.slot
	}
	return nil
}

type slotKey struct{}

// ConnContext is for http.Server.ConnContext: it puts the connection's
// slot in its requests' context, where Hub.Open claims it.
func (o *Openings) ConnContext(ctx context.Context, c net.Conn) context.Context {
	if s := slotOf(c); s != nil {
		return context.WithValue(ctx, slotKey{}, s)
	}
	return ctx
}

// Handler returns next with the slot of each request's connection held
// only by requests that open a stream (opens), and only until Hub.Open
// claims it or the handler returns: any other request (a health check, a
// publish whose body is slow to come, a refusal whose body net/http then
// reads to discard it) gives it back before it runs, so that no request
// left waiting on its client holds the budget.
func (o *Openings) Handler(opens func(*http.Request) bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, _ := r.Context().Value(slotKey{}).(*slot)
		if s != nil {
			defer s.free(slotHeld)
			if !opens(r) {
				s.free(slotHeld)
			}
		}
		next.ServeHTTP(w, r)
	})
}

// ConnState is for http.Server.ConnState: a request head read stops the
// connection's headerGrace; an idle or closed connection gives its slot
// back.
func (o *Openings) ConnState(c net.Conn, state http.ConnState) {
	s := slotOf(c)
	if s == nil {
		return
	}
	switch state {
	case http.StateActive:
		s.grace.Stop()
	case http.StateIdle, http.StateClosed:
		s.free(slotHeld)
	}
}

// claim returns the slot an opening stream holds: its connection's, if
// that connection still holds one, or a slot of its own, waited for
// until ctx ends (ErrOpeningsBusy). A nil budget, or a ctx from no
// admitted connection (a test's), claims nothing (nil).
func (o *Openings) claim(ctx context.Context) (*slot, error) {
	conn, _ := ctx.Value(slotKey{}).(*slot)
	if o == nil || conn == nil {
		return nil, nil
	}
	if conn.state.CompareAndSwap(slotHeld, slotClaimed) {
		conn.grace.Stop()
		return o.held(conn), nil
	}
	select {
	case o.slots <- struct{}{}:
		s := &slot{o: o}
		s.state.Store(slotClaimed)
		return o.held(s), nil
	case <-ctx.Done():
		return nil, ErrOpeningsBusy
	}
}

// held gives s, claimed by a stream, back after o.hold at the latest.
func (o *Openings) held(s *slot) *slot {
	time.AfterFunc(o.hold, func() { s.free(slotClaimed) })
	return s
}
