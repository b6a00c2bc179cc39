package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// stream is one open SSE connection, read by one goroutine over a bare TCP
// connection: a bench holding 15,000 streams cannot afford net/http's three
// goroutines and buffers per connection on the 2 cores it shares with the
// server under test.
type stream struct {
	i    int
	conn net.Conn
	r    *bufio.Reader // the de-chunked body

	got  []uint64 // bitmap of the sequence numbers received
	recv int      // deliveries, duplicates included
	dups int
	lat  []int32 // delivery latencies, µs
}

// dial opens stream i and reads until the server has answered 200 and sent
// its first event (a stream is "connected" once it can receive).
func dial(ctx context.Context, i int, target *url.URL, rawPath string, header []string, src net.IP, events int) (*stream, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	conn, err := d.DialContext(ctx, "tcp", target.Host)
	if err != nil {
		return nil, err
	}
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n", rawPath, target.Host)
	for _, h := range header {
		req.WriteString(strings.ReplaceAll(h, "{i}", strconv.Itoa(i)))
		req.WriteString("\r\n")
	}
	req.WriteString("\r\n")
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write([]byte(req.String())); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 4096)
	status, err := br.ReadString('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading status: %w", err)
	}
	if !strings.Contains(status, " 200 ") {
		conn.Close()
		return nil, fmt.Errorf("answer: %s", strings.TrimSpace(status))
	}
	chunked := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			conn.Close()
			return nil, err
		}
		if line == "\r\n" {
			break
		}
		if strings.EqualFold(strings.TrimSpace(line), "Transfer-Encoding: chunked") {
			chunked = true
		}
	}
	s := &stream{i: i, conn: conn, r: br, got: make([]uint64, (events+63)/64)}
	if chunked {
		s.r = bufio.NewReaderSize(httputil.NewChunkedReader(br), 4096)
	}
	// Wait for the first block (ssebridge's ready, Centrifugo's connect
	// reply): from then on, the stream is subscribed.
	for {
		line, err := s.r.ReadSlice('\n')
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("waiting for the first event: %w", err)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			break
		}
	}
	_ = conn.SetDeadline(time.Time{})
	return s, nil
}

var marker = []byte(`"bench":{"t":`)

// read records every bench event until the connection ends.
func (s *stream) read(delivered *atomic.Int64) {
	for {
		line, err := s.r.ReadSlice('\n')
		if err != nil {
			return
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
		if seq < 0 || seq >= int64(len(s.got))*64 {
			continue
		}
		s.recv++
		word, bit := seq/64, uint64(1)<<(seq%64)
		if s.got[word]&bit != 0 {
			s.dups++
			continue
		}
		s.got[word] |= bit
		delivered.Add(1)
		s.lat = append(s.lat, int32((now-t)/1000))
	}
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
