package store

// The lag probe: receive's watchdog writes a PING on the connection every
// probe interval and drops a connection that is stalled or too far behind;
// lagMeter turns the answers into the connection's lag.

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// lagError is a connection dropped for being too far behind.
type lagError struct{ lag, limit time.Duration }

func (e *lagError) Error() string {
	return fmt.Sprintf("%.1fs behind, past PUBSUB_LAG_LIMIT %v", e.lag.Seconds(), e.limit)
}

// watch is receive's watchdog: every probe interval it drops a connection
// whose probe has gone unanswered for 2 ping intervals, or that is further
// behind than h.lagLimit, and otherwise writes the next probe.
func (c *subConn) watch(ctx context.Context, h receiveHooks) {
	deadAfter := 2 * c.every
	t := time.NewTicker(c.probeEvery())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ps := c.current()
		if ps == nil || c.recovering.Load() {
			continue // being made again, or its gap recovered
		}
		now := time.Now()
		if age := c.lag.oldest(now); age > deadAfter {
			// Redis is hung, or the path to it is gone without a reset.
			c.drop(ps, fmt.Errorf("no answer to a ping for %v", age.Round(time.Millisecond)))
			continue
		}
		if lag := c.lag.lag(now); h.lagLimit > 0 && lag > h.lagLimit && c.connected.Load() {
			// Draining the backlog through the streams' queues would take
			// longer than reading it from history on a new connection.
			c.drop(ps, &lagError{lag: lag, limit: h.lagLimit})
			continue
		}
		// Counted before it is written: its answer may be read first.
		seq := c.lag.sent(now)
		pctx, cancel := context.WithTimeout(ctx, c.dialTimeout())
		err := h.probe(pctx, ps, "p"+strconv.FormatUint(seq, 10))
		cancel()
		if err != nil && ctx.Err() == nil {
			c.drop(ps, fmt.Errorf("writing a ping: %w", err))
		}
	}
}

// drop closes ps, if it is still the connection in place, for cause: the
// read under way ends, and receive makes a new one.
func (c *subConn) drop(ps *redis.PubSub, cause error) {
	c.mu.Lock()
	if c.ps != ps {
		c.mu.Unlock()
		return
	}
	c.dropped = cause
	c.mu.Unlock()
	_ = ps.Close()
}

// lagMeter measures the lag with probes: a PING written on the pub/sub
// connection is answered behind everything Redis queued for the
// connection before it, so its round trip is how far behind the reader
// is, whatever the clocks of the hosts say.
type lagMeter struct {
	mu     sync.Mutex
	seq    uint64
	out    []probe // written, unanswered, oldest first
	rtt    time.Duration
	behind time.Time // when the oldest unanswered probe was sent, or the connection lost; zero: none
}

type probe struct {
	seq  uint64
	sent time.Time
}

// lag is the last answered probe's round trip, or the age of the oldest
// unanswered one if more.
func (m *lagMeter) lag(now time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.rtt
	if !m.behind.IsZero() {
		d = max(d, now.Sub(m.behind))
	}
	return d
}

// oldest is the age of the oldest probe unanswered on this connection.
func (m *lagMeter) oldest(now time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.out) == 0 {
		return 0
	}
	return now.Sub(m.out[0].sent)
}

// sent counts a new probe, sent now, and returns its number.
func (m *lagMeter) sent(now time.Time) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	m.out = append(m.out, probe{m.seq, now})
	if m.behind.IsZero() {
		m.behind = now
	}
	return m.seq
}

// answered takes seq's reply: Redis answers in order, so the probes
// before it are answered too.
func (m *lagMeter) answered(seq uint64, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := 0
	for i < len(m.out) && m.out[i].seq <= seq {
		if m.out[i].seq == seq {
			m.rtt = now.Sub(m.out[i].sent)
		}
		i++
	}
	if i == 0 {
		return // a probe of a connection since replaced, or written before a catch-up
	}
	m.out = m.out[i:]
	m.behind = time.Time{}
	if len(m.out) > 0 {
		m.behind = m.out[0].sent
	}
}

// lost: the probes out will never be answered; the feed stays behind
// from the oldest of them (or from now) until it is caught up again.
func (m *lagMeter) lost(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.out = nil
	if m.behind.IsZero() {
		m.behind = now
	}
}

// caughtUp: a new connection is up and the gap recovered.
func (m *lagMeter) caughtUp() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.out = nil
	m.rtt = 0
	m.behind = time.Time{}
}
