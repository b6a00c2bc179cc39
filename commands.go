package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/r3labs/sse/v2"
	"github.com/redis/go-redis/v9"
	"gopkg.in/cenkalti/backoff.v1"

	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// usageError is a mistake in a command's arguments: exit code 2. When
// printed is set, the flag package has already said what is wrong.
type usageError struct {
	err     error
	printed bool
}

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// parseFlags parses args into fs, and returns which flags were given.
func parseFlags(fs *flag.FlagSet, args []string) (map[string]bool, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err, true}
	}
	if fs.NArg() > 0 {
		return nil, usageError{err: fmt.Errorf("unexpected argument %q: every value goes with a flag (-h lists them)", fs.Arg(0))}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	return given, nil
}

// publishCommand is `ssebridge publish`: a durable publish from a shell,
// through Redis (-redis, or REDIS_URL), through POST /publish (-url,
// -token, or PUBLISH_TOKEN), or, given none of them, through the embedded
// Redis of a try-out server on this machine (see tryOut).
func publishCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	channel := fs.String("channel", "", "broadcast, user:<id> or room:<name>")
	event := fs.String("event", "message", "event name")
	data := fs.String("data", "", "event data, required: JSON, or text sent as a string")
	redisURL := fs.String("redis", "", "publish through this Redis; redis:// may be left out (default $REDIS_URL)")
	prefix := fs.String("prefix", "", "CHANNEL_PREFIX, with -redis (default $CHANNEL_PREFIX, or sse:)")
	url := fs.String("url", "http://localhost:8080", "ssebridge's base URL, for POST /publish")
	token := fs.String("token", "", "PUBLISH_TOKEN, for POST /publish (default $PUBLISH_TOKEN)")
	cluster := fs.String("cluster", "", "publish through this Redis Cluster: host:port,... of some of its nodes (default $REDIS_CLUSTER_ADDRS)")
	partitions := fs.Int("partitions", 0, "CLUSTER_PARTITIONS, with -cluster (default $CLUSTER_PARTITIONS, or 16)")
	idemKey := fs.String("idempotency-key", "", "publish at most once under this key within IDEMPOTENCY_WINDOW: a retry with the same key answers the first id (default: a new random key per call, said on a failure)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: ssebridge publish -channel CHANNEL [-event NAME] -data DATA [-redis URL | -cluster ADDRS | -url URL -token TOKEN]

Publishes a durable event and prints its id. A call that fails may still
have published: run it again with -idempotency-key and the key the error
names, and it publishes at most once. Through Redis with -redis (or
$REDIS_URL); through Redis Cluster with -cluster (or $REDIS_CLUSTER_ADDRS;
it prints the event's position in its partition, docs/CLUSTER.md); else
through POST /publish with -url and -token (or
$PUBLISH_TOKEN); else, when a server without REDIS_URL runs on this machine,
through its embedded Redis (try-out mode, said on stderr).

`)
		fs.PrintDefaults()
	}
	given, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if err := wire.CheckChannel(*channel); err != nil {
		return usageError{err: fmt.Errorf("-channel: %w", err)}
	}
	if !given["data"] || *data == "" || *data == `""` {
		return usageError{err: errors.New(`-data is required and must not be empty: browsers drop an event with no data (-data '{"text":"hi"}', or plain text)`)}
	}
	raw := json.RawMessage(*data)
	if !json.Valid(raw) {
		raw, _ = json.Marshal(*data)
	}
	envelope, err := compactJSON(struct {
		Event string          `json:"event"`
		Data  json.RawMessage `json:"data"`
	}{*event, raw})
	if err != nil {
		return err
	}
	if !given["prefix"] {
		*prefix = envOr("CHANNEL_PREFIX", "sse:")
	}
	if !given["idempotency-key"] {
		*idemKey = rand.Text() // the same call retried below must not publish twice
	} else if err := checkIdempotencyKey(*idemKey); err != nil {
		return usageError{err: fmt.Errorf("-idempotency-key: %w", err)}
	}
	// maybe says, on a failure, how to retry it without a duplicate.
	maybe := func(err error) error {
		var reply redis.Error
		var op *net.OpError
		if errors.As(err, &reply) || errors.As(err, &op) && op.Op == "dial" {
			return err // Redis refused the script, or nothing was sent: nothing published
		}
		return fmt.Errorf("%w\n(the event may have been published: to retry it at most once, run the same command with -idempotency-key %s)", err, *idemKey)
	}
	printID := func(id string, replayed bool) {
		if replayed {
			fmt.Fprintln(stderr, "publish: published before under this idempotency key: nothing published now; its id:")
		}
		fmt.Fprintln(stdout, id)
	}

	if !given["cluster"] && !given["redis"] && !given["url"] && !given["token"] && os.Getenv("REDIS_URL") == "" {
		*cluster = os.Getenv("REDIS_CLUSTER_ADDRS")
	}
	if *cluster != "" {
		if !given["partitions"] {
			n, err := strconv.Atoi(envOr("CLUSTER_PARTITIONS", "16"))
			if err != nil {
				return usageError{err: fmt.Errorf("CLUSTER_PARTITIONS: %w", err)}
			}
			*partitions = n
		}
		if *partitions < 1 || *partitions > wire.MaxPartitions {
			return usageError{err: fmt.Errorf("-partitions must be between 1 and %d", wire.MaxPartitions)}
		}
		cc := redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:    strings.Split(*cluster, ","),
			Username: os.Getenv("REDIS_USERNAME"), Password: os.Getenv("REDIS_PASSWORD"),
			ClusterStateReloadInterval: 2 * time.Second, // see clusterClient
		})
		defer cc.Close()
		id, replayed, err := store.NewClusterPublisher(cc, *prefix, *partitions).PublishOnce(ctx, *channel, envelope, *idemKey)
		if err != nil {
			return maybe(err)
		}
		printID(id.String(), replayed)
		return nil
	}
	switch {
	case given["redis"]:
	case given["url"] || given["token"]:
	case os.Getenv("REDIS_URL") != "":
		*redisURL = os.Getenv("REDIS_URL")
	case os.Getenv("PUBLISH_TOKEN") != "":
	default:
		t, path, ok, err := findTryOut()
		if err != nil {
			return fmt.Errorf("try-out file: %w", err)
		}
		if ok {
			fmt.Fprintf(stderr, "publish: try-out mode: through the embedded Redis %s of the ssebridge at %s (from %s)\n", t.Redis, t.URL, path)
			*redisURL = t.Redis
			if !given["prefix"] {
				*prefix = t.ChannelPrefix
			}
			id, replayed, err := publishRedis(ctx, *redisURL, *prefix, *channel, envelope, *idemKey)
			if err != nil {
				return fmt.Errorf("%w\n%s", maybe(err), t.stale(path))
			}
			printID(id.String(), replayed)
			return nil
		}
	}
	if *token == "" {
		*token = os.Getenv("PUBLISH_TOKEN")
	}

	if *redisURL != "" {
		id, replayed, err := publishRedis(ctx, *redisURL, *prefix, *channel, envelope, *idemKey)
		if err != nil {
			return maybe(err)
		}
		printID(id.String(), replayed)
		return nil
	}
	body, err := compactJSON(struct {
		Channel string          `json:"channel"`
		Event   string          `json:"event"`
		Data    json.RawMessage `json:"data"`
	}{*channel, *event, raw})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(*url, "/")+"/publish", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+*token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", *idemKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return maybe(fmt.Errorf("%w (no ssebridge there? -url names it; -redis publishes through Redis instead)", err))
	}
	defer resp.Body.Close()
	var answer struct{ ID, Error string }
	_ = json.NewDecoder(resp.Body).Decode(&answer)
	switch {
	case resp.StatusCode == http.StatusOK && answer.ID != "":
		printID(answer.ID, resp.Header.Get("Idempotent-Replayed") == "true")
		return nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		return fmt.Errorf("POST /publish: %s: that ssebridge has no POST /publish: it is on only with PUBLISH_TOKEN set there (then pass it with -token); or publish through Redis with -redis", resp.Status)
	case resp.StatusCode >= 500 && answer.Error != "":
		return maybe(fmt.Errorf("POST /publish: %s: %s", resp.Status, answer.Error))
	case answer.Error != "":
		return fmt.Errorf("POST /publish: %s: %s", resp.Status, answer.Error)
	case resp.StatusCode >= 500:
		return maybe(fmt.Errorf("POST /publish: %s", resp.Status))
	}
	return fmt.Errorf("POST /publish: %s", resp.Status)
}

// checkIdempotencyKey is POST /publish's rule for a key: 1-255 visible
// ASCII characters.
func checkIdempotencyKey(k string) error {
	if len(k) < 1 || len(k) > 255 {
		return fmt.Errorf("want 1-255 characters, got %d", len(k))
	}
	for i := range len(k) {
		if k[i] < 0x21 || k[i] > 0x7e {
			return fmt.Errorf("want visible ASCII characters only (no space), got byte 0x%02x at %d", k[i], i)
		}
	}
	return nil
}

// publishRedis publishes envelope durably through the Redis at url, at
// most once under key within the window.
func publishRedis(ctx context.Context, url, prefix, channel string, envelope []byte, key string) (wire.Cursor, bool, error) {
	if !strings.Contains(url, "://") {
		url = "redis://" + url // 127.0.0.1:6379
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return wire.Cursor{}, false, fmt.Errorf("-redis: %w", err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	// NewHistory's limits are not used here: the script reads them (and
	// the idempotency window) from Redis.
	return store.NewHistory(rdb, prefix, 0, 0, 0).PublishOnce(ctx, channel, envelope, key)
}

// compactJSON is json.Marshal without HTML escaping: '<' stays one byte.
func compactJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err := enc.Encode(v)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), err
}

// tailCommand is `ssebridge tail`: print a stream's events, resuming with
// the last id after every drop, until interrupted or refused for good.
func tailCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://localhost:8080/events", "the stream's URL")
	token := fs.String("token", "", "session token, sent as Authorization: Bearer")
	lastID := fs.String("last-event-id", "", "resume after this id")
	user := fs.String("user", "tail", "try-out mode: the user of the session tail makes itself")
	rooms := fs.String("rooms", "lobby", "try-out mode: that session's rooms, comma-separated")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: ssebridge tail -url URL -token TOKEN [-last-event-id ID]
       ssebridge tail [-user USER] [-rooms A,B]    (try-out mode)

Prints a stream's events, one line each, and resumes from the last id when
the stream drops. Without -url and -token, when a server without REDIS_URL
runs on this machine, it makes itself a session there (POST /dev/login, as
-user in -rooms) and tails that (try-out mode, said on stderr).

`)
		fs.PrintDefaults()
	}
	given, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if !given["url"] && !given["token"] {
		t, path, ok, err := findTryOut()
		if err != nil {
			return fmt.Errorf("try-out file: %w", err)
		}
		if ok {
			tok, err := tryOutLogin(ctx, t, *user, *rooms)
			if err != nil {
				return fmt.Errorf("try-out mode: %w\n%s", err, t.stale(path))
			}
			*url, *token = t.URL+"/events", tok
			fmt.Fprintf(stderr, "tail: try-out mode: %s as user %q in rooms %q, with a session from POST /dev/login (from %s)\n", *url, *user, *rooms, path)
		}
	}
	if *token == "" {
		return usageError{err: errors.New("-token is required: a session token, as the backend stored it under session:<token> (try-out mode, with no flags, needs a server without REDIS_URL running on this machine)")}
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
			fmt.Fprintf(stdout, "id=%s event=%s data=%s\n", printable(ev.ID), printable(ev.Event), printable(ev.Data))
		})
		switch {
		case ctx.Err() != nil:
			return nil
		case refused != nil:
			return refused
		case err != nil:
			fmt.Fprintln(stderr, "tail:", err, "- retrying")
		default:
			fmt.Fprintln(stderr, "tail: stream ended, resuming")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// printable is b for a terminal, on one line: publishers relay users'
// text, so a line break (the data's lines are joined by one) would print a
// line of its own, and an escape sequence would reach the terminal. Control
// characters (C0, DEL, C1) and invalid UTF-8 are written as Go escapes;
// the rest, JSON's own escapes included, as it is.
func printable(b []byte) string {
	var out strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&out, `\x%02x`, b[0])
		case r < 0x20 || r == 0x7f || 0x80 <= r && r <= 0x9f:
			q := strconv.QuoteRune(r)
			out.WriteString(q[1 : len(q)-1])
		default:
			out.Write(b[:n])
		}
		b = b[n:]
	}
	return out.String()
}

// tryOutLogin makes a session on a try-out server, as its demo page does,
// and returns its token.
func tryOutLogin(ctx context.Context, t tryOut, user, rooms string) (string, error) {
	form := neturl.Values{"user": {user}, "rooms": {rooms}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.URL+"/dev/login", strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var answer struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&answer)
		return "", fmt.Errorf("POST /dev/login: %s: %s", resp.Status, answer.Error)
	}
	for _, c := range resp.Cookies() {
		if c.Name == t.SessionCookie && c.Value != "" {
			return c.Value, nil
		}
	}
	return "", fmt.Errorf("POST /dev/login set no %s cookie", t.SessionCookie)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
