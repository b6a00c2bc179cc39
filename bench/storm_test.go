package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

// TestReconnectHonoursRetryAfter: a stream refused with 429 and
// Retry-After comes back once the server lets it, with its Last-Event-ID,
// and the refusal is counted by status; a 401 is final. The same over
// plain HTTP, HTTP/1.1 over TLS and HTTP/2 (whose streams, the refused
// ones included, share one connection).
func TestReconnectHonoursRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tls   bool
		h2    bool
		proto int // the HTTP major version the server should see
	}{
		{name: "plain", proto: 1},
		{name: "tls-h1", tls: true, proto: 1},
		{name: "tls-h2", tls: true, h2: true, proto: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tries, conns atomic.Int32
			var lastID atomic.Value
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.ProtoMajor != tc.proto {
					t.Errorf("request over %s, want HTTP/%d", r.Proto, tc.proto)
				}
				if r.URL.Path == "/denied" {
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				if tries.Add(1) == 1 {
					w.Header().Set("Retry-After", "0")
					w.WriteHeader(http.StatusTooManyRequests)
					return
				}
				lastID.Store(r.Header.Get("Last-Event-ID"))
				w.Header().Set("Content-Type", "text/event-stream")
				w.Write([]byte("id: 7\nevent: ready\ndata: {}\n\n"))
				w.(http.Flusher).Flush()
				<-r.Context().Done()
			}))
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					conns.Add(1)
				}
			}
			if tc.tls {
				srv.EnableHTTP2 = true
				srv.StartTLS()
			} else {
				srv.Start()
			}
			defer srv.Close()
			u, _ := url.Parse(srv.URL + "/events")
			var h2 *http.Transport
			if tc.h2 {
				h2 = h2Transports(config{n: 1}, u, 1)[0]
				defer h2.CloseIdleConnections()
			}
			ctx := context.Background()

			s := &stream{i: 1, h2: h2, lastID: "5", got: make([]uint64, 1)}
			live, refusals, errs := reconnect(ctx, s, u, u.RequestURI(), nil, nil, time.Now().Add(10*time.Second))
			if !live || errs != 0 || len(refusals) != 1 || refusals[0].status != 429 || refusals[0].retryAfter != "0" {
				t.Fatalf("live %v, refusals %+v, errors %d; want live after one 429 with Retry-After", live, refusals, errs)
			}
			defer s.conn.Close()
			if got := lastID.Load(); got != "5" {
				t.Errorf("Last-Event-ID %q, want 5", got)
			}
			if s.lastID != "7" {
				t.Errorf("the ready block's id %q was not taken, want 7", s.lastID)
			}

			d, _ := url.Parse(srv.URL + "/denied")
			live, refusals, _ = reconnect(ctx, &stream{i: 2, h2: h2}, d, d.RequestURI(), nil, nil, time.Now().Add(10*time.Second))
			if live || len(refusals) != 1 || refusals[0].status != 401 {
				t.Fatalf("live %v, refusals %+v; want one final 401", live, refusals)
			}
			if got := conns.Load(); tc.h2 && got != 1 {
				t.Errorf("%d connections for 3 HTTP/2 requests, want 1", got)
			}
		})
	}
}
