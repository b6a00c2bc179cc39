package stream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/store"
)

// Why a stream ended. Each is a label of the streams-closed metric.
const (
	ReasonClient   = "client"   // the browser went away
	ReasonSlow     = "slow"     // its queue overflowed
	ReasonLogout   = "logout"   // the backend logged the user out
	ReasonSession  = "session"  // the session key is gone
	ReasonShutdown = "shutdown" // this instance is stopping
	ReasonWrite    = "write"    // a write failed or timed out
)

// Stream is one open EventSource connection. The hub queues encoded events
// on it without ever waiting; the request's own goroutine writes them out in
// Serve. Streams are made by Hub.Open.
type Stream struct {
	User    string
	session string

	// Guarded by the hub's mu: the channels the stream is subscribed to, and
	// whether Close has run.
	channels map[string]struct{}
	closed   bool

	mu       sync.Mutex
	queue    [][]byte // frames shared with every other stream they go to
	queued   int      // bytes in queue
	maxQueue int
	maxBytes int
	ending   string // why the stream is ending; "" while it is open
	wake     chan struct{}

	// last is the newest durable event queued: a durable event at or
	// before it is a duplicate (already replayed) and is skipped.
	last store.Cursor
	// While the stream replays history, live events wait in held so that
	// they follow the replay, in order, without duplicates.
	replaying bool
	held      []heldEvent

	delivered prometheus.Counter
}

type heldEvent struct {
	frame  []byte
	cursor store.Cursor // zero for a live event
}

func newStream(user, session string, maxQueue, maxBytes int, delivered prometheus.Counter) *Stream {
	return &Stream{
		delivered: delivered,
		User:      user,
		session:   session,
		channels:  make(map[string]struct{}),
		maxQueue:  maxQueue,
		maxBytes:  maxBytes,
		wake:      make(chan struct{}, 1),
	}
}

// offer queues a frame without blocking; cursor is the id of a durable
// event, zero for a live one. It reports false when the queue is full, in
// events or in bytes: the caller then ends the stream as slow.
func (s *Stream) offer(frame []byte, cursor store.Cursor) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.ending != "":
		return true // already on its way out; nothing more to do
	case s.replaying:
		s.held = append(s.held, heldEvent{frame, cursor})
		return true
	}
	return s.queueLocked(frame, cursor)
}

func (s *Stream) queueLocked(frame []byte, cursor store.Cursor) bool {
	if !cursor.IsZero() {
		if !s.last.Before(cursor) {
			return true // replayed already
		}
		s.last = cursor
	}
	if len(s.queue) >= s.maxQueue || s.queued+len(frame) > s.maxBytes {
		return false
	}
	s.queue = append(s.queue, frame)
	s.queued += len(frame)
	if len(s.queue) == 1 {
		s.signal() // a longer queue means the writer was woken already
	}
	return true
}

// goLive queues the frames that open the stream (ready, then a reset or the
// replay), outside the queue's limits, then what was held meanwhile, and
// lets live events flow. last is the newest durable event in frames.
func (s *Stream) goLive(frames [][]byte, last store.Cursor) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range frames {
		s.queue = append(s.queue, f)
		s.queued += len(f)
	}
	s.last = last
	s.replaying = false
	s.signal()
	ok := true
	for _, h := range s.held {
		ok = ok && s.queueLocked(h.frame, h.cursor)
	}
	s.held = nil
	return ok
}

// resetTo queues a reset that moves the stream's id to pos. A stream still
// opening is left alone: its own opening reads the history after this.
func (s *Stream) resetTo(reset []byte, pos store.Cursor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.replaying || s.ending != "" {
		return
	}
	s.queue = append(s.queue, reset)
	s.queued += len(reset)
	s.last = pos
	s.signal()
}

// position is the newest durable event queued on the stream.
func (s *Stream) position() store.Cursor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// end asks the writer to stop after writing final. Unless keep is set, what
// is still queued is dropped. It reports whether this call ended the stream.
func (s *Stream) end(reason string, final []byte, keep bool) bool {
	s.mu.Lock()
	if s.ending != "" {
		s.mu.Unlock()
		return false
	}
	s.ending = reason
	if !keep {
		s.queue, s.queued = nil, 0
	}
	if final != nil {
		s.queue = append(s.queue, final)
	}
	s.mu.Unlock()
	s.signal()
	return true
}

func (s *Stream) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// take empties the queue into the caller's hands and puts spare (emptied)
// in its place, so that the writer and the hub trade two arrays back and
// forth instead of allocating one per batch.
func (s *Stream) take(spare [][]byte) (batch [][]byte, ending string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	batch = s.queue
	s.queue, s.queued = spare[:0], 0
	return batch, s.ending
}

// WriteOptions say how Serve writes.
type WriteOptions struct {
	Heartbeat    time.Duration // a comment after this long without a write
	WriteTimeout time.Duration // how long one batch may take to write
}

// ErrWrite wraps a failed write to the client.
var ErrWrite = errors.New("write to client failed")

// Serve writes the stream to w, net/http's writer, until the stream ends or
// ctx (the request's context) is done. It owns w: nothing else writes to it.
// It is the path for connections that cannot be taken over (HTTP/2); see
// ServeConn. It returns why the stream ended.
func (s *Stream) Serve(ctx context.Context, w http.ResponseWriter, opts WriteOptions) string {
	return s.serve(ctx, &responseSink{w: w, rc: http.NewResponseController(w), d: deadline{timeout: opts.WriteTimeout}}, opts)
}

// ServeConn writes the stream to conn, an HTTP/1.1 connection taken over
// from net/http (whose response head has been written), until the stream
// ends or the client goes away; it closes conn. Owning the connection
// spares net/http's per-connection buffers (some 10 KiB per stream) and
// lets a batch go out in one writev, without chunked framing.
func (s *Stream) ServeConn(conn net.Conn, opts WriteOptions) string {
	defer conn.Close()
	// The client never speaks again on an event stream: a read returns
	// only when it goes away, which ends the stream at once.
	ctx, gone := context.WithCancel(context.Background())
	go func() {
		var b [1]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				gone()
				return
			}
		}
	}()
	defer gone()
	return s.serve(ctx, &connSink{conn: conn, d: deadline{timeout: opts.WriteTimeout}}, opts)
}

// A sink takes batches of frames, with a deadline on each write.
type sink interface {
	write(batch [][]byte) error
}

// serve is the stream's write loop: queued frames are written together,
// with one system call, so a stream that fell behind catches up in few.
func (s *Stream) serve(ctx context.Context, out sink, opts WriteOptions) string {
	// A ticker, checked against the last write, rather than a timer reset
	// after every write: the per-event path stays free of timer work.
	tick := time.NewTicker(opts.Heartbeat)
	defer tick.Stop()
	lastWrite := time.Now()
	var spare [][]byte // the queue's other half: taking the queue allocates nothing
	delivered := 0     // added to the shared counter now and then, not per batch
	defer func() { s.delivered.Add(float64(delivered)) }()
	for {
		var batch [][]byte
		ending, beat := "", false
		select {
		case <-ctx.Done():
			return ReasonClient
		case now := <-tick.C:
			if now.Sub(lastWrite) < opts.Heartbeat/2 {
				continue
			}
			batch, beat = [][]byte{heartbeat}, true
			s.delivered.Add(float64(delivered))
			delivered = 0
		case <-s.wake:
			batch, ending = s.take(spare)
		}
		n := len(batch)
		if err := out.write(batch); err != nil {
			if _, why := s.take(nil); why != "" {
				return why // a slow stream's write fails at its deadline: it was ended as slow
			}
			if ctx.Err() != nil {
				return ReasonClient
			}
			return ReasonWrite
		}
		if n > 0 {
			lastWrite = time.Now()
		}
		if !beat {
			if delivered += n; delivered >= 256 {
				s.delivered.Add(float64(delivered))
				delivered = 0
			}
			clear(batch) // drop the frames, keep the array
			spare = batch[:0]
		}
		if ending != "" {
			return ending
		}
	}
}

// deadline moves a connection's write deadline on once half of it has
// passed, not for every write: setting it costs as much as a small write.
// The stream lives for hours, but no write may hang on a dead peer for
// longer than the timeout.
type deadline struct {
	timeout time.Duration
	at      time.Time
}

func (d *deadline) due() (time.Time, bool) {
	now := time.Now()
	if d.at.Sub(now) >= d.timeout/2 {
		return d.at, false
	}
	d.at = now.Add(d.timeout)
	return d.at, true
}

// connSink writes to a connection ssebridge took over.
type connSink struct {
	conn net.Conn
	d    deadline
}

func (c *connSink) write(batch [][]byte) error {
	if len(batch) == 0 {
		return nil
	}
	if at, ok := c.d.due(); ok {
		_ = c.conn.SetWriteDeadline(at)
	}
	bufs := net.Buffers(batch) // one writev for the whole batch
	if _, err := bufs.WriteTo(c.conn); err != nil {
		return fmt.Errorf("%w: %v", ErrWrite, err)
	}
	return nil
}

// responseSink writes through net/http, with one flush per batch.
type responseSink struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	d  deadline
}

func (r *responseSink) write(batch [][]byte) error {
	if len(batch) == 0 {
		return nil
	}
	if at, ok := r.d.due(); ok {
		_ = r.rc.SetWriteDeadline(at)
	}
	for _, frame := range batch {
		if _, err := r.w.Write(frame); err != nil {
			return fmt.Errorf("%w: %v", ErrWrite, err)
		}
	}
	if err := r.rc.Flush(); err != nil {
		return fmt.Errorf("%w: %v", ErrWrite, err)
	}
	return nil
}
