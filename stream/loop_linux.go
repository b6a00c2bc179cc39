//go:build linux

package stream

import (
	"cmp"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event-loop writer: a live stream on a plain HTTP/1.1 connection is
// written by one of a few loops (one per core) instead of a goroutine of
// its own, so that an idle stream costs no goroutine stack and no buffer,
// and a fan-out wakes a loop once rather than every stream's goroutine.
//
// A loop owns its streams' sockets. It waits in epoll for three things:
// its eventfd (the hub queued something: Stream.signal pushed the stream
// on the loop's ready stack), a socket that became writable again
// (EPOLLOUT, edge-triggered, so it is only reported after a write found
// the socket full: no epoll_ctl to add and remove it) or a client that
// spoke or went away (EPOLLIN, EPOLLRDHUP). Heartbeats and write deadlines
// come from one coarse tick per loop, not a timer per stream.
//
// On epoll through x/sys/unix rather than an engine such as nbio: nbio
// copies what is written into buffers of each connection's and reads into
// its own, where here the hub's queues already hold the shared frames and
// nothing is read; what is needed fits in this file and its poller's
// (loop_poller_linux.go).
//
// What reads Redis — the opening and a catch-up after a join — still runs
// on a goroutine of the stream's (serveUntilLoop); a join moves a live stream off
// its loop for that and back after it.

// loopCount is how many loops Options.Loops n asks for: 0 is one per
// core, a negative n none.
func loopCount(n int) int {
	if n == 0 {
		return max(1, runtime.GOMAXPROCS(0))
	}
	return max(0, n)
}

// loops are a hub's event loops. A loop runs only while it has streams,
// so an idle hub holds no goroutine and no file.
type loops struct {
	all  []*loop
	next atomic.Uint32
	wg   sync.WaitGroup // running loops, for Hub.Wait
}

func newLoops(h *Hub, n int) *loops {
	if n = loopCount(n); n == 0 {
		return nil
	}
	ls := &loops{all: make([]*loop, n)}
	for i := range ls.all {
		ls.all[i] = &loop{h: h, wg: &ls.wg}
	}
	return ls
}

// takes says whether conn can go on a loop: a plain TCP connection (a TLS
// one needs its own writer to encrypt).
func (ls *loops) takes(conn net.Conn) bool {
	_, ok := conn.(*net.TCPConn)
	return ls != nil && ok
}

func (ls *loops) pick() *loop {
	return ls.all[int(ls.next.Add(1))%len(ls.all)]
}

// wait waits until every loop has stopped.
func (ls *loops) wait() {
	if ls != nil {
		ls.wg.Wait()
	}
}

// loop is one event-loop writer.
type loop struct {
	h  *Hub
	wg *sync.WaitGroup

	ready atomic.Pointer[loopConn] // streams with something to write, newest first
	awake atomic.Bool              // the eventfd was written and not yet seen: no need to write it again

	mu      sync.Mutex // guards the fields below
	running bool
	efd     int         // the eventfd, valid while running
	joining []*loopConn // handed over, not yet registered with epoll

	// handOver, set by tests only before any stream is handed over, is
	// called as join reaches each step: a test forces an interleaving
	// with it. A load and a branch per hand-over, nothing per event.
	handOver func(c *loopConn, step handOverStep)
}

// handOverStep is a step of loop.join, for the handOver hook.
type handOverStep int

const (
	handOverPublished handOverStep = iota // c is in joining: the loop may take it, write it, hand it back
	handOverDone                          // join is about to return
)

// loopConn is a stream on a loop. Besides next and queued (the ready
// stack's), its fields are the loop goroutine's.
type loopConn struct {
	loop   *loop
	s      *Stream
	fd     int
	opts   WriteOptions
	next   *loopConn
	queued atomic.Bool // on the ready stack

	batch     [][]byte // being written: batch[off][part:] onwards
	off, part int
	spare     [][]byte // traded with the stream's queue (Stream.take)
	ending    string   // write what is left, then close
	lastWrite time.Time
	fullSince time.Time // when a write first found the socket full; zero if not
	admitted  bool      // registered with epoll
	done      bool      // closed, or gone back to a goroutine
}

// ready marks c as having something to write and wakes its loop, once for
// however many streams are marked before the loop looks.
func (c *loopConn) ready() {
	if !c.queued.CompareAndSwap(false, true) {
		return
	}
	l := c.loop
	for {
		top := l.ready.Load()
		c.next = top
		if l.ready.CompareAndSwap(top, c) {
			break
		}
	}
	l.poke()
}

// poke wakes the loop, once for however many pokes come before it looks
// (it clears awake before it takes its ready stack and joining).
func (l *loop) poke() {
	if l.awake.CompareAndSwap(false, true) {
		l.wake()
	}
}

func (l *loop) wake() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running {
		one := uint64(1)
		_, _ = unix.Write(l.efd, (*[8]byte)(unsafe.Pointer(&one))[:])
	}
}

// serveOnLoop writes the stream's opening on this goroutine, then hands
// the stream to a loop (Hub.startWriter).
func (h *Hub) serveOnLoop(s *Stream, conn net.Conn, opts WriteOptions) {
	h.seamThenLoop(s, conn, opts, nil, h.opening)
}

// seamThenLoop runs part (the opening, or a catch-up) on the calling
// goroutine, after writing first, then hands the stream to a loop.
func (h *Hub) seamThenLoop(s *Stream, conn net.Conn, opts WriteOptions, first [][]byte, part redisPart) {
	why := s.serveUntilLoop(conn, opts, first, part)
	if why == "" {
		fd, err := detach(conn)
		if err == nil {
			h.loops.pick().join(s, fd, opts)
			return
		}
		h.log.Warn("stream ended: connection not handed to a loop", "err", err)
		why = ReasonWrite
	}
	if tcp, ok := conn.(*net.TCPConn); ok && why == ReasonUpload {
		_ = tcp.CloseWrite() // see finish
	}
	conn.Close()
	h.Close(s, why)
}

// detach takes conn's socket from Go's poller: a duplicate of its file
// descriptor, non-blocking, survives conn's closing.
func detach(conn net.Conn) (int, error) {
	raw, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := raw.Control(func(f uintptr) {
		fd, err = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	})
	conn.Close()
	if err = cmp.Or(cerr, err); err != nil {
		return -1, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// join hands s, on socket fd, to l.
func (l *loop) join(s *Stream, fd int, opts WriteOptions) {
	c := &loopConn{loop: l, s: s, fd: fd, opts: opts, lastWrite: time.Now()}
	l.mu.Lock()
	if !l.running {
		if err := l.start(opts); err != nil {
			l.mu.Unlock()
			l.h.log.Warn("stream ended: event loop not started", "err", err)
			unix.Close(fd)
			l.h.Close(s, ReasonWrite)
			return
		}
	}
	// s.onLoop names c before the loop can see c, never after. Once c is
	// in joining, the loop may admit it, find a join's catch-up, hand it
	// back (drop clears onLoop) and a goroutine may hand the stream over
	// again as another loopConn, all before this goroutine runs again: a
	// store here after the append would then put the dead c back over the
	// live one, and the stream would get heartbeats (from the new c) but
	// no event (signal readies the dead one) until it ended. So the
	// stores of a stream's onLoop follow its life on loops in order: c
	// here, nil in drop (which only clears its own), then the next
	// hand-over's, which cannot begin before that drop.
	l.h.metrics.OnLoops.Inc() // before the loop can drop c and count it off
	s.onLoop.Store(c)
	l.joining = append(l.joining, c)
	l.mu.Unlock()
	l.hook(c, handOverPublished)
	// Wake the loop to admit c: admitting writes what was queued before.
	// (A signal since the store may have readied c already: the loop
	// skips it on its ready stack until admitted.)
	l.poke()
	l.hook(c, handOverDone)
}

// hook calls the tests' handOver hook, if set.
func (l *loop) hook(c *loopConn, step handOverStep) {
	if l.handOver != nil {
		l.handOver(c, step)
	}
}

// start makes the loop's epoll and eventfd and starts its goroutine.
// l.mu is held.
func (l *loop) start(opts WriteOptions) error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ep)
		return fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, efd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}); err != nil {
		unix.Close(ep)
		unix.Close(efd)
		return fmt.Errorf("epoll: %w", err)
	}
	l.running, l.efd = true, efd
	l.awake.Store(false)
	// A coarse tick: a heartbeat may come up to a quarter late, a write
	// deadline a quarter past its time.
	tick := max(min(opts.Heartbeat, opts.WriteTimeout)/4, 10*time.Millisecond)
	p := &poller{loop: l, ep: ep, efd: efd, tick: tick, conns: make(map[int32]*loopConn)}
	l.wg.Add(1)
	go p.run()
	return nil
}
