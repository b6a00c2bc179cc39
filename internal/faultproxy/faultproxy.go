// Package faultproxy is a TCP proxy for tests that puts faults between a
// program and its upstream (Redis): a link that stalls without a reset,
// latency, a bandwidth cut, and resets, once or again and again. Faults can
// be set and lifted at any time, per direction where it matters.
//
// Why not Toxiproxy: its Go module is a whole server (an HTTP API, a CLI,
// many dependencies) driven over HTTP. What the tests need is a few hundred
// lines we can read in one sitting, whose goroutines all have an owner that
// stops them, and whose every wait is bounded by Close.
//
// Only loopback is allowed, both ways: the proxy listens on 127.0.0.1:0 and
// refuses an upstream that is not a loopback IP address.
package faultproxy

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Direction is which way bytes flow: Up is client→upstream, Down is
// upstream→client (replies, pub/sub messages).
type Direction int

const (
	Up   Direction = 1 << iota // client → upstream
	Down                       // upstream → client
	Both = Up | Down
)

// chunkSize is the most one read takes off a socket; queueLen is how many
// chunks may wait in one direction of one connection (latency in flight).
// Together they bound what the proxy itself buffers: 1 MiB per direction
// per connection, so back pressure reaches the sender as on a real link.
const (
	chunkSize = 16 << 10
	queueLen  = 64
)

// link is the fault state of one direction, shared by all connections.
type link struct {
	stalled bool
	latency time.Duration
	bps     int       // 0: unlimited
	next    time.Time // bandwidth: when the link is free again
}

// Proxy forwards connections on Addr to the upstream, through the faults
// set at the moment.
type Proxy struct {
	upstream string
	ln       net.Listener

	mu      sync.Mutex
	links   map[Direction]*link
	changed chan struct{} // closed and replaced on every change of a fault
	conns   map[*pair]struct{}
	stopRE  chan struct{} // stops the running ResetEvery loop; nil if none

	closed    chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup // every goroutine the proxy started

	accepted  atomic.Int64
	resets    atomic.Int64
	forwarded [2]atomic.Int64 // bytes written, by direction index
}

// pair is one proxied connection.
type pair struct {
	client, upstream *net.TCPConn
	done             chan struct{}
	once             sync.Once
}

// New listens on 127.0.0.1:0 in front of upstream, which must be a
// loopback IP address with a port. Close stops it.
func New(upstream string) (*Proxy, error) {
	host, _, err := net.SplitHostPort(upstream)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: upstream %q: %v", upstream, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("faultproxy: upstream %q: only a loopback IP address is allowed", upstream)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		upstream: upstream, ln: ln,
		links:   map[Direction]*link{Up: {}, Down: {}},
		changed: make(chan struct{}),
		conns:   map[*pair]struct{}{},
		closed:  make(chan struct{}),
	}
	p.wg.Go(p.accept)
	return p, nil
}

// Start is New for a test: it fails the test on an error and closes the
// proxy when the test ends.
func Start(tb testing.TB, upstream string) *Proxy {
	tb.Helper()
	p, err := New(upstream)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	return p
}

// Addr is where clients connect (127.0.0.1:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Stats are counters for tests: connections accepted, open now, reset by
// ResetAll, and bytes delivered each way.
type Stats struct {
	Accepted, Open, Resets int64
	BytesUp, BytesDown     int64
}

// Stats reads the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	open := int64(len(p.conns))
	p.mu.Unlock()
	return Stats{Accepted: p.accepted.Load(), Open: open, Resets: p.resets.Load(),
		BytesUp: p.forwarded[0].Load(), BytesDown: p.forwarded[1].Load()}
}

// set changes the fault state of the directions in d and wakes every
// waiting pump so that it sees the change at once.
func (p *Proxy) set(d Direction, f func(*link)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, dir := range []Direction{Up, Down} {
		if d&dir != 0 {
			f(p.links[dir])
		}
	}
	close(p.changed)
	p.changed = make(chan struct{})
}

// Stall stops forwarding in d without closing anything: bytes wait (in the
// proxy, then in the senders' socket buffers), as on a link that freezes.
// New connections are still accepted, and nothing flows on them either.
func (p *Proxy) Stall(d Direction) { p.set(d, func(l *link) { l.stalled = true }) }

// Resume lifts Stall in d; what waited flows, in order.
func (p *Proxy) Resume(d Direction) { p.set(d, func(l *link) { l.stalled = false }) }

// Latency delays each chunk in d by delay from when it was read, order
// kept; 0 lifts it (chunks waiting go at once).
func (p *Proxy) Latency(d Direction, delay time.Duration) {
	p.set(d, func(l *link) { l.latency = delay })
}

// Bandwidth limits d to bytesPerSecond, all connections together, as one
// link would; 0 lifts it.
func (p *Proxy) Bandwidth(d Direction, bytesPerSecond int) {
	p.set(d, func(l *link) { l.bps = bytesPerSecond; l.next = time.Time{} })
}

// ResetAll ends every open connection with a RST on both sides
// (SO_LINGER 0), as a middlebox that drops its state would.
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	all := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		all = append(all, c)
	}
	p.mu.Unlock()
	for _, c := range all {
		c.reset()
		p.resets.Add(1)
	}
}

// ResetEvery calls ResetAll every interval, from a goroutine the proxy
// owns, until ResetEvery(0) or Close. A new call replaces the old loop.
func (p *Proxy) ResetEvery(interval time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopRE != nil {
		close(p.stopRE)
		p.stopRE = nil
	}
	if interval <= 0 {
		return
	}
	select {
	case <-p.closed:
		return
	default:
	}
	stop := make(chan struct{})
	p.stopRE = stop
	p.wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-p.closed:
				return
			case <-tick.C:
				p.ResetAll()
			}
		}
	})
}

// Close stops the listener, the ResetEvery loop and every connection, and
// waits for every goroutine of the proxy. Calling it again does nothing.
func (p *Proxy) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		close(p.closed)
		p.mu.Unlock()
		p.ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.accepted.Add(1)
		// The dial is bounded by Close, like every wait of the proxy.
		d := net.Dialer{Timeout: 5 * time.Second}
		u, err := d.Dial("tcp", p.upstream)
		if err != nil {
			// Nothing listens upstream: the client sees its connection
			// refused the only way a proxy can tell it, a reset.
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
			continue
		}
		pr := &pair{client: c.(*net.TCPConn), upstream: u.(*net.TCPConn), done: make(chan struct{})}
		p.mu.Lock()
		select {
		case <-p.closed:
			p.mu.Unlock()
			pr.close()
			return
		default:
		}
		p.conns[pr] = struct{}{}
		p.mu.Unlock()
		var both sync.WaitGroup
		both.Add(2)
		p.wg.Go(func() { defer both.Done(); p.pump(pr, Up, pr.client, pr.upstream) })
		p.wg.Go(func() { defer both.Done(); p.pump(pr, Down, pr.upstream, pr.client) })
		p.wg.Go(func() {
			both.Wait()
			pr.close()
			p.mu.Lock()
			delete(p.conns, pr)
			p.mu.Unlock()
		})
	}
}

type chunk struct {
	b  []byte
	at time.Time // when it was read: latency counts from here
}

// pump forwards one direction of one connection: a reader that stamps
// chunks and a writer that delivers them through the faults, so that
// latency delays each chunk without limiting how many are in flight.
func (p *Proxy) pump(pr *pair, dir Direction, from, to *net.TCPConn) {
	q := make(chan chunk, queueLen)
	var rd sync.WaitGroup
	rd.Go(func() {
		defer close(q)
		for {
			// A stalled link takes nothing off the socket either: the
			// sender's buffers fill as they would.
			if !p.waitOpen(pr, dir) {
				return
			}
			buf := make([]byte, chunkSize)
			n, err := from.Read(buf)
			if n > 0 {
				select {
				case q <- chunk{buf[:n], time.Now()}:
				case <-pr.done:
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	defer rd.Wait()
	for c := range q {
		if !p.deliver(pr, dir, to, c) {
			pr.close() // unblocks the reader
			for range q {
			}
			return
		}
	}
	// The sender closed its side (or reset it): pass an orderly end on as
	// an end; a reset closes the pair, which is seen as one.
	select {
	case <-pr.done:
	default:
		_ = to.CloseWrite()
	}
}

// waitOpen waits until dir is not stalled; false once the pair is done.
func (p *Proxy) waitOpen(pr *pair, dir Direction) bool {
	for {
		p.mu.Lock()
		stalled, changed := p.links[dir].stalled, p.changed
		p.mu.Unlock()
		if !stalled {
			return true
		}
		select {
		case <-changed:
		case <-pr.done:
			return false
		}
	}
}

// deliver writes c to `to` once its latency has passed, while the link is
// not stalled, at the link's bandwidth; false if the pair ended.
func (p *Proxy) deliver(pr *pair, dir Direction, to *net.TCPConn, c chunk) bool {
	idx := 0
	if dir == Down {
		idx = 1
	}
	b := c.b
	for len(b) > 0 {
		p.mu.Lock()
		l, changed := p.links[dir], p.changed
		if due, stalled := c.at.Add(l.latency), l.stalled; stalled || time.Now().Before(due) {
			p.mu.Unlock()
			var until time.Time // stalled: until a change
			if !stalled {
				until = due
			}
			if !p.sleep(pr, until, changed) {
				return false
			}
			continue // look again: the faults may have changed meanwhile
		}
		piece, until := len(b), time.Time{}
		if l.bps > 0 {
			// At most 50 ms worth at once, so a slow link trickles rather
			// than bursts; the piece reserves the link (all connections
			// share it) for as long as it takes to send.
			piece = min(piece, max(l.bps/20, 1))
			if now := time.Now(); l.next.Before(now) {
				l.next = now
			}
			l.next = l.next.Add(time.Duration(piece) * time.Second / time.Duration(l.bps))
			until = l.next
		}
		p.mu.Unlock()
		// The piece is sent once the link would have carried it; a lifted
		// limit (a change) sends it at once.
		if !until.IsZero() && !p.sleep(pr, until, changed) {
			return false
		}
		n, err := to.Write(b[:piece])
		p.forwarded[idx].Add(int64(n))
		if err != nil {
			return false
		}
		b = b[piece:]
	}
	return true
}

// sleep waits until t (forever if zero), a change of the faults (if
// changed is set) or the pair's end; false on the end.
func (p *Proxy) sleep(pr *pair, t time.Time, changed <-chan struct{}) bool {
	var timer <-chan time.Time
	if !t.IsZero() {
		tm := time.NewTimer(time.Until(t))
		defer tm.Stop()
		timer = tm.C
	}
	select {
	case <-timer:
	case <-changed:
	case <-pr.done:
		return false
	}
	return true
}

// reset closes both sides with a RST.
func (pr *pair) reset() {
	_ = pr.client.SetLinger(0)
	_ = pr.upstream.SetLinger(0)
	pr.close()
}

// close ends the pair once: both sockets closed, its pumps told.
func (pr *pair) close() {
	pr.once.Do(func() {
		close(pr.done)
		pr.client.Close()
		pr.upstream.Close()
	})
}
