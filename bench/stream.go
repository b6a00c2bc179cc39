package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// stream is one SSE stream, read by one goroutine over a bare TCP
// connection (or TLS over it, for https:// URLs): a bench holding 15,000
// streams cannot afford net/http's three goroutines and buffers per
// connection on the 2 cores it shares with the server under test. With -h2
// it is instead one HTTP/2 stream of a connection it shares with others
// (tls.go), as a browser's tabs share one. Its record of what arrived
// outlives the connection, so a stream that reconnects (the storm) is
// counted as one.
type stream struct {
	i    int
	conn io.Closer       // closing it ends the stream: its TCP or TLS connection, or its HTTP/2 stream
	h2   *http.Transport // with -h2: the one connection this stream shares; nil: a connection of its own
	r    *bufio.Reader   // the de-chunked body

	done    chan struct{} // closed when read returns
	lastID  string        // the id of the last complete block that had one
	pending string        // the id of the block being read
	resets  int           // event: reset blocks received

	// got is the bitmap of what arrived: bit seq, or with want (the chat
	// scenario) bit i for want[i], the stream's own sequence numbers in
	// ascending order, so that it grows with the stream's events, not the
	// run's.
	got   []uint64
	want  []int32
	recv  int // deliveries, duplicates included
	dups  int
	stray int     // deliveries of events not due to this stream
	lat   []int32 // delivery latencies, µs
}

// refusal is a non-200 answer to a stream's request.
type refusal struct {
	status     int
	retryAfter string
}

func (r *refusal) Error() string {
	return fmt.Sprintf("answer %d (Retry-After %q)", r.status, r.retryAfter)
}

// dial opens stream i, over h2 if not nil, due events sequence numbers
// or, if want is not nil, those in want; see connect.
func dial(ctx context.Context, i int, target *url.URL, rawPath string, header []string, src net.IP, events int, want []int32, h2 *http.Transport) (*stream, error) {
	s := &stream{i: i, h2: h2, want: want, done: make(chan struct{})}
	if want != nil {
		events = len(want)
	}
	s.got = make([]uint64, (events+63)/64)
	if err := s.connect(ctx, target, rawPath, header, src); err != nil {
		return nil, err
	}
	return s, nil
}

// connect opens the stream's connection, with Last-Event-ID once the stream
// has seen an id, and reads until the server has answered 200 and sent its
// first block (a stream is "connected" once it can receive). A non-200
// answer is a *refusal.
func (s *stream) connect(ctx context.Context, target *url.URL, rawPath string, header []string, src net.IP) error {
	if s.h2 != nil {
		return s.connectH2(ctx, target, header)
	}
	conn, err := dialConn(ctx, target, src)
	if err != nil {
		return err
	}
	req := s.request(target, rawPath, header)
	if _, err := conn.Write([]byte(req)); err != nil {
		conn.Close()
		return err
	}
	br := bufio.NewReaderSize(conn, 4096)
	chunked, err := readHead(br)
	if err != nil {
		conn.Close()
		return err
	}
	s.conn, s.r = conn, br
	if chunked {
		s.r = bufio.NewReaderSize(httputil.NewChunkedReader(br), 4096)
	}
	if err := s.awaitFirstBlock(); err != nil {
		conn.Close()
		return err
	}
	_ = conn.SetDeadline(time.Time{})
	return nil
}

// request is the stream's GET, written by hand as the connection is bare:
// header's {i} is the stream's number, and Last-Event-ID resumes after the
// last id seen.
func (s *stream) request(target *url.URL, rawPath string, header []string) string {
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n", rawPath, target.Host)
	for _, h := range header {
		req.WriteString(s.header(h))
		req.WriteString("\r\n")
	}
	if s.lastID != "" {
		req.WriteString("Last-Event-ID: " + s.lastID + "\r\n")
	}
	req.WriteString("\r\n")
	return req.String()
}

// header is a -header line for this stream: {i} is its number.
func (s *stream) header(h string) string {
	return strings.ReplaceAll(h, "{i}", strconv.Itoa(s.i))
}

// readHead reads the answer's status line and headers, and says whether
// its body is chunked; a status other than 200 is a *refusal, returned once
// the headers are read (they hold its Retry-After).
func readHead(br *bufio.Reader) (chunked bool, err error) {
	status, err := br.ReadString('\n')
	if err != nil {
		return false, fmt.Errorf("reading status: %w", err)
	}
	var refused *refusal
	if f := strings.Fields(status); len(f) < 2 || f[1] != "200" {
		refused = &refusal{}
		if len(f) >= 2 {
			refused.status, _ = strconv.Atoi(f[1])
		}
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return false, err
		}
		if line == "\r\n" {
			break
		}
		name, value, _ := strings.Cut(line, ":")
		value = strings.TrimSpace(value)
		switch {
		case strings.EqualFold(name, "Transfer-Encoding") && strings.EqualFold(value, "chunked"):
			chunked = true
		case strings.EqualFold(name, "Retry-After") && refused != nil:
			refused.retryAfter = value
		}
	}
	if refused != nil {
		return false, refused
	}
	return chunked, nil
}

// awaitFirstBlock waits for the first block (ssebridge's ready,
// Centrifugo's connect reply): from then on, the stream is subscribed. Its
// id, if any, is where a resume starts.
func (s *stream) awaitFirstBlock() error {
	for {
		line, err := s.r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("waiting for the first event: %w", err)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			return nil
		}
		if id, ok := bytes.CutPrefix(line, []byte("id:")); ok {
			s.lastID = string(bytes.TrimSpace(id))
		}
	}
}

var marker = []byte(`"bench":{"t":`)

// read records every bench event until the connection ends.
func (s *stream) read(delivered *atomic.Int64) {
	defer close(s.done)
	for {
		line, err := s.r.ReadSlice('\n')
		if err != nil {
			return
		}
		switch {
		case len(bytes.TrimSpace(line)) == 0: // the end of a block: its id counts
			if s.pending != "" {
				s.lastID, s.pending = s.pending, ""
			}
			continue
		case bytes.HasPrefix(line, []byte("id:")):
			s.pending = string(bytes.TrimSpace(line[3:]))
			continue
		case bytes.HasPrefix(line, []byte("event: reset")):
			s.resets++
			continue
		}
		i := bytes.Index(line, marker)
		if i < 0 || !bytes.HasPrefix(line, []byte("data:")) {
			continue
		}
		rest := line[i+len(marker):]
		t, rest := leadingInt(rest)
		j := bytes.Index(rest, []byte(`"s":`))
		if j < 0 {
			continue
		}
		seq, _ := leadingInt(rest[j+4:])
		now := time.Now().UnixNano()
		idx, ok := s.index(seq)
		if !ok {
			s.stray++
			continue
		}
		s.recv++
		word, bit := idx/64, uint64(1)<<(idx%64)
		if s.got[word]&bit != 0 {
			s.dups++
			continue
		}
		s.got[word] |= bit
		delivered.Add(1)
		s.lat = append(s.lat, int32((now-t)/1000))
	}
}

// index is event seq's bit in got, if the event is due to the stream.
func (s *stream) index(seq int64) (int64, bool) {
	if s.want == nil {
		return seq, seq >= 0 && seq < int64(len(s.got))*64
	}
	if seq < 0 || seq > math.MaxInt32 {
		return 0, false
	}
	i, ok := slices.BinarySearch(s.want, int32(seq))
	return int64(i), ok
}

func leadingInt(b []byte) (int64, []byte) {
	var n int64
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		n = n*10 + int64(b[i]-'0')
		i++
	}
	if i == 0 {
		return -1, b
	}
	return n, b[i:]
}

// unique counts the distinct events received.
func (s *stream) unique() int {
	n := 0
	for _, w := range s.got {
		for ; w != 0; w &= w - 1 {
			n++
		}
	}
	return n
}
