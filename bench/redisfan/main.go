// Command redisfan measures what Redis pub/sub costs Redis itself, for
// docs/SCALING.md: it opens K subscriber connections (each one an ssebridge
// instance, which holds one pub/sub connection for all its streams), then
// publishes M messages as fast as P pipelined connections allow, spread
// over C channels that every subscriber listens to, and reports messages
// published and delivered per second and Redis's own CPU per message.
// -sharded uses SSUBSCRIBE/SPUBLISH (Redis 7) instead.
//
// Subscribers and publishers speak RESP over raw TCP and only count bytes,
// so that this program costs as little as it can of the cores it shares
// with Redis.
//
//	go run ./bench/redisfan -redis 127.0.0.1:6399 -subscribers 100 -messages 200000
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Result is the final JSON line.
type Result struct {
	Sharded          bool    `json:"sharded"`
	Subscribers      int     `json:"subscribers"`
	Channels         int     `json:"channels"`
	Messages         int     `json:"messages"`
	PayloadBytes     int     `json:"payload_bytes"`
	Seconds          float64 `json:"seconds"`
	PublishedPerS    float64 `json:"published_per_s"`
	DeliveredPerS    float64 `json:"delivered_per_s"`
	RedisCPUSeconds  float64 `json:"redis_cpu_seconds"`
	RedisCPUShare    float64 `json:"redis_cpu_share"` // of one core, over the window
	RedisUsPerPub    float64 `json:"redis_cpu_us_per_publish"`
	RedisUsPerDelivr float64 `json:"redis_cpu_us_per_delivery"`
	// Lost deliveries: a subscriber Redis disconnected (output buffer limit).
	Lost int64 `json:"lost"`
	// Redis's memory per subscription (one connection on one channel).
	BytesPerSub float64 `json:"redis_bytes_per_subscription"`
}

func main() {
	addr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	subs := flag.Int("subscribers", 10, "subscriber connections")
	channels := flag.Int("channels", 1, "channels, every subscriber on all of them")
	messages := flag.Int("messages", 100000, "messages to publish")
	size := flag.Int("size", 200, "payload bytes")
	pubs := flag.Int("publishers", 4, "publishing connections")
	batch := flag.Int("pipeline", 64, "commands per round trip")
	sharded := flag.Bool("sharded", false, "SSUBSCRIBE/SPUBLISH instead of SUBSCRIBE/PUBLISH")
	flag.Parse()
	if *subs < 1 || *channels < 1 || *messages < 1 || *pubs < 1 || *batch < 1 || *size < 0 {
		fmt.Fprintln(os.Stderr, "redisfan: -subscribers, -channels, -messages, -publishers and -pipeline must be 1 or more, -size 0 or more")
		os.Exit(2)
	}

	subCmd, pubCmd, kind := "SUBSCRIBE", "PUBLISH", "message"
	if *sharded {
		subCmd, pubCmd, kind = "SSUBSCRIBE", "SPUBLISH", "smessage"
	}
	names := channelNames(*channels)
	l := load{addr: *addr, cmd: pubCmd, names: names, payload: strings.Repeat("x", *size), messages: *messages, pubs: *pubs, batch: *batch}
	// What a subscriber receives per message: [kind, channel, payload].
	frame := len(resp(kind, names[0], l.payload))
	expected := int64(*messages) * int64(frame)

	mem0 := redisInfo(*addr, "memory")["used_memory"]
	var got atomic.Int64 // bytes of messages received, all subscribers
	var wg sync.WaitGroup
	for range *subs {
		c, r := subscribe(*addr, subCmd, names)
		defer c.Close()
		wg.Go(func() { receive(r, expected, &got) })
	}

	mem := redisInfo(*addr, "memory")["used_memory"] - mem0
	cpu0 := redisCPU(*addr)
	start := time.Now()
	var pw sync.WaitGroup
	for p := range *pubs {
		pw.Go(func() { l.publish(p) })
	}
	pw.Wait()
	published := time.Since(start)
	wg.Wait()
	elapsed := time.Since(start)
	cpu := redisCPU(*addr) - cpu0

	res := Result{
		Sharded: *sharded, Subscribers: *subs, Channels: *channels, Messages: *messages, PayloadBytes: *size,
		Seconds:         elapsed.Seconds(),
		PublishedPerS:   float64(*messages) / published.Seconds(),
		DeliveredPerS:   float64(got.Load()/int64(frame)) / elapsed.Seconds(),
		RedisCPUSeconds: cpu,
		RedisCPUShare:   cpu / elapsed.Seconds(),
		RedisUsPerPub:   cpu * 1e6 / float64(*messages),
		BytesPerSub:     mem / float64(*subs**channels),
	}
	res.Lost = int64(*messages)*int64(*subs) - got.Load()/int64(frame)
	if d := got.Load() / int64(frame); d > 0 {
		res.RedisUsPerDelivr = cpu * 1e6 / float64(d)
	}
	report(res, pubCmd)
}

// channelNames names n channels, all of one length: every message frame
// then has one size.
func channelNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("fan:%06d", i)
	}
	return names
}

// subscribe opens a subscriber connection on every channel in names and
// returns it once Redis has confirmed each subscription, with its reader.
func subscribe(addr, subCmd string, names []string) (net.Conn, *bufio.Reader) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	r := bufio.NewReaderSize(c, 64<<10)
	// One command per channel: a sharded subscription takes channels of one slot only.
	for _, n := range names {
		if _, err := c.Write(resp(subCmd, n)); err != nil {
			log.Fatal(err)
		}
		for range 6 { // *3, $k, kind, $k, channel, :count
			if _, err := r.ReadSlice('\n'); err != nil {
				log.Fatal(err)
			}
		}
	}
	return c, r
}

// receive counts into got the bytes one subscriber receives, until it has
// the expected bytes or Redis drops it.
func receive(r *bufio.Reader, expected int64, got *atomic.Int64) {
	buf := make([]byte, 64<<10)
	var mine int64
	for mine < expected {
		n, err := r.Read(buf)
		if err != nil {
			if err != io.EOF {
				log.Print(err)
			}
			return
		}
		mine += int64(n)
		got.Add(int64(n))
	}
}

// A load is what the publishers send: messages copies of payload,
// round-robin over the channels names, batch commands per round trip over
// pubs connections.
type load struct {
	addr     string
	cmd      string // PUBLISH or SPUBLISH
	names    []string
	payload  string
	messages int
	pubs     int
	batch    int
}

// publish sends publisher p's share of the load on a connection of its
// own: the batches p, p+pubs, p+2*pubs… each sent in one write, then its
// replies read.
func (l load) publish(p int) {
	c, err := net.Dial("tcp", l.addr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	w := bufio.NewWriterSize(c, 256<<10)
	for from := p * l.batch; from < l.messages; from += l.pubs * l.batch {
		k := min(l.batch, l.messages-from)
		for m := from; m < from+k; m++ {
			w.Write(resp(l.cmd, l.names[m%len(l.names)], l.payload))
		}
		if err := w.Flush(); err != nil {
			log.Fatal(err)
		}
		for range k {
			if _, err := r.ReadSlice('\n'); err != nil {
				log.Fatal(err)
			}
		}
	}
}

// report prints the result as two lines of text on stderr and the JSON
// line on stdout.
func report(res Result, pubCmd string) {
	fmt.Fprintf(os.Stderr, "Redis memory per subscription: %.0f bytes; lost deliveries: %d\n", res.BytesPerSub, res.Lost)
	fmt.Fprintf(os.Stderr, "%s to %d subscribers over %d channels: %d messages of %d bytes in %.2fs: %.0f published/s, %.0f delivered/s; Redis CPU %.2fs (%.0f%% of a core): %.2f µs per publish, %.3f µs per delivery\n",
		pubCmd, res.Subscribers, res.Channels, res.Messages, res.PayloadBytes, res.Seconds, res.PublishedPerS, res.DeliveredPerS,
		res.RedisCPUSeconds, 100*res.RedisCPUShare, res.RedisUsPerPub, res.RedisUsPerDelivr)
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
}

// resp encodes one command (or one pushed message) in RESP.
func resp(args ...string) []byte {
	b := []byte("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b = append(b, "$"+strconv.Itoa(len(a))+"\r\n"+a+"\r\n"...)
	}
	return b
}

// redisCPU reads Redis's user and system CPU seconds.
func redisCPU(addr string) float64 {
	m := redisInfo(addr, "cpu")
	return m["used_cpu_user"] + m["used_cpu_sys"]
}

// redisInfo reads the numeric fields of one INFO section.
func redisInfo(addr, section string) map[string]float64 {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	c.Write(resp("INFO", section))
	r := bufio.NewReader(c)
	head, err := r.ReadString('\n')
	if err != nil {
		log.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(head[1:]))
	body := make([]byte, n+2)
	if _, err := io.ReadFull(r, body); err != nil {
		log.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\r\n") {
		k, v, _ := strings.Cut(line, ":")
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			out[k] = f
		}
	}
	return out
}
