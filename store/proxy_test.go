package store_test

import (
	"net"
	"sync"
	"testing"
	"time"
)

// linkProxy is a loopback TCP proxy to a Redis for the feed's fault tests
// (a minimal one: internal/faultproxy is another branch's). Stall stops
// forwarding in both directions without closing anything, as a link that
// drops every packet does: connections stay open, nothing arrives, and new
// ones are accepted but get no answer. Heal lets connections made from
// then on through; those that were open during the stall stay silent, as
// TCP connections do after a long partition, whose next retransmission
// may be many seconds away (exponential backoff): a client must make new
// ones. Limit caps each direction's rate (bytes per second, 0: none).
// Everything is closed when the test ends.
type linkProxy struct {
	Addr string
	// Accepted gets a value (if it has room) for every connection
	// accepted: a client dialling through the proxy.
	Accepted chan struct{}

	mu      sync.Mutex
	cond    *sync.Cond
	stalled bool // new connections start stalled
	rate    int  // bytes per second per direction; 0: unlimited
	closed  bool
	links   []*link
	wg      sync.WaitGroup
}

// link is one proxied connection.
type link struct {
	client, server net.Conn
	stalled        bool // guarded by linkProxy.mu
}

func startProxy(t testing.TB, upstream string) *linkProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{Addr: l.Addr().String(), Accepted: make(chan struct{}, 1)}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			k := &link{client: c, server: u}
			if !p.track(k) {
				return
			}
			select {
			case p.Accepted <- struct{}{}:
			default:
			}
			p.wg.Go(func() { p.pump(k, u, c) })
			p.wg.Go(func() { p.pump(k, c, u) })
		}
	})
	t.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		p.closed = true
		for _, k := range p.links {
			k.client.Close()
			k.server.Close()
		}
		p.cond.Broadcast()
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *linkProxy) track(k *link) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		k.client.Close()
		k.server.Close()
		return false
	}
	k.stalled = p.stalled
	p.links = append(p.links, k)
	return true
}

// pump copies src to dst, a chunk at a time, each chunk held while the
// link is stalled and paced to the rate.
func (p *linkProxy) pump(k *link, dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		p.mu.Lock()
		rate := p.rate
		p.mu.Unlock()
		chunk := buf
		if rate > 0 {
			// A tenth of a second's worth at most per chunk, so the pace
			// is even.
			chunk = buf[:max(1, min(len(buf), rate/10))]
		}
		n, err := src.Read(chunk)
		if n > 0 {
			p.mu.Lock()
			for k.stalled && !p.closed {
				p.cond.Wait()
			}
			closed := p.closed
			p.mu.Unlock()
			if closed {
				return
			}
			if _, werr := dst.Write(chunk[:n]); werr != nil {
				return
			}
			if rate > 0 {
				// Pacing a simulated link, not waiting for an event.
				time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
			}
		}
		if err != nil {
			return
		}
	}
}

// Stall stalls every connection, and the ones accepted until Heal.
func (p *linkProxy) Stall() {
	select {
	case <-p.Accepted: // from before: Accepted now tells of those during the stall
	default:
	}
	p.mu.Lock()
	p.stalled = true
	for _, k := range p.links {
		k.stalled = true
	}
	p.mu.Unlock()
}

// Heal lets new connections through, at full rate. The stalled ones
// stay so.
func (p *linkProxy) Heal() {
	p.mu.Lock()
	p.stalled = false
	p.rate = 0
	p.mu.Unlock()
}

func (p *linkProxy) Limit(bytesPerSecond int) {
	p.mu.Lock()
	p.rate = bytesPerSecond
	p.mu.Unlock()
}
