//go:build linux

package stream

import (
	"cmp"
	"context"
	"errors"
	"net"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ssebridge/ssebridge/wire"
)

// A loop at work: its poller waits in epoll, writes what its streams have,
// sends heartbeats and ends streams, and gives a stream back to a
// goroutine for a catch-up. The loops and the hand-over onto one are in
// loop_linux.go.

// poller is one run of a loop, from its first stream to its last.
type poller struct {
	*loop
	ep, efd   int
	tick      time.Duration
	conns     map[int32]*loopConn
	events    [128]unix.EpollEvent
	iov       [64]unix.Iovec
	delivered int // events written since the counter was last added to
}

func (p *poller) run() {
	defer p.wg.Done()
	stopCut := context.AfterFunc(p.h.cut, p.wake)
	defer stopCut()
	nextTick := time.Now().Add(p.tick)
	for {
		wait := max(time.Until(nextTick), 0)
		n, err := unix.EpollWait(p.ep, p.events[:], int(wait.Milliseconds())+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			p.h.log.Error("event loop: epoll_wait failed: its streams are ended", "err", err)
			p.cutAll(ReasonWrite)
		}
		now := time.Now()
		for _, ev := range p.events[:max(n, 0)] {
			if int(ev.Fd) == p.efd {
				var b [8]byte
				_, _ = unix.Read(p.efd, b[:])
				continue
			}
			c := p.conns[ev.Fd]
			switch {
			case c == nil:
			case ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0:
				p.gone(c)
			default: // EPOLLOUT: room again in a full socket
				p.flush(c, now)
			}
		}
		p.awake.Store(false) // before taking the stack: a stream marked after this wakes the loop again
		p.admit(now)
		for c := p.ready.Swap(nil); c != nil; {
			next := c.next
			c.next = nil
			c.queued.Store(false)
			if c.admitted && !c.done {
				p.flush(c, now)
			}
			c = next
		}
		if p.h.cut.Err() != nil {
			p.cutAll(ReasonWrite)
		}
		if !now.Before(nextTick) {
			p.timers(now)
			nextTick = now.Add(p.tick)
		}
		if p.delivered > 0 {
			p.h.metrics.Delivered.Add(float64(p.delivered))
			p.delivered = 0
		}
		if len(p.conns) == 0 && p.stop() {
			return
		}
	}
}

// admit registers the streams handed over since the last look.
func (p *poller) admit(now time.Time) {
	p.mu.Lock()
	joining := p.joining
	p.joining = nil
	p.mu.Unlock()
	for _, c := range joining {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLOUT | unix.EPOLLET, Fd: int32(c.fd)}
		p.conns[int32(c.fd)] = c
		if err := unix.EpollCtl(p.ep, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
			p.h.log.Warn("stream ended: not registered with epoll", "err", err)
			p.finish(c, ReasonWrite)
			continue
		}
		c.admitted, c.lastWrite = true, now
		p.flush(c, now) // what was queued before the hand-over
	}
}

// stop ends the run if no stream was handed over meanwhile.
func (p *poller) stop() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.joining) > 0 {
		return false
	}
	p.running = false
	unix.Close(p.efd)
	unix.Close(p.ep)
	return true
}

// flush writes what c has: what is left of its batch, then what the hub
// queued since, until the socket is full or nothing is left.
func (p *poller) flush(c *loopConn, now time.Time) {
	for {
		if c.off == len(c.batch) {
			if c.ending != "" {
				p.finish(c, c.ending)
				return
			}
			batch, ending, rewind := c.s.take(c.spare)
			if rewind {
				p.leave(c, batch)
				return
			}
			c.spare = nil
			c.batch, c.off, c.part, c.ending = batch, 0, 0, ending
			p.delivered += len(batch)
			if len(batch) == 0 {
				c.spare = batch
				if ending == "" {
					return
				}
				continue
			}
		}
		n, err := p.writev(c)
		switch {
		case errors.Is(err, unix.EAGAIN):
			if c.fullSince.IsZero() {
				c.fullSince = now
			}
			return // EPOLLOUT says when there is room
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			p.finish(c, cmp.Or(c.s.ended(), ReasonClient))
			return
		}
		c.advance(n)
		if c.off == len(c.batch) {
			clear(c.batch) // drop the frames, keep the array
			c.spare, c.batch, c.off = c.batch[:0], nil, 0
			c.lastWrite, c.fullSince = now, time.Time{}
		}
	}
}

// writev writes as much of c's batch as the socket takes. The socket is
// non-blocking, so the system call never waits: a raw one spares the
// scheduler's bookkeeping.
func (p *poller) writev(c *loopConn) (int, error) {
	iov := p.iov[:0]
	for i, f := range c.batch[c.off:] {
		if len(iov) == cap(iov) {
			break
		}
		if i == 0 {
			f = f[c.part:]
		}
		if len(f) == 0 {
			continue
		}
		v := unix.Iovec{Base: &f[0]}
		v.SetLen(len(f))
		iov = append(iov, v)
	}
	if len(iov) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(c.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// advance moves c's place in its batch on by n written bytes.
func (c *loopConn) advance(n int) {
	for n > 0 || (c.off < len(c.batch) && c.part == len(c.batch[c.off])) {
		left := len(c.batch[c.off]) - c.part
		if n < left {
			c.part += n
			return
		}
		n -= left
		c.off, c.part = c.off+1, 0
	}
}

// gone handles a client that spoke or went away: a byte from it is
// misuse (see watch), anything else its leaving.
func (p *poller) gone(c *loopConn) {
	var b [64]byte
	if n, _ := unix.Read(c.fd, b[:]); n > 0 {
		c.s.end(ReasonUpload, nil)
	}
	p.finish(c, cmp.Or(c.s.ended(), ReasonClient))
}

// timers, once a tick: a heartbeat on streams nothing was written to for
// a while, and the end of those whose socket stayed full too long.
func (p *poller) timers(now time.Time) {
	for _, c := range p.conns {
		switch {
		case !c.fullSince.IsZero():
			if now.Sub(c.fullSince) >= c.opts.WriteTimeout {
				p.finish(c, cmp.Or(c.s.ended(), ReasonWrite))
			}
		case c.off == len(c.batch) && now.Sub(c.lastWrite) >= c.opts.Heartbeat:
			c.batch = append(c.spare[:0], wire.Heartbeat)
			c.spare, c.off, c.part = nil, 0, 0
			p.flush(c, now)
		}
	}
}

// finish closes c's socket and the stream. The stream is counted as
// closed first, so that its end is in the metrics before the client sees
// it; its channels are left off the loop, since an unsubscribe may wait
// on Redis.
func (p *poller) finish(c *loopConn, why string) {
	p.drop(c)
	if p.h.remove(c.s, why) {
		go p.h.detachRemoved(c.s)
	}
	if why == ReasonUpload {
		// Closed with the client's bytes unread, the socket sends a
		// reset: a FIN first lets the client read its end as an end.
		_ = unix.Shutdown(c.fd, unix.SHUT_WR)
	}
	unix.Close(c.fd)
}

// drop takes c off the loop.
func (p *poller) drop(c *loopConn) {
	c.done = true
	delete(p.conns, int32(c.fd))
	// Only c's own entry: by construction (see join) onLoop is c here, and
	// a compare-and-swap keeps a later hand-over's entry even if not.
	c.s.onLoop.CompareAndSwap(c, nil)
	p.h.metrics.OnLoops.Dec()
}

// cutAll ends every stream on the loop at once.
func (p *poller) cutAll(why string) {
	for _, c := range p.conns {
		p.finish(c, cmp.Or(c.s.ended(), why))
	}
}

// leave gives c back to a goroutine, for a catch-up after a join: it reads
// Redis and writes as it reads, which a loop must not wait for. first is
// what the stream had queued before the join, and the rest of a batch
// being written.
func (p *poller) leave(c *loopConn, queued [][]byte) {
	var first [][]byte
	if c.off < len(c.batch) {
		first = append(first, c.batch[c.off][c.part:])
		first = append(first, c.batch[c.off+1:]...)
	}
	first = append(first, queued...)
	p.delivered += len(queued)
	p.drop(c)
	_ = unix.EpollCtl(p.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
	f := os.NewFile(uintptr(c.fd), "stream")
	conn, err := net.FileConn(f) // a duplicate, on Go's poller
	f.Close()
	if err != nil {
		p.h.log.Warn("stream ended: connection not taken back from its loop", "err", err)
		go p.h.Close(c.s, ReasonWrite)
		return
	}
	go p.h.seamThenLoop(c.s, conn, c.opts, first, p.h.catchUp)
}
