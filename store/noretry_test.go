package store_test

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
)

// resetProxy forwards loopback TCP connections to a Redis, and resets the
// client's connection, once, in place of the reply to the first command
// that holds "evalsha": Redis has run the script, the client sees a
// reset, as with a link that drops between the two.
type resetProxy struct {
	l     net.Listener
	to    string
	armed atomic.Bool
	reset chan struct{} // closed when the reset is done
	wg    sync.WaitGroup
}

func startResetProxy(t *testing.T, to string) *resetProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &resetProxy{l: l, to: to, reset: make(chan struct{})}
	p.armed.Store(true)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		l.Close()
		p.wg.Wait()
	})
	return p
}

func (p *resetProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		r, err := net.Dial("tcp", p.to)
		if err != nil {
			c.Close()
			continue
		}
		var drop atomic.Bool // the reply on this connection is to be replaced by a reset
		p.wg.Add(2)
		go func() { // client -> Redis
			defer p.wg.Done()
			defer r.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if bytes.Contains(bytes.ToLower(buf[:n]), []byte("evalsha")) && p.armed.CompareAndSwap(true, false) {
						drop.Store(true) // before Redis can answer
					}
					if _, werr := r.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() { // Redis -> client
			defer p.wg.Done()
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := r.Read(buf)
				if n > 0 && drop.Load() {
					// Redis answered: the script ran. The client gets a
					// reset (said first: the client may see it at once).
					close(p.reset)
					_ = c.(*net.TCPConn).SetLinger(0)
					c.Close()
					r.Close()
					return
				}
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// TestPublishScriptIsNotRetried: the durable publish script runs, and the
// connection is reset before its reply arrives. go-redis retries a
// command (and a pipeline) that failed so (MaxRetries, 3 by default),
// which ran the script a second time: one publish, two events under two
// ids. Publish must return the error instead, with exactly one event in
// the history; with DURABLE_WAIT_REPLICAS too (the script and WAIT in one
// pipeline).
func TestPublishScriptIsNotRetried(t *testing.T) {
	for _, tt := range []struct {
		name string
		wait int // WaitReplicas
	}{
		{"one command", 0},
		{"pipeline with WAIT", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			srv := redistest.Start(t)
			direct := srv.Client()
			if _, err := store.NewHistory(direct, "sse:", 100, 1<<16, time.Hour).Configure(ctx); err != nil {
				t.Fatal(err)
			}
			p := startResetProxy(t, srv.Addr)
			// go-redis's defaults (MaxRetries 3), as ssebridge and
			// `ssebridge publish` have them.
			rdb := redis.NewClient(&redis.Options{Addr: p.l.Addr().String()})
			defer rdb.Close()
			h := store.NewHistory(rdb, "sse:", 100, 1<<16, time.Hour)
			if tt.wait > 0 {
				h.WaitReplicas(tt.wait, 10*time.Millisecond)
			}
			// Loaded first, so the publish is one EVALSHA (as it is once
			// any instance has run it).
			if err := direct.ScriptLoad(ctx, store.PublishScript).Err(); err != nil {
				t.Fatal(err)
			}

			id, err := h.Publish(ctx, "room:a", []byte(`{"event":"e","data":1}`))
			select {
			case <-p.reset:
			default:
				t.Fatalf("the proxy reset nothing: the publish did not go through it as EVALSHA (id %v, err %v)", id, err)
			}
			n, xerr := direct.XLen(ctx, "sse:{room:a}:history").Result()
			if xerr != nil {
				t.Fatal(xerr)
			}
			t.Logf("Publish: id %v, err %v; events in the history: %d", id, err, n)
			if n != 1 {
				t.Fatalf("one Publish, its connection reset after the script ran: %d events in the history, want 1 (go-redis ran the script again)", n)
			}
			if err == nil || !id.IsZero() {
				t.Fatalf("Publish returned id %v and error %v, though its reply never arrived: want an error and no id", id, err)
			}
		})
	}
}
