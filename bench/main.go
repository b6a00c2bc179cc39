// Command bench is a load generator for Server-Sent Events endpoints:
// ssebridge, or any other (it drives Centrifugo's uni_sse and the bare
// net/http fan-out in bench/bare for BENCHMARKS.md).
//
// It opens N streams, publishes M events at R per second (Redis PUBLISH,
// ssebridge's durable script, or an HTTP publish API), each carrying its send
// time and a sequence number, and reports connections, deliveries expected
// and received, losses, duplicates, latency percentiles, throughput, the
// server's memory per stream, the CPU used per delivery by the server, by
// this generator and by Redis, and the server's Redis connections, as text
// and as a final JSON line (with the latency distribution, for plots).
// With -storm it also drops every stream halfway and measures their return
// (storm.go); -scenario chat gives each stream its user channel, two rooms
// and the broadcast channel, and publishes direct, room and broadcast
// events at their own rates (chat.go); -scenario rooms puts each stream in
// one of -rooms rooms, and -deliveries sets the events from the deliveries
// wanted (rooms.go, for bench/curves.sh). An https:// -url opens the streams
// over TLS, HTTP/1.1, a connection each; with -h2 K, HTTP/2 over K
// connections (tls.go).
//
//	go run ./bench -n 10000 -sessions -events 100 -rate 5 -pid PID
//	go run ./bench -n 10000 -sessions -scenario chat -seconds 30 -publish script -pid PID
//	go run ./bench -n 10000 -sessions -scenario rooms -rooms 1000 -deliveries 200000 -seconds 10 -pid PID
//	go run ./bench -url https://127.0.0.1:8443/events -h2 300 -n 10000 -sessions -pid PID
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ", ") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

// Result is the final JSON line.
type Result struct {
	Scenario       string  `json:"scenario"`
	Streams        int     `json:"streams"`
	Connected      int     `json:"connected"`
	ConnectSeconds float64 `json:"connect_seconds"`
	// ServerCPUPerOpenUs is the server's CPU over the connect (64 streams
	// opening at a time) per stream opened.
	ServerCPUPerOpenUs float64 `json:"server_cpu_us_per_open,omitempty"`
	Slow               int     `json:"slow"`
	Events             int     `json:"events"`
	Rate               float64 `json:"rate"`
	Expected           int64   `json:"expected"`
	Received           int64   `json:"received"`
	Lost               int64   `json:"lost"`
	Duplicated         int64   `json:"duplicated"`
	P50ms              float64 `json:"p50_ms"`
	P90ms              float64 `json:"p90_ms"`
	P99ms              float64 `json:"p99_ms"`
	MaxMs              float64 `json:"max_ms"`
	DeliveriesPerS     float64 `json:"deliveries_per_s"`
	RSSBaseKiB         int64   `json:"rss_base_kib,omitempty"`
	RSSIdleKiB         int64   `json:"rss_idle_kib,omitempty"`
	RSSEndKiB          int64   `json:"rss_end_kib,omitempty"`
	RSSPerStreamKiB    float64 `json:"rss_per_stream_kib,omitempty"`
	RedisConns         int     `json:"redis_connections,omitempty"`
	// RedisPubSubChannels is how many channels Redis has subscribers on
	// (PUBSUB CHANNELS *) with the streams open and idle: those the server
	// subscribed for them, its own (ssebridge's control channel) and any
	// left subscribed. DistinctChannels is how many logical channels the
	// streams hold between them (users, rooms and broadcast: rooms.go).
	RedisPubSubChannels int `json:"redis_pubsub_channels"`
	DistinctChannels    int `json:"distinct_channels"`
	// With -scenario rooms: the rooms the streams are spread over.
	Rooms int `json:"rooms,omitempty"`

	// CPU, user and system, over the window from the first publish to the
	// last delivery (or the end of the drain): the server's from /proc
	// (with -pid), this generator's own, Redis's from INFO.
	WindowSeconds       float64 `json:"window_seconds"`
	ServerCPUSeconds    float64 `json:"server_cpu_seconds,omitempty"`
	ServerCPUPerDelivUs float64 `json:"server_cpu_us_per_delivery,omitempty"`
	// ServerCPUPerEventUs is the server's CPU over the window per event
	// published: a room event's cost as its room grows, or an event's as
	// the rooms it is spread over multiply.
	ServerCPUPerEventUs float64 `json:"server_cpu_us_per_event,omitempty"`
	BenchCPUSeconds     float64 `json:"bench_cpu_seconds"`
	BenchCPUPerDelivUs  float64 `json:"bench_cpu_us_per_delivery"`
	RedisCPUSeconds     float64 `json:"redis_cpu_seconds"`
	// RedisCPUPerEventUs is Redis's CPU over the window per event published:
	// what one publish costs Redis, fan-out to its subscribers included,
	// and whatever else Redis does meanwhile, such as the server's own
	// background work, which RedisIdleCPUmsPerS measures with the streams
	// open and nothing published (over a second, a second after the last
	// stream connected).
	RedisCPUPerEventUs float64 `json:"redis_cpu_us_per_event,omitempty"`
	RedisIdleCPUmsPerS float64 `json:"redis_idle_cpu_ms_per_s"`
	// RedisMemoryGrowthKiB is Redis's used_memory after the window less
	// before it: the history a durable publish keeps.
	RedisMemoryGrowthKiB int64 `json:"redis_memory_growth_kib"`

	// With -scenario chat: how long it published, the events by kind
	// (direct, room, broadcast), deliveries of events a stream does not
	// hold the channel of (Stray), and the most an event was sent after its
	// planned time (the publishers falling behind). Stray and the lag are
	// also measured with -scenario rooms, Seconds and the lag with
	// -deliveries.
	Seconds         float64        `json:"seconds,omitempty"`
	Published       map[string]int `json:"published,omitempty"`
	Stray           int64          `json:"stray,omitempty"`
	PublishLagMaxMs float64        `json:"publish_lag_max_ms,omitempty"`

	// LatencyQuantilesMs[k] is the latency, in ms, at quantile k/1000.
	LatencyQuantilesMs []float64 `json:"latency_quantiles_ms,omitempty"`

	Storm *StormResult `json:"storm,omitempty"`
}

func main() {
	var (
		target     = flag.String("url", "http://127.0.0.1:8080/events", "stream URL; {i} is the stream's number")
		n          = flag.Int("n", 1000, "streams to open")
		offset     = flag.Int("offset", 0, "number of the first stream (to split a run over processes)")
		scenario   = flag.String("scenario", "broadcast", "broadcast (every stream), room (one room of all streams), users (each event to one user), chat (user channel, two rooms and broadcast per stream: chat.go), rooms (each stream in one of -rooms rooms, events round-robin over them: rooms.go)")
		events     = flag.Int("events", 100, "events to publish (not with chat or -deliveries)")
		rate       = flag.Float64("rate", 5, "events per second (not with chat or -deliveries)")
		seconds    = flag.Float64("seconds", 30, "with chat or -deliveries: how long to publish")
		rooms      = flag.Int("rooms", 100, "with rooms: how many rooms; stream i is in room r{i%rooms}, event seq goes to room r{seq%rooms}")
		deliveries = flag.Int("deliveries", 0, "not with chat: publish the events that make this many deliveries (rounded up to whole events) evenly over -seconds, from -workers publishers, in place of -events and -rate")
		directRate = flag.Float64("direct-rate", 1000, "with chat: direct events per second, each to one user drawn uniformly")
		roomRate   = flag.Float64("room-rate", 2000, "with chat: room events per second, each to one room drawn uniformly")
		bcastRate  = flag.Float64("broadcast-rate", 1, "with chat: broadcast events per second")
		workers    = flag.Int("workers", 16, "with chat, rooms or -deliveries: concurrent publishers, each event sent at its planned time by the first free one (with -publish redis, but for chat, those due within 1ms together, pipelined)")
		seed       = flag.Uint64("seed", 1, "with chat: seed of the room layout and of the events' recipients")
		slow       = flag.Int("slow", 0, "streams that stop reading once connected")
		mode       = flag.String("publish", "redis", "redis (PUBLISH), script (ssebridge's durable script) or http")
		redisURL   = flag.String("redis", "redis://127.0.0.1:6379", "Redis for sessions, publishing and counting connections")
		prefix     = flag.String("prefix", "sse:", "ssebridge's CHANNEL_PREFIX")
		sessions   = flag.Bool("sessions", false, "create the streams' sessions in Redis first (session:bench{i})")
		httpURL    = flag.String("http-url", "http://127.0.0.1:8080/publish", "with -publish http: the publish endpoint")
		httpKey    = flag.String("http-key", "", "with -publish http: bearer token (ssebridge) or API key (centrifugo)")
		httpStyle  = flag.String("http-style", "ssebridge", "with -publish http: ssebridge or centrifugo")
		centSecret = flag.String("centrifugo-secret", "", "open Centrifugo uni_sse streams with HS256 tokens made with this secret")
		pid        = flag.Int("pid", 0, "the server's pid, to report its memory")
		sources    = flag.Int("sources", 0, "loopback source addresses 127.0.0.2… to spread connections over (0: one per 20,000)")
		drain      = flag.Duration("drain", 10*time.Second, "how long to wait for late deliveries after the last publish")
		stormOn    = flag.Bool("storm", false, "halfway through publishing, drop every stream at once and reconnect each with Last-Event-ID (needs -publish script)")
		jitter     = flag.Duration("jitter", time.Second, "with -storm: reconnections are spread at random over this long")
		h2         = flag.Int("h2", 0, "with an https:// -url: HTTP/2, the streams spread over this many connections (stream i on connection i%K); 0: a connection per stream, HTTP/1.1")
	)
	var header headers
	flag.Var(&header, "header", `request header, repeatable; {i} is the stream's number (default "Authorization: Bearer bench{i}")`)
	flag.Parse()
	if len(header) == 0 && *centSecret == "" {
		header = headers{"Authorization: Bearer bench{i}"}
	}
	res, err := run(config{
		target: *target, n: *n, offset: *offset, scenario: *scenario, events: *events, rate: *rate, slow: *slow,
		mode: *mode, redisURL: *redisURL, prefix: *prefix, sessions: *sessions, httpURL: *httpURL, httpKey: *httpKey,
		httpStyle: *httpStyle, centSecret: *centSecret, pid: *pid, sources: *sources, drain: *drain, header: header,
		storm: *stormOn, jitter: *jitter, h2: *h2, seconds: *seconds, directRate: *directRate, roomRate: *roomRate,
		broadcastRate: *bcastRate, workers: *workers, seed: *seed, rooms: *rooms, deliveries: *deliveries,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	if res.Lost > 0 || res.Duplicated > 0 || res.Stray > 0 || res.Connected < res.Streams || (res.Storm != nil && res.Storm.Resumed < res.Connected) {
		os.Exit(3)
	}
}

type config struct {
	target, scenario, mode, redisURL, prefix, httpURL, httpKey, httpStyle, centSecret string
	n, offset, events, slow, pid, sources, h2, workers, rooms, deliveries             int
	rate, seconds, directRate, roomRate, broadcastRate                                float64
	seed                                                                              uint64
	sessions, storm                                                                   bool
	drain, jitter                                                                     time.Duration
	header                                                                            []string

	chat *chatPlan // with -scenario chat, set by prepareChat
	// want lists the events due to each stream (by number less -offset),
	// in ascending order, with -scenario chat or rooms; nil in the other
	// scenarios, whose streams record what arrived by sequence number.
	want [][]int32
}

// channel returns the logical channel of event seq, and which stream (by
// number) it is for, -1 for all, -2 for those c.want says.
func (c config) channel(seq int) (string, int) {
	switch c.scenario {
	case "chat":
		return c.chat.channel(seq, c.offset), -2
	case "rooms":
		return "room:" + roomName(seq%c.rooms), -2
	case "room":
		return "room:bench", -1
	case "users":
		i := c.offset + seq%c.n
		return "user:u" + strconv.Itoa(i), i
	}
	return "broadcast", -1
}

// source is the loopback address stream number k connects from (nil: any):
// past 20,000 streams one address runs out of ports.
func source(c config, k int) net.IP {
	srcs := c.sources
	if srcs == 0 {
		srcs = c.n/20000 + 1
	}
	if srcs == 1 {
		return nil
	}
	return net.IPv4(127, 0, 0, byte(2+k%srcs))
}

// streamURL returns where stream i connects, and its request path.
func streamURL(c config, i int) (*url.URL, string) {
	raw := strings.ReplaceAll(c.target, "{i}", strconv.Itoa(i))
	if c.centSecret != "" {
		token := centrifugoToken(c.centSecret, "u"+strconv.Itoa(i), streamChannels(c, i-c.offset))
		connect, _ := json.Marshal(map[string]string{"token": token})
		raw += "?cf_connect=" + url.QueryEscape(string(connect))
	}
	u, err := url.Parse(raw)
	if err != nil {
		panic(err)
	}
	return u, u.RequestURI()
}

func createSessions(ctx context.Context, rdb *redis.Client, c config) error {
	const batch = 1000
	for from := 0; from < c.n; from += batch {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for k := from; k < min(from+batch, c.n); k++ {
				i := c.offset + k
				session, _ := json.Marshal(map[string]any{"user": "u" + strconv.Itoa(i), "rooms": sessionRooms(c, k)})
				p.Set(ctx, "session:bench"+strconv.Itoa(i), session, time.Hour)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("creating sessions: %w", err)
		}
	}
	return nil
}

// redisConns counts the Redis clients that are not this bench.
func redisConns(ctx context.Context, rdb *redis.Client) int {
	list, err := rdb.ClientList(ctx).Result()
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		if !strings.Contains(line, " name=bench ") {
			n++
		}
	}
	return n
}

// raiseFileLimit lifts the soft open-file limit to the hard one: every
// stream is a file.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func report(r Result) {
	fmt.Fprintf(os.Stderr, "scenario %s: %d/%d streams (%d not reading), %d events at %.0f/s\n",
		r.Scenario, r.Connected, r.Streams, r.Slow, r.Events, r.Rate)
	fmt.Fprintf(os.Stderr, "deliveries: expected %d, received %d, lost %d, duplicated %d; %.0f/s\n",
		r.Expected, r.Received, r.Lost, r.Duplicated, r.DeliveriesPerS)
	fmt.Fprintf(os.Stderr, "latency: p50 %.1fms  p90 %.1fms  p99 %.1fms  max %.1fms\n", r.P50ms, r.P90ms, r.P99ms, r.MaxMs)
	if r.RSSIdleKiB > 0 {
		fmt.Fprintf(os.Stderr, "server RSS: %d MiB before, %d MiB idle with the streams (%.1f KiB per stream), %d MiB at the end\n",
			r.RSSBaseKiB/1024, r.RSSIdleKiB/1024, r.RSSPerStreamKiB, r.RSSEndKiB/1024)
	}
	fmt.Fprintf(os.Stderr, "CPU over %.1fs: server %.2fs (%.2f µs per delivery), load generator %.2fs (%.2f µs per delivery), Redis %.2fs\n",
		r.WindowSeconds, r.ServerCPUSeconds, r.ServerCPUPerDelivUs, r.BenchCPUSeconds, r.BenchCPUPerDelivUs, r.RedisCPUSeconds)
	fmt.Fprintf(os.Stderr, "Redis: %d connections (other than the bench's), %.2f ms CPU per second idle, %.2f µs CPU per event published, used memory %+d KiB over the window\n",
		r.RedisConns, r.RedisIdleCPUmsPerS, r.RedisCPUPerEventUs, r.RedisMemoryGrowthKiB)
	fmt.Fprintf(os.Stderr, "channels: %d subscribed in Redis, %d held by the streams; server CPU %.2f µs per event published\n",
		r.RedisPubSubChannels, r.DistinctChannels, r.ServerCPUPerEventUs)
	if r.Rooms > 0 {
		fmt.Fprintf(os.Stderr, "rooms: %d, each stream in one\n", r.Rooms)
	}
	if r.Published == nil && (r.Rooms > 0 || r.Seconds > 0) {
		fmt.Fprintf(os.Stderr, "planned: %d events at %.1f/s; publishers at most %.1fms behind the plan\n", r.Events, r.Rate, r.PublishLagMaxMs)
	}
	if r.Published != nil {
		fmt.Fprintf(os.Stderr, "chat: published over %.0fs %d direct, %d room, %d broadcast events; %d stray deliveries; publishers at most %.1fms behind the plan\n",
			r.Seconds, r.Published["direct"], r.Published["room"], r.Published["broadcast"], r.Stray, r.PublishLagMaxMs)
	}
	if s := r.Storm; s != nil {
		fmt.Fprintf(os.Stderr, "storm: %d resumed, %d with every event once, %d resets; last live %.2fs after the drop (jitter %.1fs); refusals %v (%d unexpected), %d connection errors\n",
			s.Resumed, s.Intact, s.Resets, s.LastLiveSeconds, s.JitterSeconds, s.Refused, s.Unexpected, s.Errors)
		fmt.Fprintf(os.Stderr, "storm: server RSS %d MiB before, %d MiB at most; Redis commands/s %.0f before, %.0f during (peak %.0f over 100 ms), Redis CPU %.2fs: %v\n",
			s.RSSBeforeKiB/1024, s.RSSPeakKiB/1024, s.RedisBaselinePerS, s.RedisPerS, s.RedisPeakPerS, s.RedisCPUSeconds, s.RedisCommands)
	}
}
