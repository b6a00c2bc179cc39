package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/faultproxy"
	"github.com/ssebridge/ssebridge/internal/ssetest"
)

// Faults of the Redis link (issue 18): each test puts one fault between
// ssebridge and its Redis (internal/faultproxy), for a bounded time, while
// resuming streams read and a retrying publisher publishes through
// POST /publish; faultrig_test.go checks what they saw and logs one
// "FAULT name=…" line of figures. They run at once: the suite's wall time
// is about the longest (the 60 s stall: some 75 s, and the build).
//
//	SSEBRIDGE_FAULTS=1 go test -count=1 -run 'TestFault' -v ./e2e/ | grep 'FAULT name='
//	SSEBRIDGE_FAULTS=1 go test -count=1 -run 'TestFault/stall10' -v ./e2e/
//
// Their figures are timings of seven instances sharing the machine: run
// beside the other packages' tests (go test ./... runs two packages at
// once), the load alone breaks their bounds. So `go test ./...` skips
// them, and .ci/run runs them in a step of their own, after the rest, and
// without -race: the proxies run in the test process, and under the race
// detector they, not ssebridge, were the bottleneck (a link healed after
// a stall carried its backlog for 20 s). The binary is built without -race
// here anyway; the race-detected run of everything else covers the code.

const faultStreams = 60

// TestFault runs every fault at once, each as a subtest of its own
// (-run 'TestFault/stall10' for one). The subtests are started from
// goroutines rather than marked t.Parallel: -parallel defaults to
// GOMAXPROCS, 2 on these machines, which would run them two by two (over
// two minutes); they mostly wait on their fault's schedule, not on the CPU.
func TestFault(t *testing.T) {
	if os.Getenv("SSEBRIDGE_FAULTS") == "" {
		t.Skip("the fault suite runs on its own (.ci/run does, after the rest): SSEBRIDGE_FAULTS=1 go test -run TestFault ./e2e/")
	}
	t.Parallel()
	var wg sync.WaitGroup
	for _, f := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"stall60", faultStall60}, // the longest first
		{"stall10", faultStall10},
		{"latency200ms", faultLatency200ms},
		{"latency2s", faultLatency2s},
		{"resets2s", faultResets},
		{"bandwidth3k", faultBandwidth},
		{"pubsubbuffer", faultPubsubOutputBuffer},
	} {
		wg.Go(func() { t.Run(f.name, f.run) })
	}
	wg.Wait()
}

func faultStall10(t *testing.T) {
	stall(t, "stall10", 10*time.Second)
}

func faultStall60(t *testing.T) {
	stall(t, "stall60", 60*time.Second)
}

// stall freezes the link both ways (no reset, no FIN: TCP open, nothing
// flows) for hold.
func stall(t *testing.T, name string, hold time.Duration) {
	r := startFaultRig(t, faultSpec{
		name: name, streams: faultStreams, hold: hold,
		begin:     func(r *faultRig) { r.px.Stall(faultproxy.Both) },
		end:       func(r *faultRig) { r.px.Resume(faultproxy.Both) },
		lagMetric: true, notReady: true, notice: true,
	})
	r.run()
}

func faultLatency200ms(t *testing.T) {
	latency(t, "latency200ms", 200*time.Millisecond, false)
}

// 2 s each way is a 4 s round trip, past REDIS_TIMEOUT (2 s): requests that
// need Redis are to be answered 503 promptly, so the fault is noticed.
func faultLatency2s(t *testing.T) {
	latency(t, "latency2s", 2*time.Second, true)
}

func latency(t *testing.T, name string, d time.Duration, notice bool) {
	r := startFaultRig(t, faultSpec{
		name: name, streams: faultStreams, hold: 15 * time.Second,
		begin:  func(r *faultRig) { r.px.Latency(faultproxy.Both, d) },
		end:    func(r *faultRig) { r.px.Latency(faultproxy.Both, 0) },
		notice: notice,
	})
	r.run()
}

// faultResets: every connection to Redis reset (RST) every 2 s for 15 s.
func faultResets(t *testing.T) {
	r := startFaultRig(t, faultSpec{
		name: "resets2s", streams: faultStreams, hold: 15 * time.Second,
		begin: func(r *faultRig) { r.px.ResetEvery(2 * time.Second) },
		end:   func(r *faultRig) { r.px.ResetEvery(0) },
	})
	r.run()
	if st := r.px.Stats(); st.Resets == 0 {
		t.Errorf("the proxy reset no connection: %+v", st)
	}
}

// faultBandwidth: 3 KB/s from Redis for 15 s, less than the pub/sub
// feed and the replies need at 50 publishes/s: the feed falls behind.
func faultBandwidth(t *testing.T) {
	r := startFaultRig(t, faultSpec{
		name: "bandwidth3k", streams: faultStreams, hold: 15 * time.Second,
		begin:     func(r *faultRig) { r.px.Bandwidth(faultproxy.Down, 3000) },
		end:       func(r *faultRig) { r.px.Bandwidth(faultproxy.Down, 0) },
		lagMetric: true, lagReadyz: true, notice: true,
	})
	r.run()
}

// faultPubsubOutputBuffer: Redis's own client-output-buffer-limit for
// pub/sub cuts the subscriber. The limit is set small on the real Redis;
// one stream's room gets 32 KB live messages at ~3 MB/s straight into Redis
// while the link from Redis carries 100 KB/s, so the subscriber's output
// buffer grows past the limit and Redis closes its connection.
func faultPubsubOutputBuffer(t *testing.T) {
	var (
		stop    chan struct{}
		bulk    sync.WaitGroup
		ctx     context.Context
		cancel  context.CancelFunc
		bulkErr error
		sent    int
	)
	ctx, cancel = context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r := startFaultRig(t, faultSpec{
		name: "pubsubbuffer", streams: faultStreams, hold: 12 * time.Second,
		begin: func(r *faultRig) {
			if err := r.rdb.ConfigSet(ctx, "client-output-buffer-limit", "pubsub 256kb 64kb 1").Err(); err != nil {
				r.fail("CONFIG SET client-output-buffer-limit: %v", err)
			}
			setSession(t, r.rdb, "session:bulkreader", "bulk", "bulk")
			stop = make(chan struct{})
			opened := make(chan struct{}, 1)
			// The reader of the bulk room: it only has to be there, so
			// that ssebridge subscribes the room; it reads and forgets,
			// and opens again when ended (as slow, likely).
			bulk.Go(func() {
				for ctx.Err() == nil {
					s, err := ssetest.Open(ctx, r.url+"/events", bearer("bulkreader"))
					if err != nil {
						pause(ctx, 300*time.Millisecond)
						continue
					}
					for {
						ev, err := s.Next(time.Second)
						if err == ssetest.ErrTimeout {
							if ctx.Err() != nil {
								break
							}
							continue
						}
						if err != nil {
							break
						}
						if ev.Event == "ready" {
							select {
							case opened <- struct{}{}:
							default:
							}
						}
					}
					s.Close()
				}
			})
			select {
			case <-opened:
			case <-time.After(10 * time.Second):
				r.fail("the bulk room's stream did not open within 10s")
			}
			r.px.Bandwidth(faultproxy.Down, 100_000)
			payload := fmt.Sprintf(`{"event":"bulk","data":%q}`, strings.Repeat("x", 32<<10))
			bulk.Go(func() {
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					if err := r.rdb.Publish(ctx, "sse:room:bulk", payload).Err(); err != nil {
						bulkErr = err
						return
					}
					sent++
				}
			})
		},
		end: func(r *faultRig) {
			close(stop)
			r.px.Bandwidth(faultproxy.Down, 0)
			if err := r.rdb.ConfigSet(ctx, "client-output-buffer-limit", "pubsub 32mb 8mb 60").Err(); err != nil {
				r.fail("CONFIG SET client-output-buffer-limit back: %v", err)
			}
		},
		// A cut is a reconnection of some 100 ms: /readyz, polled every
		// 250 ms, may well miss it. What shows is the lag before the cut
		// and the reconnection (both asserted).
		lagMetric: true,
	})
	r.run()
	cancel()
	bulk.Wait()
	// Redis 7.0 counts these cuts nowhere in INFO; its log names each.
	cut := strings.Count(r.redis.Log(), "for overcoming of output buffer limits")
	reconnects := r.final["ssebridge_redis_reconnects_total"]
	t.Logf("fault pubsubbuffer: %d bulk messages of 32 KB published (err %v); clients Redis cut for their output buffer: %d; ssebridge reconnects: %.0f",
		sent, bulkErr, cut, reconnects)
	if cut == 0 || reconnects == 0 {
		t.Errorf("Redis cut no subscriber for its output buffer (%d cuts, %.0f reconnects): the fault did not happen", cut, reconnects)
	}
}
