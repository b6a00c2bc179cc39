// Command limit is the single-writer limit of BENCHMARKS.md: the least CPU
// a delivery can cost in Go on this machine. One Redis subscription, and
// one goroutine that frames each event once and writes it to every open
// connection in turn, one write per connection per event. Connections are
// raw TCP answered with a bare HTTP/1.1 SSE header (no chunking), read by
// the same load generator as the others. Nothing else: no queues, no
// heartbeats, no authentication; a connection whose write fails is dropped.
package main

import (
	"bufio"
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	"sync"

	"github.com/redis/go-redis/v9"
)

const header = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n: ok\n\n"

func main() {
	addr := flag.String("addr", "127.0.0.1:8170", "listen address")
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	channel := flag.String("channel", "sse:broadcast", "the one channel fanned out")
	flag.Parse()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn

	// Accept: read the request head, answer, and hand the connection to the
	// writer. Any other path (the scripts' readiness probe) gets a 404.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				log.Fatal(err)
			}
			go func() {
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil || req.URL.Path != "/events" {
					c.Write([]byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
					c.Close()
					return
				}
				if _, err := c.Write([]byte(header)); err != nil {
					c.Close()
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}()
		}
	}()

	// The one writer.
	sub := redis.NewClient(&redis.Options{Addr: *redisAddr}).Subscribe(context.Background(), *channel)
	for m := range sub.Channel(redis.WithChannelSize(1024)) {
		frame := []byte("data: " + m.Payload + "\n\n")
		mu.Lock()
		live := conns[:0]
		for _, c := range conns {
			if _, err := c.Write(frame); err != nil {
				c.Close()
				continue
			}
			live = append(live, c)
		}
		conns = live
		mu.Unlock()
	}
}
