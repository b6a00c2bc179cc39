// Command bare is the physical reference of BENCHMARKS.md: the least an SSE
// fan-out in Go can do. One Redis subscription; a handler goroutine per
// stream with a buffered channel; every event formatted and written by
// every stream, one write and one flush per event. No authentication, no
// limits, no recovery: nothing else.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"sync"

	"github.com/redis/go-redis/v9"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8090", "listen address")
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	channel := flag.String("channel", "sse:broadcast", "the one channel fanned out")
	flag.Parse()

	var mu sync.RWMutex
	streams := map[chan []byte]struct{}{}

	go func() {
		sub := redis.NewClient(&redis.Options{Addr: *redisAddr}).Subscribe(context.Background(), *channel)
		for m := range sub.Channel(redis.WithChannelSize(1024)) {
			payload := []byte(m.Payload)
			mu.RLock()
			for ch := range streams {
				select {
				case ch <- payload:
				default: // a full stream misses the event
				}
			}
			mu.RUnlock()
		}
	}()

	http.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		ch := make(chan []byte, 256)
		mu.Lock()
		streams[ch] = struct{}{}
		mu.Unlock()
		defer func() { mu.Lock(); delete(streams, ch); mu.Unlock() }()
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte(": ok\n\n"))
		w.(http.Flusher).Flush()
		for {
			select {
			case <-r.Context().Done():
				return
			case p := <-ch:
				w.Write([]byte("data: " + string(p) + "\n\n"))
				w.(http.Flusher).Flush()
			}
		}
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}
