package main

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"time"
)

// percentiles returns p50, p90, p99 and the maximum of latencies in µs.
func percentiles(us []int32) (p50, p90, p99, max time.Duration) {
	if len(us) == 0 {
		return
	}
	slices.Sort(us)
	at := func(q float64) time.Duration {
		return time.Duration(us[int(q*float64(len(us)-1))]) * time.Microsecond
	}
	return at(0.50), at(0.90), at(0.99), at(1)
}

var vmRSS = regexp.MustCompile(`VmRSS:\s+(\d+) kB`)

// rssKiB reads a process's resident memory from /proc; 0 if unknown.
func rssKiB(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	m := vmRSS.FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// quantileSteps is how finely the JSON result draws the latency
// distribution: the latency at every 1/quantileSteps of the deliveries.
const quantileSteps = 1000

// quantiles returns the latencies, in ms, at q = 0, 1/quantileSteps, … 1,
// of latencies in µs sorted by percentiles: enough to draw a CDF.
func quantiles(sorted []int32) []float64 {
	if len(sorted) == 0 {
		return nil
	}
	out := make([]float64, quantileSteps+1)
	for k := range out {
		out[k] = float64(sorted[k*(len(sorted)-1)/quantileSteps]) / 1000
	}
	return out
}
