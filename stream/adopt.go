package stream

import (
	"cmp"
	"context"
	"net"
	"time"
)

// Adopt serves s on conn, an HTTP/1.1 connection taken over from net/http
// whose response head is written, and closes both when the stream ends;
// it returns at once. A plain TCP connection is written by the hub's
// event loops once the stream is live (loop_linux.go; Options.Loops),
// anything else (TLS, or no loops) by a goroutine of its own (ServeConn).
func (h *Hub) Adopt(s *Stream, conn net.Conn, opts WriteOptions) {
	if !h.loops.takes(conn) {
		go func() { h.Close(s, s.ServeConn(conn, opts)) }()
		return
	}
	go h.serveTaken(s, conn, opts)
}

// A seamPart is a part of a stream's life that reads Redis and writes as
// it reads: Hub.opening or Hub.catchUp.
type seamPart func(ctx context.Context, s *Stream, out sink) string

// seam writes first, then runs part, on the calling goroutine, as
// ServeConn would: a reading goroutine notices the client leaving, and
// the hub's cut closes conn. It returns why the stream ended, or "" when
// it may go on on a loop (which then writes a final frame, if it is
// ending); the reading goroutine has stopped by then.
func (s *Stream) seam(conn net.Conn, opts WriteOptions, first [][]byte, part seamPart) string {
	stop := context.AfterFunc(s.hub.cut, func() { conn.Close() })
	ctx, gone := context.WithCancel(context.Background())
	defer gone()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		s.watch(conn, gone)
	}()
	out := &connSink{conn: conn, d: deadline{timeout: opts.WriteTimeout}}
	why := ""
	if err := out.write(first); err != nil {
		why = s.writeFailed(ctx)
	} else {
		why = part(ctx, s, out)
	}
	_ = conn.SetReadDeadline(time.Unix(1, 0)) // stops watch's read
	<-watched
	if !stop() { // cut: conn is closed
		return cmp.Or(why, s.ended(), ReasonWrite)
	}
	if why == "" && ctx.Err() != nil {
		why = cmp.Or(s.ended(), ReasonClient)
	}
	return why
}
