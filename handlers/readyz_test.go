package handlers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestReadyz: /readyz says why it is not ready in plain words; the detail
// (Redis's address, the dial error) goes to the log only, at most once a
// minute per reason.
func TestReadyz(t *testing.T) {
	var failure atomic.Pointer[error]
	s := newServer(t, setup{options: func(o *Options) {
		o.Ready = func(context.Context) error {
			if p := failure.Load(); p != nil {
				return *p
			}
			return nil
		}
	}})
	fail := func(err error) { failure.Store(&err) }
	dial := fmt.Errorf("redis: %w", errors.New("dial tcp 10.9.8.7:6379: connect: connection refused"))
	tests := []struct {
		name   string
		err    error
		status int
		body   string
	}{
		{"ready", nil, 200, `{"status":"ready"}`},
		{"redis down", dial, 503, `{"error":"redis unreachable"}`},
		{"not subscribed", ErrNotSubscribed, 503, `{"error":"redis pub/sub not subscribed"}`},
		{"redis slow", fmt.Errorf("%w: i/o timeout", ErrRedisSlow), 503, `{"error":"redis slow"}`},
		{"pub/sub error wrapped", fmt.Errorf("feed: %w", ErrNotSubscribed), 503, `{"error":"redis pub/sub not subscribed"}`},
		{"pub/sub lags", &LagError{Lag: 7240 * time.Millisecond, Limit: 5 * time.Second}, 503, `{"error":"redis pub/sub lags 7.2s behind (PUBSUB_LAG_LIMIT 5s)"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fail(tt.err)
			resp, body := s.do("GET", "/readyz", nil, "")
			if resp.StatusCode != tt.status || body != tt.body {
				t.Fatalf("got %d %s, want %d %s", resp.StatusCode, body, tt.status, tt.body)
			}
		})
	}

	fail(dial)
	for range 3 {
		s.do("GET", "/readyz", nil, "")
	}
	lines := s.log.lines("level=WARN", "10.9.8.7:6379")
	if len(lines) != 1 {
		t.Fatalf("%d log lines with the dial error, want 1 (one a minute):\n%s", len(lines), s.log)
	}
	s.clock.Advance(61 * time.Second)
	s.do("GET", "/readyz", nil, "")
	lines = s.log.lines("level=WARN", "10.9.8.7:6379")
	if len(lines) != 2 || !strings.Contains(lines[1], "suppressed=3") {
		t.Fatalf("a minute later, want a second line that counts the 3 held back:\n%s", s.log)
	}
}
