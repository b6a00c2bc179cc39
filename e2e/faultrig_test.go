package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/faultproxy"
	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/internal/ssetest"
	"github.com/ssebridge/ssebridge/wire"
)

// The fault rig: one redis-server, a faultproxy in front of it, and the
// ssebridge binary talking to Redis through the proxy only. Resuming SSE
// clients and a retrying publisher run across a fault; the rig collects
// what they saw and checks it at the end, so that a test always completes
// and reports its figures, failing or not (issue 18: the figures before the
// fixes are wanted as much as the verdict).

const (
	faultRedisTimeout = 2 * time.Second
	// faultMargin is the slack allowed past REDIS_TIMEOUT for an answer:
	// a loaded 2-core machine, scheduling, the HTTP round trip.
	faultMargin = 1500 * time.Millisecond
	// faultClientTimeout is how long the rig's HTTP requests may take at
	// all, so that a wait that is not bounded by the server still ends.
	faultClientTimeout = 10 * time.Second
	faultPublishRate   = 50 // per second
	faultMaxInFlight   = 150
	faultMaxTries      = 5
	faultChannel       = "room:f"
	faultToken         = "fault-publish-token"
)

// faultSpec is one test's fault and what it should show.
type faultSpec struct {
	name    string
	streams int
	hold    time.Duration // how long the fault lasts
	begin   func(r *faultRig)
	end     func(r *faultRig)
	// lagMetric: ssebridge_pubsub_lag_seconds must reach 1 s during the
	// fault; lagReadyz: /readyz must say 503 naming the lag; notReady:
	// /readyz must say 503 (for any reason) during the fault.
	lagMetric, lagReadyz, notReady bool
	// notice: a 503 (publish, stream or readyz) must come during the fault.
	notice bool
	vars   map[string]string
}

type faultRig struct {
	t     *testing.T
	spec  faultSpec
	redis *redistest.Server
	rdb   *redis.Client // straight to Redis, not through the proxy
	px    *faultproxy.Proxy
	proc  *proc
	url   string
	hc    *http.Client

	began, faultStart, faultEnd time.Time

	mu       sync.Mutex
	failures []string
	// publisher
	acked       map[int]ack
	attempted   int
	gaveUp      int
	skipped     int
	tries       int
	slowPub     int
	maxPub      time.Duration
	pubStatus   map[string]int
	no503Header int
	first503    time.Time          // first 503 (publish or stream) after faultStart
	first503By  string             // which request, and when it began
	final       map[string]float64 // /metrics before the rig's own streams end
	// streams
	clients  []*faultClient
	slowOpen int
	maxOpen  time.Duration
	opens    int
	// monitor
	maxLag        float64
	lagPresent    bool
	readyzSeen    map[string]int // "status body" during the fault (and 5 s after)
	firstNotReady time.Time
	notReadyLag   bool
}

type ack struct {
	id         string
	start, end time.Time
	tries      int
}

// faultClient is one resuming SSE client: it reconnects with Last-Event-ID
// after any end, as a browser's EventSource does.
type faultClient struct {
	i     int
	token string

	mu       sync.Mutex
	last     string
	prev     wire.Cursor
	idSeen   map[string]bool
	seqIDs   map[int]string
	arrived  map[int]time.Time
	resets   int
	ends     int
	dupID    int
	dupBody  int
	outOrder int
	refused  map[int]int
}

func startFaultRig(t *testing.T, spec faultSpec) *faultRig {
	t.Helper()
	r := &faultRig{t: t, spec: spec, acked: map[int]ack{}, pubStatus: map[string]int{}, readyzSeen: map[string]int{}}
	r.redis = redistest.Start(t)
	r.rdb = r.redis.Client()
	r.px = faultproxy.Start(t, r.redis.Addr)
	vars := map[string]string{
		"REDIS_URL":            "redis://" + r.px.Addr(),
		"PUBLISH_TOKEN":        faultToken,
		"REDIS_TIMEOUT":        faultRedisTimeout.String(),
		"PUBSUB_LAG_LIMIT":     "5s",
		"IDEMPOTENCY_WINDOW":   "5m",
		"HISTORY_MAXLEN":       "100000", // the whole run: a reset would be correct, not a loss, past it
		"MAX_STREAMS_PER_USER": "1000",
		"HEARTBEAT_INTERVAL":   "2s",
	}
	for k, v := range spec.vars {
		vars[k] = v
	}
	// Built without -race: the figures are timings, and seven instances
	// under the race detector on two cores would measure the detector.
	r.proc = startPlainBinary(t, vars)
	r.url = "http://" + r.proc.addr
	r.hc = &http.Client{Timeout: faultClientTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: faultMaxInFlight}}
	t.Cleanup(r.hc.CloseIdleConnections)
	eventually(t, 20*time.Second, "readyz to answer 200", func() bool {
		resp, err := r.hc.Get(r.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return r
}

// fail records a failed check; the test goes on and reports it at the end.
func (r *faultRig) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

func (r *faultRig) saw503(what string, began time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := time.Now()
	if !r.faultStart.IsZero() && !at.Before(r.faultStart) && r.first503.IsZero() {
		r.first503 = at
		r.first503By = fmt.Sprintf("%s begun at fault%+.1fs", what, began.Sub(r.faultStart).Seconds())
	}
}

// run drives the whole test: streams, monitor, publisher, the fault on its
// schedule, the drain; then checks and reports.
func (r *faultRig) run() {
	t := r.t
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.began = time.Now()

	for i := range r.spec.streams {
		c := &faultClient{i: i, token: fmt.Sprintf("fault%d", i), idSeen: map[string]bool{},
			seqIDs: map[int]string{}, arrived: map[int]time.Time{}, refused: map[int]int{}}
		setSession(t, r.rdb, "session:"+c.token, fmt.Sprintf("u%d", i%10), "f")
		r.clients = append(r.clients, c)
	}
	// Every stream is open (its ready event read) before anything is
	// published: every acknowledged event is owed to every stream.
	var clients sync.WaitGroup
	ready := make(chan struct{}, len(r.clients))
	for _, c := range r.clients {
		clients.Go(func() { r.stream(ctx, c, ready) })
	}
	for range r.clients {
		select {
		case <-ready:
		case <-time.After(30 * time.Second):
			t.Fatal("streams not all open within 30s")
		}
	}
	var bg sync.WaitGroup
	bg.Go(func() { r.monitor(ctx) })
	stopPub, pubDone := make(chan struct{}), make(chan struct{})
	var pubs sync.WaitGroup
	go func() { defer close(pubDone); r.publisher(stopPub, &pubs) }()

	// The schedule: sleeps here are the fault's length, not waits for
	// something to happen.
	time.Sleep(3 * time.Second)
	r.mu.Lock()
	r.faultStart = time.Now()
	r.mu.Unlock()
	t.Logf("fault %s: begins (%s, at %s)", r.spec.name, time.Since(r.began).Round(time.Millisecond), r.faultStart.UTC().Format("15:04:05.000"))
	r.spec.begin(r)
	time.Sleep(r.spec.hold)
	r.spec.end(r)
	r.mu.Lock()
	r.faultEnd = time.Now()
	r.mu.Unlock()
	t.Logf("fault %s: ends (%s, at %s)", r.spec.name, time.Since(r.began).Round(time.Millisecond), r.faultEnd.UTC().Format("15:04:05.000"))
	time.Sleep(8 * time.Second)
	close(stopPub)
	<-pubDone   // no pubs.Go after this: pubs.Wait may start
	pubs.Wait() // each publish ends within faultMaxTries × faultClientTimeout and its pauses
	t.Logf("fault %s: publishing ended (%s)", r.spec.name, time.Since(r.began).Round(time.Millisecond))

	// The drain: every stream gets what it is owed, or 20 s pass. A state
	// to poll (no event says "all delivered").
	drainEnd := time.Now().Add(20 * time.Second)
	for time.Now().Before(drainEnd) && !r.allDelivered() {
		time.Sleep(100 * time.Millisecond)
	}
	r.final = r.scrape()
	cancel()
	clients.Wait()
	bg.Wait()
	r.report()
}

// stream is one client's life: open (resuming from its last id), read
// until the stream ends, open again, until ctx ends.
func (r *faultRig) stream(ctx context.Context, c *faultClient, ready chan<- struct{}) {
	first := true
	for ctx.Err() == nil {
		h := bearer(c.token)
		c.mu.Lock()
		if c.last != "" {
			h.Set("Last-Event-ID", c.last)
		}
		c.mu.Unlock()
		// The open is bounded by faultClientTimeout whatever the server
		// does; how long it took is what is checked.
		octx, ocancel := context.WithCancel(ctx)
		timer := time.AfterFunc(faultClientTimeout, ocancel)
		began := time.Now()
		s, err := ssetest.Open(octx, r.url+"/events", h)
		took := time.Since(began)
		opened := timer.Stop()
		r.mu.Lock()
		r.opens++
		r.maxOpen = max(r.maxOpen, took)
		if took > faultRedisTimeout+faultMargin {
			r.slowOpen++
		}
		r.mu.Unlock()
		if err != nil {
			ocancel()
			if se, ok := err.(*ssetest.StatusError); ok {
				c.mu.Lock()
				c.refused[se.Response.StatusCode]++
				c.mu.Unlock()
				if se.Response.StatusCode == http.StatusServiceUnavailable {
					r.saw503("GET /events", began)
					if se.Response.Header.Get("Retry-After") == "" {
						r.mu.Lock()
						r.no503Header++
						r.mu.Unlock()
					}
				}
			} else if !opened {
				c.mu.Lock()
				c.refused[0]++ // no answer within faultClientTimeout
				c.mu.Unlock()
			}
			pause(ctx, 500*time.Millisecond)
			continue
		}
		for {
			ev, err := s.Next(500 * time.Millisecond)
			if err == ssetest.ErrTimeout {
				if ctx.Err() != nil {
					break
				}
				continue
			}
			if err != nil {
				if ctx.Err() == nil { // not the rig's own teardown
					c.mu.Lock()
					c.ends++
					c.mu.Unlock()
				}
				break
			}
			if ev.Event == "ready" && first {
				first = false
				ready <- struct{}{}
			}
			c.take(ev)
		}
		s.Close()
		ocancel()
		pause(ctx, 300*time.Millisecond)
	}
}

// pause waits d and a jitter of up to d, or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d + rand.N(d))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func (c *faultClient) take(ev ssetest.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ev.HasID {
		c.last = ev.ID
	}
	switch ev.Event {
	case "reset":
		c.resets++
		c.prev = wire.Cursor{}
	case "n":
		var d struct{ S int }
		if err := json.Unmarshal([]byte(ev.Data), &d); err != nil {
			return
		}
		if c.idSeen[ev.ID] {
			c.dupID++
			return
		}
		c.idSeen[ev.ID] = true
		if old, ok := c.seqIDs[d.S]; ok && old != ev.ID {
			c.dupBody++ // published twice: a retry that was not deduplicated
			return
		}
		c.seqIDs[d.S] = ev.ID
		c.arrived[d.S] = time.Now()
		if cur, err := wire.ParseCursor(ev.ID); err == nil {
			if !c.prev.IsZero() && !c.prev.Before(cur) {
				c.outOrder++
			}
			c.prev = cur
		}
	}
}

// publisher publishes at faultPublishRate until stop, each publish in its
// own goroutine (a publish held by the fault must not slow the others),
// at most faultMaxInFlight at once: past it a tick is skipped, and counted.
func (r *faultRig) publisher(stop <-chan struct{}, pubs *sync.WaitGroup) {
	tick := time.NewTicker(time.Second / faultPublishRate)
	defer tick.Stop()
	var inflight atomic.Int64
	for seq := 0; ; seq++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		if inflight.Load() >= faultMaxInFlight {
			r.mu.Lock()
			r.skipped++
			r.mu.Unlock()
			continue
		}
		inflight.Add(1)
		r.mu.Lock()
		r.attempted++
		r.mu.Unlock()
		pubs.Go(func() {
			defer inflight.Add(-1)
			r.publishOne(seq)
		})
	}
}

// publishOne publishes seq, retrying a 503 or a timeout with the same
// Idempotency-Key, as a careful backend would; it gives up after
// faultMaxTries and records it.
func (r *faultRig) publishOne(seq int) {
	body := fmt.Sprintf(`{"channel":%q,"event":"n","data":{"s":%d}}`, faultChannel, seq)
	key := fmt.Sprintf("%s-%d", r.spec.name, seq)
	start := time.Now()
	for try := 1; try <= faultMaxTries; try++ {
		req, _ := http.NewRequest(http.MethodPost, r.url+"/publish", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+faultToken)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		began := time.Now()
		resp, err := r.hc.Do(req)
		took := time.Since(began)
		status := "timeout"
		var b []byte
		if err == nil {
			b, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			status = strconv.Itoa(resp.StatusCode)
		}
		r.mu.Lock()
		r.tries++
		r.pubStatus[status]++
		r.maxPub = max(r.maxPub, took)
		if took > faultRedisTimeout+faultMargin {
			r.slowPub++
		}
		r.mu.Unlock()
		switch {
		case err == nil && resp.StatusCode == http.StatusOK:
			var out struct{ ID string }
			_ = json.Unmarshal(b, &out)
			r.mu.Lock()
			r.acked[seq] = ack{id: out.ID, start: start, end: time.Now(), tries: try}
			r.mu.Unlock()
			return
		case err == nil && resp.StatusCode == http.StatusServiceUnavailable:
			r.saw503("POST /publish", began)
			if resp.Header.Get("Retry-After") == "" {
				r.mu.Lock()
				r.no503Header++
				r.mu.Unlock()
			}
		case err == nil:
			r.fail("publish %d: %d %s", seq, resp.StatusCode, b)
			return
		}
		time.Sleep(time.Duration(try) * 250 * time.Millisecond)
	}
	r.mu.Lock()
	r.gaveUp++
	r.mu.Unlock()
}

// monitor reads /readyz and /metrics every 250 ms: the lag, and when the
// instance says it is not ready.
func (r *faultRig) monitor(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		r.mu.Lock()
		window := !r.faultStart.IsZero() && (r.faultEnd.IsZero() || now.Before(r.faultEnd.Add(5*time.Second)))
		r.mu.Unlock()
		if resp, err := r.hc.Get(r.url + "/readyz"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			r.mu.Lock()
			if window {
				r.readyzSeen[fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))]++
				if resp.StatusCode != http.StatusOK {
					if r.firstNotReady.IsZero() {
						r.firstNotReady = time.Now() // when it said so
					}
					if strings.Contains(strings.ToLower(string(b)), "lag") {
						r.notReadyLag = true
					}
				}
			}
			r.mu.Unlock()
		}
		if lag, ok := r.scrape()["ssebridge_pubsub_lag_seconds"]; ok {
			r.mu.Lock()
			r.lagPresent = true
			if window {
				r.maxLag = max(r.maxLag, lag)
			}
			r.mu.Unlock()
		}
	}
}

// scrape reads /metrics into series → value (the series as exposed, labels
// included).
func (r *faultRig) scrape() map[string]float64 {
	out := map[string]float64{}
	resp, err := r.hc.Get(r.url + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// allDelivered reports whether every stream without a reset has every
// acknowledged event.
func (r *faultRig) allDelivered() bool {
	r.mu.Lock()
	seqs := make([]int, 0, len(r.acked))
	for s := range r.acked {
		seqs = append(seqs, s)
	}
	r.mu.Unlock()
	for _, c := range r.clients {
		c.mu.Lock()
		ok := c.resets > 0
		if !ok {
			ok = true
			for _, s := range seqs {
				if _, got := c.seqIDs[s]; !got {
					ok = false
					break
				}
			}
		}
		c.mu.Unlock()
		if !ok {
			return false
		}
	}
	return true
}

func secs(d time.Duration) string {
	if d < 0 {
		return "none"
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// report computes the figures, logs them on one FAULT line, and fails the
// test with every check that did not hold.
func (r *faultRig) report() {
	t := r.t
	m := r.final
	r.mu.Lock()
	defer r.mu.Unlock()
	var lost, excused, dupID, dupBody, resets, ends, outOrder int
	seqs := make([]int, 0, len(r.acked))
	for s := range r.acked {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs)
	refused := map[int]int{}
	for _, c := range r.clients {
		c.mu.Lock()
		missing := 0
		for _, s := range seqs {
			if _, ok := c.seqIDs[s]; !ok {
				missing++
			}
		}
		if c.resets > 0 {
			excused += missing
		} else {
			lost += missing
		}
		dupID += c.dupID
		dupBody += c.dupBody
		resets += c.resets
		ends += c.ends
		outOrder += c.outOrder
		for k, v := range c.refused {
			refused[k] += v
		}
		c.mu.Unlock()
	}

	// Time to notice: the fault's start to the first 503 or not-ready.
	notice := time.Duration(-1)
	for _, at := range []time.Time{r.first503, r.firstNotReady} {
		if !at.IsZero() && (notice < 0 || at.Sub(r.faultStart) < notice) {
			notice = at.Sub(r.faultStart)
		}
	}
	// Time to recover: the fault's end to the arrival, at the last
	// stream, of the first event published after it that every stream
	// got live (within 1 s of its acknowledgement).
	recover := time.Duration(-1)
	for _, s := range seqs {
		a := r.acked[s]
		if a.start.Before(r.faultEnd) {
			continue
		}
		var last time.Time
		all := true
		for _, c := range r.clients {
			c.mu.Lock()
			at, ok := c.arrived[s]
			c.mu.Unlock()
			if !ok || at.Sub(a.end) > time.Second {
				all = false
				break
			}
			last = maxTime(last, at)
		}
		if all {
			recover = last.Sub(r.faultEnd)
			break
		}
	}
	closed := metricFamily(m, "ssebridge_streams_closed_total")
	lag := "absent"
	if r.lagPresent {
		lag = fmt.Sprintf("%.1fs", r.maxLag)
	}
	t.Logf("FAULT name=%s streams=%d published=%d acked=%d gaveup=%d skipped=%d tries=%d lost=%d excused=%d dup=%d dupretry=%d order=%d resets=%d ended=%d closed=%s notice=%s recover=%s maxpublish=%s slowpublish=%d maxopen=%s slowopen=%d opens=%d refused=%s pubstatus=%s maxlag=%s reconnects=%.0f",
		r.spec.name, len(r.clients), r.attempted, len(r.acked), r.gaveUp, r.skipped, r.tries, lost, excused, dupID, dupBody, outOrder, resets, ends, closed,
		secs(notice), secs(recover), secs(r.maxPub), r.slowPub, secs(r.maxOpen), r.slowOpen, r.opens,
		fmtCounts(refused), fmtCounts(r.pubStatus), lag, m["ssebridge_redis_reconnects_total"])
	t.Logf("fault %s: first 503: %s; readyz during the fault: %v", r.spec.name, r.first503By, r.readyzSeen)

	fails := slices.Clone(r.failures)
	bound := faultRedisTimeout + faultMargin
	if len(r.acked) == 0 {
		fails = append(fails, "no publish was acknowledged")
	}
	if lost > 0 {
		fails = append(fails, fmt.Sprintf("lost: %d deliveries of acknowledged events missing on streams that got no reset", lost))
	}
	if dupID > 0 {
		fails = append(fails, fmt.Sprintf("duplicated: %d ids delivered twice on one stream", dupID))
	}
	if dupBody > 0 {
		fails = append(fails, fmt.Sprintf("duplicated by retry: %d deliveries of an event body already delivered under another id (Idempotency-Key not honoured)", dupBody))
	}
	if outOrder > 0 {
		fails = append(fails, fmt.Sprintf("order: %d events after a later id on the same stream", outOrder))
	}
	if r.slowPub > 0 {
		fails = append(fails, fmt.Sprintf("bounded wait: %d of %d POST /publish took over %v (longest %v; %v is REDIS_TIMEOUT + %v)", r.slowPub, r.tries, bound, r.maxPub.Round(time.Millisecond), bound, faultMargin))
	}
	if r.slowOpen > 0 {
		fails = append(fails, fmt.Sprintf("bounded wait: %d of %d GET /events took over %v to answer (longest %v)", r.slowOpen, r.opens, bound, r.maxOpen.Round(time.Millisecond)))
	}
	// The rig's readers keep up with 50 small events/s: a stream ended as
	// slow was ended by a burst (the backlog after the fault), not by its
	// reader.
	if slow := m[`ssebridge_streams_closed_total{reason="slow"}`]; slow > 0 {
		fails = append(fails, fmt.Sprintf("%.0f streams ended as slow by the burst after the fault", slow))
	}
	if r.no503Header > 0 {
		fails = append(fails, fmt.Sprintf("%d answers 503 without Retry-After", r.no503Header))
	}
	if r.spec.notice && (notice < 0 || r.faultStart.Add(notice).After(r.faultEnd)) {
		fails = append(fails, fmt.Sprintf("notice: no 503 and no readyz not ready during the fault (first at %s)", secs(notice)))
	}
	if recover < 0 {
		fails = append(fails, "recover: no event published after the fault reached every stream live (within 1 s)")
	}
	if r.spec.lagMetric && (!r.lagPresent || r.maxLag < 1) {
		fails = append(fails, fmt.Sprintf("lag: ssebridge_pubsub_lag_seconds %s during the fault, want ≥ 1s", lag))
	}
	if r.spec.lagReadyz && !r.notReadyLag {
		fails = append(fails, "lag: /readyz never answered 503 naming the lag during the fault")
	}
	if r.spec.notReady && r.firstNotReady.IsZero() {
		fails = append(fails, "readyz: never 503 during the fault")
	}
	for _, f := range fails {
		t.Errorf("fault %s: %s", r.spec.name, f)
	}
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// metricFamily is a family's samples as reason=value,… (label values only).
func metricFamily(m map[string]float64, name string) string {
	var parts []string
	for k, v := range m {
		if rest, ok := strings.CutPrefix(k, name+"{"); ok {
			_, val, _ := strings.Cut(strings.TrimSuffix(rest, "}"), "=")
			parts = append(parts, fmt.Sprintf("%s:%.0f", strings.Trim(val, `"`), v))
		}
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

func fmtCounts[K cmp.Ordered](m map[K]int) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		name := fmt.Sprint(k)
		if name == "0" {
			name = "noanswer"
		}
		parts = append(parts, fmt.Sprintf("%s:%d", name, m[k]))
	}
	return strings.Join(parts, ",")
}
