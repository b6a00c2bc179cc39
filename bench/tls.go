package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The ways a stream reaches the server, to measure what TLS and HTTP/2 cost
// it against plain HTTP (bench/tls.sh): an http:// URL is a bare TCP
// connection per stream; https:// is HTTP/1.1 over TLS over that
// connection, still one per stream; https:// with -h2 K is HTTP/2, the
// streams spread over K connections, as browsers with many tabs open share
// one connection per server among them.

// connectTimeout bounds a stream's connection, from the dial to the first
// block; it is lifted once the stream is live.
const connectTimeout = 30 * time.Second

// benchTLS is the streams' TLS configuration, offering protos by ALPN. It
// skips verifying the server's certificate: bench/tls.sh makes a
// self-signed one for each run, and what is measured is the encryption's
// cost, not the trust. Every connection makes a full handshake (no session
// cache), as browsers opening their first connection do.
func benchTLS(target *url.URL, protos ...string) *tls.Config {
	return &tls.Config{ServerName: target.Hostname(), NextProtos: protos, InsecureSkipVerify: true}
}

// hostPort is target's host with its port, the scheme's if it has none.
func hostPort(target *url.URL) string {
	if target.Port() != "" {
		return target.Host
	}
	if target.Scheme == "https" {
		return net.JoinHostPort(target.Hostname(), "443")
	}
	return net.JoinHostPort(target.Hostname(), "80")
}

// dialConn opens a stream's own connection from src (nil: any), TLS for an
// https:// target (HTTP/1.1 by ALPN), with connectTimeout as its deadline.
func dialConn(ctx context.Context, target *url.URL, src net.IP) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	conn, err := d.DialContext(ctx, "tcp", hostPort(target))
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(connectTimeout))
	if target.Scheme != "https" {
		return conn, nil
	}
	tc := tls.Client(conn, benchTLS(target, "http/1.1"))
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// h2Transports returns k HTTP/2 clients of target, each holding exactly
// one connection (from source(c, j) for the j-th): stream i uses the
// (i%k)-th. Go's server allows 250 concurrent streams per connection, so k
// must be at least n/250.
func h2Transports(c config, target *url.URL, k int) []*http.Transport {
	ts := make([]*http.Transport, k)
	for j := range ts {
		d := &net.Dialer{Timeout: 10 * time.Second}
		if src := source(c, j); src != nil {
			d.LocalAddr = &net.TCPAddr{IP: src}
		}
		ts[j] = &http.Transport{
			DialContext:         d.DialContext,
			TLSClientConfig:     benchTLS(target), // ForceAttemptHTTP2 offers h2 and http/1.1
			ForceAttemptHTTP2:   true,
			MaxConnsPerHost:     1, // one connection, which every stream of this transport shares
			TLSHandshakeTimeout: 10 * time.Second,
			DisableCompression:  true, // as the bare streams: no Accept-Encoding
		}
	}
	return ts
}

// h2Stream is an HTTP/2 stream's body: closing it resets the stream (and
// ends its request), not the connection the other streams share.
type h2Stream struct {
	body   io.ReadCloser
	cancel context.CancelFunc
}

func (h h2Stream) Close() error {
	h.cancel()
	return h.body.Close()
}

// connectH2 is connect over the stream's HTTP/2 transport: the same
// request, Last-Event-ID included, and the same wait for the first block.
func (s *stream) connectH2(ctx context.Context, target *url.URL, header []string) error {
	ctx, cancel := context.WithCancel(ctx)
	timeout := time.AfterFunc(connectTimeout, cancel) // the bare connections' deadline
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		cancel()
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	for _, h := range header {
		name, value, _ := strings.Cut(s.header(h), ":")
		req.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	if s.lastID != "" {
		req.Header.Set("Last-Event-ID", s.lastID)
	}
	resp, err := s.h2.RoundTrip(req)
	if err != nil {
		cancel()
		return err
	}
	h := h2Stream{body: resp.Body, cancel: cancel}
	switch {
	case resp.StatusCode != http.StatusOK:
		h.Close()
		return &refusal{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	case resp.ProtoMajor != 2:
		h.Close()
		return errors.New("-h2: the server answered " + resp.Proto + ", not HTTP/2")
	}
	s.conn, s.r = h, bufio.NewReaderSize(resp.Body, 4096)
	if err := s.awaitFirstBlock(); err != nil {
		h.Close()
		return err
	}
	if !timeout.Stop() {
		h.Close()
		return errors.New("waiting for the first event: timed out")
	}
	return nil
}
