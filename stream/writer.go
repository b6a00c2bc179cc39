package stream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/ssebridge/ssebridge/wire"
)

// WriteOptions say how a stream's writer writes.
type WriteOptions struct {
	Heartbeat    time.Duration // a comment after this long without a write
	WriteTimeout time.Duration // how long one batch may take to write
}

// ErrWrite wraps a failed write to the client.
var ErrWrite = errors.New("write to client failed")

// serveResponse writes the stream to w, net/http's writer, until the stream
// ends or ctx (the request's context) is done. It owns w: nothing else
// writes to it. It is the path for connections that cannot be taken over
// (HTTP/2); see serveConn. It returns why the stream ended.
func (s *Stream) serveResponse(ctx context.Context, w http.ResponseWriter, opts WriteOptions) string {
	return s.serve(ctx, &responseSink{w: w, rc: http.NewResponseController(w), d: deadline{timeout: opts.WriteTimeout}}, opts)
}

// serveConn writes the stream to conn, an HTTP/1.1 connection taken over
// from net/http (whose response head has been written), until the stream
// ends or the client goes away; it closes conn. Owning the connection
// spares net/http's per-connection buffers (some 10 KiB per stream) and
// lets a batch go out in one writev, without chunked framing.
func (s *Stream) serveConn(conn net.Conn, opts WriteOptions) string {
	defer conn.Close()
	// At the shutdown deadline the hub cuts what is still open: a writer
	// blocked on a full socket must not outlive the process's run.
	stop := context.AfterFunc(s.hub.cut, func() { conn.Close() })
	defer stop()
	ctx, gone := context.WithCancel(context.Background())
	defer gone()
	go s.watch(conn, gone)
	return s.serve(ctx, &connSink{conn: conn, d: deadline{timeout: opts.WriteTimeout}}, opts)
}

// watch reads conn until the client goes away. A client never speaks again
// on an event stream, so a byte from it is misuse, not a request: the
// stream ends at once (counted as upload) rather than spend a core reading
// what nobody will use.
func (s *Stream) watch(conn net.Conn, gone context.CancelFunc) {
	var b [64]byte
	n, err := conn.Read(b[:])
	if n > 0 {
		s.end(ReasonUpload, nil)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		return // serveUntilLoop stopped it: the stream goes on, on a loop
	}
	gone()
}

// A sink takes batches of frames, with a deadline on each write.
type sink interface {
	write(batch [][]byte) error
}

// serve is the stream's write loop: its opening (ready, then any replay),
// then queued frames written together, with one system call, so a stream
// that fell behind catches up in few.
func (s *Stream) serve(ctx context.Context, out sink, opts WriteOptions) string {
	// Made here, not with the stream: a stream on a loop has none. The
	// first wake-up takes whatever was queued or ended before.
	wake := make(chan struct{}, 1)
	wake <- struct{}{}
	s.wake.Store(&wake)
	if why := s.hub.opening(ctx, s, out); why != "" {
		return why
	}
	// A ticker, checked against the last write, rather than a timer reset
	// after every write: the per-event path stays free of timer work.
	tick := time.NewTicker(opts.Heartbeat)
	defer tick.Stop()
	lastWrite := time.Now()
	var spare [][]byte // the queue's other half: taking the queue allocates nothing
	delivered := 0     // added to the shared counter now and then, not per batch
	defer func() { s.hub.metrics.Delivered.Add(float64(delivered)) }()
	for {
		var batch [][]byte
		ending, beat, rewind := "", false, false
		select {
		case <-ctx.Done():
			if why := s.ended(); why != "" {
				return why
			}
			return ReasonClient
		case now := <-tick.C:
			if now.Sub(lastWrite) < opts.Heartbeat/2 {
				continue
			}
			batch, beat = [][]byte{wire.Heartbeat}, true
			s.hub.metrics.Delivered.Add(float64(delivered))
			delivered = 0
		case <-wake:
			batch, ending, rewind = s.take(spare)
		}
		n := len(batch)
		if err := out.write(batch); err != nil {
			return s.writeFailed(ctx)
		}
		if n > 0 {
			lastWrite = time.Now()
		}
		if !beat {
			if delivered += n; delivered >= 256 {
				s.hub.metrics.Delivered.Add(float64(delivered))
				delivered = 0
			}
			clear(batch) // drop the frames, keep the array
			spare = batch[:0]
		}
		if ending != "" {
			return ending
		}
		if rewind {
			if why := s.hub.catchUp(ctx, s, out); why != "" {
				return why
			}
			lastWrite = time.Now()
		}
	}
}

// writeFailed says why a write failed: a slow stream's write fails at its
// deadline, and it was ended as slow; a client that went away is the
// client's doing.
func (s *Stream) writeFailed(ctx context.Context) string {
	if why := s.ended(); why != "" {
		return why
	}
	if ctx.Err() != nil {
		return ReasonClient
	}
	return ReasonWrite
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
