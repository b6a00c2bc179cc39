package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/ssebridge/ssebridge/handlers"
	"github.com/ssebridge/ssebridge/stream"
)

// serve listens on LISTEN_ADDR and serves e until ctx ends, then shuts
// down within cfg.ShutdownTimeout; stop stops the workers (feed, marks,
// rechecks) once the streams are gone.
func serve(ctx context.Context, cfg Config, log *slog.Logger, listening func(addr string), tlsConfig *tls.Config, e http.Handler, hub *stream.Hub, openings *stream.Openings, stop func()) error {
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		stop()
		return fmt.Errorf("LISTEN_ADDR: %w", err)
	}
	var connState func(net.Conn, http.ConnState)
	var connContext func(context.Context, net.Conn) context.Context
	if openings != nil {
		ln = openings.Listener(ln)
		connState, connContext = openings.ConnState, openings.ConnContext
		e = openings.Handler(handlers.OpensStream, e)
	}
	srv := &http.Server{
		Handler:           e,
		TLSConfig:         tlsConfig, // nil: plain HTTP
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		// No WriteTimeout: it would cut every stream. Each write of a stream
		// has its own deadline instead (WRITE_TIMEOUT).
		// net/http's own complaints (TLS handshakes that fail, …) go to the
		// same structured log, at debug and once a minute per kind: scanners
		// make plenty of them.
		ErrorLog:    newHTTPLogger(log),
		ConnState:   connState,
		ConnContext: connContext,
	}

	if cfg.PprofAddr != "" {
		// On its own listener, never on the public one.
		go func() { log.Warn("pprof stopped", "err", http.ListenAndServe(cfg.PprofAddr, pprofMux())) }()
	}

	serveErr := make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			// ServeTLS adds "h2" to the protocols offered: HTTP/2 with no
			// more set-up. Streams on it use net/http's writer (Hub.Serve).
			serveErr <- srv.ServeTLS(ln, "", "")
			return
		}
		serveErr <- srv.Serve(ln)
	}()
	log.Info("ssebridge listening", "addr", ln.Addr().String(), "tls", tlsConfig != nil, "session_cookie", cfg.SessionCookie)
	if listening != nil {
		listening(ln.Addr().String())
	}

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	shutdown(cfg, log, srv, hub)
	stop()
	return nil
}

// shutdown ends the streams within cfg.ShutdownTimeout: they are told to
// reconnect, and what is still open at the deadline is cut.
func shutdown(cfg Config, log *slog.Logger, srv *http.Server, hub *stream.Hub) {
	log.Info("shutting down: streams are told to reconnect", "streams", hub.Len(), "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	hub.Shutdown()
	// Shutdown closes the listener and waits for the requests in flight;
	// streams on connections ssebridge took over are waited for by the hub.
	// At the deadline, both cut what is still open: net/http its own
	// connections, the hub the ones it took over.
	if err := errors.Join(srv.Shutdown(sctx), hub.Wait(sctx)); err != nil {
		_ = srv.Close()
		log.Warn("streams still open at the shutdown deadline were cut", "err", err)
	}
}

// loadTLS reads TLS_CERT_FILE and TLS_KEY_FILE, naming the one at fault;
// nil when neither is set.
func loadTLS(cfg Config) (*tls.Config, error) {
	if cfg.TLSCertFile == "" {
		return nil, nil
	}
	certPEM, err := os.ReadFile(cfg.TLSCertFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_CERT_FILE: %w", err)
	}
	keyPEM, err := os.ReadFile(cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_KEY_FILE: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("TLS_CERT_FILE %s and TLS_KEY_FILE %s: %w", cfg.TLSCertFile, cfg.TLSKeyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
