package e2e

// The soak's measurements: the server's and the test's resources sampled
// every 10 s, the final report and the growth check.

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type soakSample struct {
	at                                  time.Duration
	srvGoroutines, srvFDs, srvRSSKiB    int
	srvStreams                          int
	testGoroutines, testFDs, testRSSKiB int
	testHeapKiB                         int
	open                                int
	published, received                 int
	load1                               float64
	srvCPU, testCPU                     float64 // seconds, cumulative
}

var metricLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$`)

// scrape reads every sample of the server's /metrics.
func (s *soak) scrape() (map[string]float64, error) {
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if g := metricLine.FindStringSubmatch(sc.Text()); g != nil {
			m[g[1]], _ = strconv.ParseFloat(g[2], 64)
		}
	}
	return m, sc.Err()
}

func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func load1() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return f
}

func selfFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

func (s *soak) sample() soakSample {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m, err := s.scrape()
	if err != nil {
		s.problem("scraping /metrics: %v", err)
	}
	return soakSample{
		at:             time.Since(s.start),
		srvGoroutines:  int(m["go_goroutines"]),
		srvFDs:         int(m["process_open_fds"]),
		srvRSSKiB:      int(m["process_resident_memory_bytes"] / 1024),
		srvStreams:     int(m["ssebridge_streams_open"]),
		testGoroutines: runtime.NumGoroutine(),
		testFDs:        selfFDs(),
		testRSSKiB:     rssKiB(s.t, os.Getpid()),
		testHeapKiB:    int(ms.HeapInuse / 1024),
		open:           int(s.open.Load()),
		published:      s.published(),
		received:       int(s.received.Load()),
		load1:          load1(),
		srvCPU:         m["process_cpu_seconds_total"],
		testCPU:        selfCPU(),
	}
}

// row is x as a line of the table; CPU is the share of one core since the
// sample before.
func (x soakSample) row(before soakSample) string {
	cpu := func(now, then float64) float64 {
		if x.at <= before.at {
			return 0
		}
		return 100 * (now - then) / (x.at - before.at).Seconds()
	}
	return fmt.Sprintf("| %4ds | %7d | %6d | %11.1f | %11d | %7.0f | %8d | %7d | %12.1f | %13.1f | %8.0f | %9d | %9d | %9d | %5.1f |",
		int(x.at.Round(time.Second)/time.Second), x.srvGoroutines, x.srvFDs, float64(x.srvRSSKiB)/1024, x.srvStreams,
		cpu(x.srvCPU, before.srvCPU), x.testGoroutines, x.testFDs, float64(x.testRSSKiB)/1024, float64(x.testHeapKiB)/1024,
		cpu(x.testCPU, before.testCPU), x.open, x.published, x.received, x.load1)
}

const soakHeader = "|     t | srv gor | srv fd | srv RSS MiB | srv streams | srv CPU | test gor | test fd | test RSS MiB | test heap MiB | test CPU | test open | published | delivered | load1 |\n" +
	"|------:|--------:|-------:|------------:|------------:|--------:|---------:|--------:|-------------:|--------------:|---------:|----------:|----------:|----------:|------:|"

func (s *soak) report(base, after map[string]float64, up, ready, firstPublished, firstDelivered, killAt time.Duration) {
	t := s.t
	s.mu.Lock()
	defer s.mu.Unlock()
	acked := 0
	foundPublished, notPublished := 0, 0
	for _, id := range s.outcome {
		if id.IsZero() {
			notPublished++
		} else {
			foundPublished++
		}
	}
	for _, d := range s.deferred {
		id, ok := s.outcome[d.event]
		if !ok {
			s.problemLocked("chain %d: failed publish %v: outcome unknown", d.chain, d.event)
		} else if !id.IsZero() && d.floor.Before(id) && id.Before(d.last) {
			s.total.lost++
			s.problemLocked("chain %d: failed publish %v was published (%s) and missed", d.chain, d.event, id)
		}
	}
	n := s.published()
	for p := range s.logs {
		for _, e := range s.logs[p].e[:s.logs[p].n.Load()] {
			if e.acked {
				acked++
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s\n", soakHeader)
	for i, x := range s.samples {
		fmt.Fprintln(&b, x.row(s.samples[max(i-1, 0)]))
	}
	fmt.Fprintf(&b, "\nsoak %v: %d streams (%d users, %d rooms), %d clients in all (%d left and were replaced)\n",
		s.dur, soakUsers*soakStreamsPerUser, soakUsers, soakRooms, s.chains, s.retired.Load())
	fmt.Fprintf(&b, "published: %d durable events acknowledged of %d attempts (%d failed), %.1f/s over the run; %d given up (the publisher over a second behind)\n",
		acked, n, s.pubErrors.Load(), float64(acked)/s.dur.Seconds(), s.givenUp.Load())
	fmt.Fprintf(&b, "failed publishes: %d found in history afterwards (so owed), %d not published\n", foundPublished, notPublished)
	fmt.Fprintf(&b, "delivered: %d events to the clients; owed %d; lost %d, duplicated %d, out of order %d, foreign %d, mismatched %d; resets %d\n",
		s.received.Load(), s.ownedSeen, s.total.lost, s.total.dup, s.total.disorder, s.total.foreign, s.total.mismatch, s.total.resets)
	fmt.Fprintf(&b, "streams: %d opened, %d of them resumed with Last-Event-ID, %d ended by the server; not caught up %d; leaving clients that missed their target %d\n",
		s.opens.Load(), s.resumes.Load(), s.srvEnded.Load(), s.uncaught, s.retireMiss.Load())
	fmt.Fprintf(&b, "refused or failed opens: %v\n", sortedCounts(s.refused))
	fmt.Fprintf(&b, "resets by data: %v at %v\n", sortedCounts(s.resetWhy), s.resetAt)
	fmt.Fprintf(&b, "Redis restart at %v: Redis answering after %v, /readyz 200 after %v, first publish acknowledged after %v, first of those delivered after %v\n",
		killAt.Round(time.Second), up.Round(time.Millisecond), ready.Round(time.Millisecond), firstPublished.Round(time.Millisecond), firstDelivered.Round(time.Millisecond))
	fmt.Fprintf(&b, "server counters:\n")
	var keys []string
	for k := range after {
		if strings.HasPrefix(k, "ssebridge_") || k == "go_goroutines" || k == "process_open_fds" || k == "process_resident_memory_bytes" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if after[k] != 0 {
			fmt.Fprintf(&b, "  %s %v\n", k, after[k])
		}
	}
	t.Log(b.String())

	if s.total.lost != 0 || s.total.dup != 0 || s.total.disorder != 0 || s.total.foreign != 0 || s.total.mismatch != 0 {
		t.Errorf("lost %d, duplicated %d, out of order %d, foreign %d, mismatched %d: want none",
			s.total.lost, s.total.dup, s.total.disorder, s.total.foreign, s.total.mismatch)
	}
	if s.uncaught != 0 || s.retireMiss.Load() != 0 {
		t.Errorf("%d clients did not catch up, %d leaving clients did not see their last event", s.uncaught, s.retireMiss.Load())
	}
	if s.total.resets != 0 {
		t.Errorf("%d resets (%v at %v); want none: AOF keeps the history across the restart", s.total.resets, s.resetWhy, s.resetAt)
	}
	if s.problems > 0 {
		t.Errorf("%d problems (the first 30 are logged above)", s.problems)
	}
	if after["ssebridge_streams_open"] != 0 || after["go_goroutines"] > base["go_goroutines"]+10 || after["process_open_fds"] > base["process_open_fds"]+10 {
		t.Errorf("with every stream closed the server has %v streams, %v goroutines, %v fds; before the first: %v goroutines, %v fds",
			after["ssebridge_streams_open"], after["go_goroutines"], after["process_open_fds"], base["go_goroutines"], base["process_open_fds"])
	}
	s.checkGrowth()
}

// checkGrowth compares the last third of the run with its first (the
// warm-up): see RELIABILITY.md for the thresholds.
func (s *soak) checkGrowth() {
	t := s.t
	var warm, late []soakSample
	for _, x := range s.samples {
		switch {
		case x.at <= s.dur/3:
			warm = append(warm, x)
		case x.at >= s.dur*2/3 && x.at <= s.dur:
			late = append(late, x)
		}
	}
	if len(warm) == 0 || len(late) == 0 {
		t.Errorf("too few samples: %d in the warm-up, %d in the last third", len(warm), len(late))
		return
	}
	peak := func(xs []soakSample, f func(soakSample) int) int {
		m := 0
		for _, x := range xs {
			m = max(m, f(x))
		}
		return m
	}
	checks := []struct {
		what   string
		f      func(soakSample) int
		factor float64
		plus   int
	}{
		{"server goroutines", func(x soakSample) int { return x.srvGoroutines }, 1.1, 50},
		{"server open fds", func(x soakSample) int { return x.srvFDs }, 1.1, 20},
		{"server RSS KiB", func(x soakSample) int { return x.srvRSSKiB }, 1.25, 0},
		{"test goroutines", func(x soakSample) int { return x.testGoroutines }, 1.1, 50},
		{"test open fds", func(x soakSample) int { return x.testFDs }, 1.1, 20},
	}
	for _, c := range checks {
		w, l := peak(warm, c.f), peak(late, c.f)
		limit := int(float64(w)*c.factor) + c.plus
		t.Logf("growth: %s: warm-up max %d, last third max %d, limit %d", c.what, w, l, limit)
		if l > limit {
			t.Errorf("%s grew: last third's max %d over %d (warm-up max %d × %.2f + %d)", c.what, l, limit, w, c.factor, c.plus)
		}
	}
}

func sortedCounts(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return "{" + strings.Join(parts, "; ") + "}"
}
