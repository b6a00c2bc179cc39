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
	"strconv"
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
			env := append(append([]byte(`{"event":"bench","data":`), payload...), '}')
			return rdb.Publish(ctx, prefix+channel, env).Err()
		}, nil
	case "script": // ssebridge's durable publish script
		history := store.NewHistory(rdb, prefix, 0, 0, 0)
		return func(ctx context.Context, channel string, payload []byte) error {
			env := append(append([]byte(`{"event":"bench","data":`), payload...), '}')
			_, err := history.Publish(ctx, channel, env)
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
