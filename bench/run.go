package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// A benchRun is one run under way: its streams, what each is due and what
// they have received so far, and the Result it fills in.
type benchRun struct {
	c   config
	rdb *redis.Client
	res Result

	streams   []*stream         // by number less -offset; nil where the connection failed
	h2        []*http.Transport // with -h2 K: the K connections the streams share
	expected  []int64           // the deliveries due to each stream, by the same index
	delivered atomic.Int64      // distinct deliveries so far, all streams
	readers   sync.WaitGroup    // the streams' read loops
}

// run opens the streams, publishes the events at the rate asked, waits for
// their delivery and measures it all (see the package comment).
func run(c config) (Result, error) {
	ctx := context.Background()
	r := &benchRun{c: c, res: Result{Scenario: c.scenario, Streams: c.n, Slow: c.slow, Events: c.events, Rate: c.rate}}
	prepare := prepareLoad
	if c.scenario == "chat" {
		prepare = prepareChat
		if c.deliveries > 0 {
			return r.res, fmt.Errorf("-scenario chat does not take -deliveries (its rates set the events)")
		}
	}
	if err := prepare(&c, &r.res); err != nil {
		return r.res, err
	}
	r.c = c
	if c.storm && (c.mode != "script" || c.slow > 0 || c.jitter <= 0 || c.events < 2) {
		return r.res, fmt.Errorf("-storm needs -publish script, no -slow, a positive -jitter and -events 2 or more (the storm begins halfway)")
	}
	if c.h2 < 0 || (c.h2 > 0 && !strings.HasPrefix(c.target, "https://")) {
		return r.res, fmt.Errorf("-h2 needs a positive number of connections and an https:// -url")
	}
	if c.h2 > 0 {
		if per := (c.n + c.h2 - 1) / c.h2; per > 250 {
			fmt.Fprintf(os.Stderr, "-h2: %d streams per connection, more than the 250 Go's servers allow: some will wait\n", per)
		}
		u, _ := streamURL(c, c.offset)
		r.h2 = h2Transports(c, u, c.h2)
	}
	raiseFileLimit()
	opts, err := redis.ParseURL(c.redisURL)
	if err != nil {
		return r.res, fmt.Errorf("-redis: %w", err)
	}
	opts.ClientName = "bench"
	r.rdb = redis.NewClient(opts)
	defer r.rdb.Close()

	if c.sessions {
		if err := createSessions(ctx, r.rdb, c); err != nil {
			return r.res, err
		}
	}
	r.res.RSSBaseKiB = rssKiB(c.pid)

	r.connect(ctx)
	defer r.closeStreams()
	r.startReading()
	r.measureIdle(ctx)
	r.countExpected()

	pub, err := newPublisher(c.mode, r.rdb, c.prefix, c.httpURL, c.httpKey, c.httpStyle)
	if err != nil {
		return r.res, err
	}
	memBefore := redisInfo(ctx, r.rdb, "memory")["used_memory"]
	cpu := startCPU(ctx, c.pid, r.rdb)
	pubStart := time.Now()
	if err := r.publishAll(ctx, pub, pubStart); err != nil {
		return r.res, err
	}
	r.awaitDeliveries()
	elapsed := time.Since(pubStart)
	serverCPU, benchCPU, redisCPUUsed := cpu.stop(ctx, r.rdb)
	r.res.RedisMemoryGrowthKiB = int64(redisInfo(ctx, r.rdb, "memory")["used_memory"]-memBefore) / 1024
	r.res.RSSEndKiB = rssKiB(c.pid)
	r.closeStreams()
	r.readers.Wait()

	lat := r.tally()
	r.summarize(lat, elapsed, serverCPU, benchCPU, redisCPUUsed)
	report(r.res)
	return r.res, nil
}

// connect opens the streams, 64 at a time, and says on stderr how many it
// could open, how fast, and the first error.
func (r *benchRun) connect(ctx context.Context) {
	c := r.c
	r.streams = make([]*stream, c.n)
	start, cpuStart := time.Now(), cpuTime(c.pid)
	var wg sync.WaitGroup
	next := make(chan int)
	var failed atomic.Int64
	var firstErr atomic.Value
	for range 64 {
		wg.Go(func() {
			for k := range next {
				i := c.offset + k
				u, path := streamURL(c, i)
				var want []int32
				if c.want != nil {
					want = c.want[k]
				}
				s, err := dial(ctx, i, u, path, c.header, source(c, k), c.events, want, r.transport(i))
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				r.streams[k] = s
			}
		})
	}
	for k := range c.n {
		next <- k
	}
	close(next)
	wg.Wait()
	r.res.ConnectSeconds = time.Since(start).Seconds()
	r.res.Connected = c.n - int(failed.Load())
	if c.pid != 0 && r.res.Connected > 0 {
		r.res.ServerCPUPerOpenUs = float64((cpuTime(c.pid) - cpuStart).Microseconds()) / float64(r.res.Connected)
	}
	fmt.Fprintf(os.Stderr, "connected %d of %d streams in %.1fs", r.res.Connected, c.n, r.res.ConnectSeconds)
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(os.Stderr, " (first error: %s)", e)
	}
	if r.res.ServerCPUPerOpenUs > 0 {
		fmt.Fprintf(os.Stderr, "; server CPU %.0f µs per stream opened", r.res.ServerCPUPerOpenUs)
	}
	fmt.Fprintln(os.Stderr)
}

// transport is the HTTP/2 connection stream number i shares with -h2;
// nil without.
func (r *benchRun) transport(i int) *http.Transport {
	if len(r.h2) == 0 {
		return nil
	}
	return r.h2[i%len(r.h2)]
}

// closeStreams closes every open stream's connection (with -h2, its stream
// and then the shared connections), which ends its reader.
func (r *benchRun) closeStreams() {
	for _, s := range r.streams {
		if s != nil {
			s.conn.Close()
		}
	}
	for _, t := range r.h2 {
		t.CloseIdleConnections()
	}
}

// startReading starts the streams' readers; the first -slow streams never
// read again.
func (r *benchRun) startReading() {
	for k, s := range r.streams {
		if s != nil && k >= r.c.slow {
			r.readers.Go(func() { s.read(&r.delivered) })
		}
	}
}

// measureIdle records the server's memory with every stream open and idle,
// its Redis connections, and Redis's CPU while nothing is published.
func (r *benchRun) measureIdle(ctx context.Context) {
	time.Sleep(time.Second) // let the server settle before measuring its idle memory
	r.res.RSSIdleKiB = rssKiB(r.c.pid)
	if r.res.RSSBaseKiB > 0 && r.res.Connected > 0 {
		r.res.RSSPerStreamKiB = float64(r.res.RSSIdleKiB-r.res.RSSBaseKiB) / float64(r.res.Connected)
	}
	r.res.RedisConns = redisConns(ctx, r.rdb)
	r.res.RedisPubSubChannels = pubsubChannels(ctx, r.rdb)
	r.res.DistinctChannels = distinctChannels(r.c)
	// One more second for Redis's idle CPU: the first holds the servers'
	// settling, such as ssebridge's presence writes for the streams' joins.
	idleFrom, redisFrom := time.Now(), redisCPU(ctx, r.rdb)
	time.Sleep(time.Second)
	r.res.RedisIdleCPUmsPerS = float64((redisCPU(ctx, r.rdb) - redisFrom).Microseconds()) / 1000 / time.Since(idleFrom).Seconds()
}

// countExpected works out the deliveries due to each stream, and their sum
// over the streams that read.
func (r *benchRun) countExpected() {
	r.expected = expectedCounts(r.c)
	for k, s := range r.streams {
		if s != nil && k >= r.c.slow {
			r.res.Expected += r.expected[k]
		}
	}
}

// publishAll sends the run's events, the first at start: the chat's, the
// rooms' and those of -deliveries from concurrent publishers, each at its
// planned time (evenly spread at the rate asked but the chat's), the others
// (and a storm's) from one.
func (r *benchRun) publishAll(ctx context.Context, pub publisher, start time.Time) error {
	switch {
	case r.c.chat != nil:
		return r.publishPlanned(ctx, pub, nil, start, func(seq int) time.Duration { return r.c.chat.events[seq].at })
	case r.c.scenario == "rooms" || (r.c.deliveries > 0 && !r.c.storm):
		interval := float64(time.Second) / r.c.rate
		batch := newBatchPublisher(r.c.mode, r.rdb, r.c.prefix)
		return r.publishPlanned(ctx, pub, batch, start, func(seq int) time.Duration { return time.Duration(float64(seq) * interval) })
	}
	return r.publish(ctx, pub, start)
}

// publish sends the events at the rate asked, the first at start; with
// -storm it drops and brings back every stream halfway through, and
// returns once the storm is over too.
func (r *benchRun) publish(ctx context.Context, pub publisher, start time.Time) error {
	interval := time.Duration(float64(time.Second) / r.c.rate)
	stormDone := make(chan *StormResult, 1)
	for seq := range r.c.events {
		if r.c.storm && seq == r.c.events/2 {
			go func() { stormDone <- storm(ctx, r.c, r.rdb, r.streams, &r.readers, &r.delivered) }()
		}
		time.Sleep(time.Until(start.Add(time.Duration(seq) * interval)))
		ch, _ := r.c.channel(seq)
		if err := pub(ctx, ch, benchPayload(seq)); err != nil {
			return fmt.Errorf("publishing event %d: %w", seq, err)
		}
	}
	if r.c.storm {
		r.res.Storm = <-stormDone
	}
	return nil
}

// awaitDeliveries waits for the deliveries still due, -drain at most.
func (r *benchRun) awaitDeliveries() {
	deadline := time.Now().Add(r.c.drain)
	for r.delivered.Load() < r.res.Expected && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// tally counts, once the readers are done, what the streams that read
// received, lost and had twice (with -storm, also the streams intact and
// the resets), and returns the latencies of all their deliveries.
func (r *benchRun) tally() []int32 {
	res := &r.res
	var lat []int32
	for k, s := range r.streams {
		if s == nil || k < r.c.slow {
			continue
		}
		u := int64(s.unique())
		res.Received += u
		res.Duplicated += int64(s.dups)
		res.Stray += int64(s.stray)
		res.Lost += r.expected[k] - u
		lat = append(lat, s.lat...)
		if res.Storm != nil {
			res.Storm.Resets += s.resets
			if r.expected[k] == u && s.dups == 0 {
				res.Storm.Intact++
			}
		}
	}
	return lat
}

// summarize fills in the latency percentiles and distribution, the
// throughput and the CPU used, over the window from the first publish,
// elapsed long.
func (r *benchRun) summarize(lat []int32, elapsed, serverCPU, benchCPU, redisCPUUsed time.Duration) {
	res := &r.res
	p50, p90, p99, max := percentiles(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	res.P50ms, res.P90ms, res.P99ms, res.MaxMs = ms(p50), ms(p90), ms(p99), ms(max)
	res.LatencyQuantilesMs = quantiles(lat)
	res.DeliveriesPerS = float64(res.Received) / elapsed.Seconds()
	res.WindowSeconds = elapsed.Seconds()
	res.ServerCPUSeconds, res.BenchCPUSeconds, res.RedisCPUSeconds = serverCPU.Seconds(), benchCPU.Seconds(), redisCPUUsed.Seconds()
	if res.Events > 0 {
		res.RedisCPUPerEventUs = float64(redisCPUUsed.Microseconds()) / float64(res.Events)
		if r.c.pid != 0 {
			res.ServerCPUPerEventUs = float64(serverCPU.Microseconds()) / float64(res.Events)
		}
	}
	if res.Received > 0 {
		res.BenchCPUPerDelivUs = float64(benchCPU.Microseconds()) / float64(res.Received)
		if r.c.pid != 0 {
			res.ServerCPUPerDelivUs = float64(serverCPU.Microseconds()) / float64(res.Received)
		}
	}
}
