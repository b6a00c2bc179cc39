package stream

import (
	"bufio"
	"cmp"
	"context"
	"net"
	"net/http"
	"strings"
	"time"
)

// Serve answers r with s, the stream Hub.Open made for it, and owns r's
// connection from here until the stream ends, when it calls Close. The
// caller has authorized r and writes nothing more to w. w is net/http's
// writer, not a wrapper that counts every write; the headers already set on
// it (CORS, say) go out in the response head.
//
// An HTTP/1.1 connection is taken over from net/http (takeOver) and Serve
// returns at once: the stream then costs its own buffers and goroutine
// stack, not net/http's, and once live it is on one of the hub's event
// loops. An HTTP/2 request cannot be taken over, nor can a connection whose
// writer does not allow it: Serve then writes through w, on the caller's
// goroutine, and returns when the stream ends.
func (h *Hub) Serve(w http.ResponseWriter, r *http.Request, s *Stream, opts WriteOptions) {
	head := w.Header()
	head.Set("Content-Type", "text/event-stream")
	head.Set("Cache-Control", "no-store") // the user's events: no cache keeps them
	head.Set("X-Accel-Buffering", "no")   // nginx: do not buffer the stream
	if r.ProtoMajor == 1 {
		if conn, brw, err := http.NewResponseController(w).Hijack(); err == nil {
			h.takeOver(s, conn, brw, head, opts)
			return
		}
	}
	w.WriteHeader(http.StatusOK)
	h.Close(s, s.serveResponse(r.Context(), w, opts))
}

// takeOver writes the response head on conn, just taken from net/http with
// what it had read (brw), then starts the stream's writer; it returns at
// once.
func (h *Hub) takeOver(s *Stream, conn net.Conn, brw *bufio.ReadWriter, head http.Header, opts WriteOptions) {
	if a, ok := conn.(*admittedConn); ok {
		conn = a.Conn // its slot is the stream's now
	}
	if brw.Reader.Buffered() > 0 {
		// Bytes after the request: the client speaks on a stream, which
		// no EventSource does.
		conn.Close()
		h.Close(s, ReasonUpload)
		return
	}
	head.Set("Connection", "close") // the body runs until the connection closes
	var b strings.Builder
	b.WriteString("HTTP/1.1 200 OK\r\n")
	_ = head.Write(&b)
	b.WriteString("\r\n")
	_ = conn.SetWriteDeadline(time.Now().Add(opts.WriteTimeout))
	_, err := brw.Writer.WriteString(b.String())
	if err == nil {
		err = brw.Writer.Flush()
	}
	if err != nil {
		conn.Close()
		h.Close(s, ReasonWrite)
		return
	}
	// Off net/http's goroutine, so that it, and the buffers it holds, go
	// away now. Hub.Wait waits for the writer's end.
	h.startWriter(s, conn, opts)
}

// startWriter serves s on conn, a connection taken over whose response head
// is written, and closes both when the stream ends; it returns at once. A
// plain TCP connection is written by the hub's event loops once the stream
// is live (serveOnLoop; Options.Loops), anything else (TLS, or no loops) by
// a goroutine of its own (serveConn).
func (h *Hub) startWriter(s *Stream, conn net.Conn, opts WriteOptions) {
	if !h.loops.takes(conn) {
		go func() { h.Close(s, s.serveConn(conn, opts)) }()
		return
	}
	go h.serveOnLoop(s, conn, opts)
}

// A redisPart is a part of a stream's life that reads Redis and writes as
// it reads: Hub.opening or Hub.catchUp.
type redisPart func(ctx context.Context, s *Stream, out sink) string

// serveUntilLoop writes first, then runs part, on the calling goroutine, as
// serveConn would: a reading goroutine notices the client leaving, and
// the hub's cut closes conn. It returns why the stream ended, or "" when
// it may go on on a loop (which then writes a final frame, if it is
// ending); the reading goroutine has stopped by then.
func (s *Stream) serveUntilLoop(conn net.Conn, opts WriteOptions, first [][]byte, part redisPart) string {
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
