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
