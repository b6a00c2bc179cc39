package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/store"
)

// publisher sends one bench event; payload is the event's data.
type publisher func(ctx context.Context, channel string, payload []byte) error

func newPublisher(mode string, rdb *redis.Client, prefix, httpURL, httpKey, httpStyle string) (publisher, error) {
	switch mode {
	case "redis": // live PUBLISH, as a backend does
		return func(ctx context.Context, channel string, payload []byte) error {
			return rdb.Publish(ctx, prefix+channel, envelope(payload)).Err()
		}, nil
	case "script": // ssebridge's durable publish script
		history := store.NewHistory(rdb, prefix, 0, 0, 0)
		return func(ctx context.Context, channel string, payload []byte) error {
			_, err := history.Publish(ctx, channel, envelope(payload))
			return err
		}, nil
	case "http": // an HTTP publish API: ssebridge's POST /publish or Centrifugo's
		// Idle connections for every concurrent publisher (-workers), not
		// net/http's 2 per host: past them, each publish would open one.
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.MaxIdleConnsPerHost = 256
		client := &http.Client{Timeout: 10 * time.Second, Transport: transport}
		return func(ctx context.Context, channel string, payload []byte) error {
			var body []byte
			switch httpStyle {
			case "centrifugo":
				body, _ = json.Marshal(map[string]any{"channel": channel, "data": json.RawMessage(payload)})
			default:
				body, _ = json.Marshal(map[string]any{"channel": channel, "event": "bench", "data": json.RawMessage(payload)})
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, httpURL, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", "application/json")
			if httpStyle == "centrifugo" {
				req.Header.Set("X-API-Key", httpKey)
			} else {
				req.Header.Set("Authorization", "Bearer "+httpKey)
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || bytes.Contains(b, []byte(`"error"`)) {
				return fmt.Errorf("publish: %s: %s", resp.Status, b)
			}
			return nil
		}, nil
	}
	return nil, fmt.Errorf("-publish: %q is not redis, script or http", mode)
}

// envelope is what -publish redis and script send for an event: ssebridge's
// envelope, event name bench, data payload.
func envelope(payload []byte) []byte {
	return append(append([]byte(`{"event":"bench","data":`), payload...), '}')
}

// benchPayload is what every event carries: its send time and sequence number.
func benchPayload(seq int) []byte {
	return []byte(`{"bench":{"t":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `,"s":` + strconv.Itoa(seq) + `}}`)
}

// centrifugoToken is an HS256 JWT for a uni_sse connection of user sub,
// subscribed to channels on connect.
func centrifugoToken(secret, sub string, channels []string) string {
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	claims, _ := json.Marshal(map[string]any{"sub": sub, "channels": channels, "exp": time.Now().Add(24 * time.Hour).Unix()})
	body := header + "." + enc.EncodeToString(claims)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	return body + "." + enc.EncodeToString(mac.Sum(nil))
}

// batchPublisher sends several bench events in one go: channels[k] gets
// payloads[k].
type batchPublisher func(ctx context.Context, channels []string, payloads [][]byte) error

// newBatchPublisher returns, for -publish redis, PUBLISHes pipelined: one
// write and one read for a batch, where one at a time costs the generator
// a round trip, two system calls and a goroutine's wake-up each, which at
// 20,000 events a second is more than the cores it shares with the server.
// nil for the other modes: the durable script and the HTTP APIs are
// measured one publish at a time, as a backend calls them.
func newBatchPublisher(mode string, rdb *redis.Client, prefix string) batchPublisher {
	if mode != "redis" {
		return nil
	}
	return func(ctx context.Context, channels []string, payloads [][]byte) error {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for k, ch := range channels {
				p.Publish(ctx, prefix+ch, envelope(payloads[k]))
			}
			return nil
		})
		return err
	}
}

// A batch publishes the events due within batchWindow, maxBatch at most:
// short enough for the events to keep to their even spread.
const (
	batchWindow = time.Millisecond
	maxBatch    = 256
)

// publishPlanned sends the run's events, event seq at(seq) after start on
// c.channel(seq), through c.workers publishers: one, at thousands of events
// a second, would fall behind (the chat's events, the rooms' at thousands a
// second). With batch, the next event goes out with those due within
// batchWindow after it, as one batch (maxBatch at most): at 20,000 events a
// second, 20 a round trip, none more than batchWindow early; without, one
// by one. Each
// event's payload is made by the publisher that sends it, so its latency
// counts from its sending; how far the publishers fell behind the plan is
// PublishLagMaxMs. The first error stops the run.
func (r *benchRun) publishPlanned(ctx context.Context, pub publisher, batch batchPublisher, start time.Time, at func(seq int) time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan [2]int) // events [from, to)
	lags := make([]time.Duration, r.c.workers)
	var failed sync.Once
	var first error
	var wg sync.WaitGroup
	for w := range r.c.workers {
		wg.Go(func() {
			for job := range jobs {
				lags[w] = max(lags[w], time.Since(start.Add(at(job[0]))))
				if err := r.publishJob(ctx, pub, batch, job[0], job[1]); err != nil {
					failed.Do(func() { first = err })
					cancel()
					return
				}
			}
		})
	}
dispatch:
	for seq := 0; seq < r.c.events; {
		time.Sleep(time.Until(start.Add(at(seq))))
		to := seq + 1
		if batch != nil {
			for until := time.Since(start) + batchWindow; to < r.c.events && to-seq < maxBatch && at(to) <= until; to++ {
			}
		}
		select {
		case jobs <- [2]int{seq, to}:
		case <-ctx.Done():
			break dispatch
		}
		seq = to
	}
	close(jobs)
	wg.Wait()
	r.res.PublishLagMaxMs = float64(slices.Max(lags).Microseconds()) / 1000
	return first
}

// publishJob sends events from to to (exclusive): as one batch with batch,
// else one by one with pub.
func (r *benchRun) publishJob(ctx context.Context, pub publisher, batch batchPublisher, from, to int) error {
	if batch == nil {
		for seq := from; seq < to; seq++ {
			ch, _ := r.c.channel(seq)
			if err := pub(ctx, ch, benchPayload(seq)); err != nil {
				return fmt.Errorf("publishing event %d: %w", seq, err)
			}
		}
		return nil
	}
	channels, payloads := make([]string, 0, to-from), make([][]byte, 0, to-from)
	for seq := from; seq < to; seq++ {
		ch, _ := r.c.channel(seq)
		channels, payloads = append(channels, ch), append(payloads, benchPayload(seq))
	}
	if err := batch(ctx, channels, payloads); err != nil {
		return fmt.Errorf("publishing events %d to %d: %w", from, to-1, err)
	}
	return nil
}
