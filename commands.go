package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/r3labs/sse/v2"
	"github.com/redis/go-redis/v9"
	"gopkg.in/cenkalti/backoff.v1"

	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// publishCommand is `ssebridge publish`: a durable publish from a shell,
// through Redis (-redis, or REDIS_URL) or through POST /publish.
func publishCommand(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	channel := fs.String("channel", "", "broadcast, user:<id> or room:<name>")
	event := fs.String("event", "message", "event name")
	data := fs.String("data", "", "event data: JSON, or text sent as a string")
	redisURL := fs.String("redis", os.Getenv("REDIS_URL"), "publish through this Redis (default $REDIS_URL)")
	prefix := fs.String("prefix", envOr("CHANNEL_PREFIX", "sse:"), "CHANNEL_PREFIX, with -redis")
	url := fs.String("url", "http://localhost:8080", "ssebridge's base URL, without -redis")
	token := fs.String("token", os.Getenv("PUBLISH_TOKEN"), "PUBLISH_TOKEN, without -redis")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := wire.CheckChannel(*channel); err != nil {
		return fmt.Errorf("-channel: %w", err)
	}
	raw := json.RawMessage(*data)
	if !json.Valid(raw) {
		raw, _ = json.Marshal(*data)
	}
	if *redisURL != "" {
		opts, err := redis.ParseURL(*redisURL)
		if err != nil {
			return fmt.Errorf("-redis: %w", err)
		}
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		env, _ := json.Marshal(map[string]any{"event": *event, "data": raw})
		// NewHistory's limits are not used here: the script reads them from Redis.
		id, err := store.NewHistory(rdb, *prefix, 0, 0, 0).Publish(ctx, *channel, env)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, id)
		return nil
	}
	body, _ := json.Marshal(map[string]any{"channel": *channel, "event": *event, "data": raw})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(*url, "/")+"/publish", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+*token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var answer struct{ ID, Error string }
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		return fmt.Errorf("POST /publish: %s", resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /publish: %s: %s", resp.Status, answer.Error)
	}
	fmt.Fprintln(stdout, answer.ID)
	return nil
}

// tailCommand is `ssebridge tail`: print a stream's events, resuming with
// the last id after every drop, until interrupted or refused for good.
func tailCommand(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	url := fs.String("url", "http://localhost:8080/events", "the stream's URL")
	token := fs.String("token", "", "session token, sent as Authorization: Bearer")
	lastID := fs.String("last-event-id", "", "resume after this id")
	if err := fs.Parse(args); err != nil {
		return err
	}
	client := sse.NewClient(*url, sse.ClientMaxBufferSize(1<<20))
	client.Headers["Authorization"] = "Bearer " + *token
	client.LastEventID.Store([]byte(*lastID))
	// One attempt per Subscribe: the loop below decides whether to retry.
	client.ReconnectStrategy = &backoff.StopBackOff{}
	var refused error
	client.ResponseValidator = func(_ *sse.Client, resp *http.Response) error {
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		err := fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
		if resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
			refused = err
		}
		return err
	}
	for {
		err := client.SubscribeRawWithContext(ctx, func(ev *sse.Event) {
			if len(ev.Event) == 0 && len(ev.Data) == 0 {
				return // an id-only mark
			}
			fmt.Fprintf(stdout, "id=%s event=%s data=%s\n", ev.ID, ev.Event, ev.Data)
		})
		switch {
		case ctx.Err() != nil:
			return nil
		case refused != nil:
			return refused
		case err != nil:
			fmt.Fprintln(os.Stderr, "tail:", err, "- retrying")
		default:
			fmt.Fprintln(os.Stderr, "tail: stream ended, resuming")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

var errUsage = errors.New("usage: ssebridge [publish|tail] [flags]")
