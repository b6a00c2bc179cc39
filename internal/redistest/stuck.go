package redistest

import (
	"net"
	"sync"
	"testing"
)

// Stuck is a loopback listener that takes connections and reads what they
// send, but never answers: a Redis that hangs with its TCP connections
// open. Held receives once when the first bytes (a command) arrive; Stop
// closes everything, which clients see as a lost connection. Stop also
// runs when the test ends.
type Stuck struct {
	Addr string
	Held chan struct{}
	Stop func()
}

// StartStuck listens on a free loopback port until Stop or the test's end.
func StartStuck(t testing.TB) *Stuck {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Stuck{Addr: l.Addr().String(), Held: make(chan struct{}, 1)}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					select {
					case s.Held <- struct{}{}:
					default:
					}
				}
			})
		}
	})
	s.Stop = sync.OnceFunc(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	t.Cleanup(s.Stop)
	return s
}
