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
	"os"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// publishCommand is `ssebridge publish`: a durable publish from a shell,
// through Redis Cluster (-cluster, or REDIS_CLUSTER_ADDRS), through Redis
// (-redis, or REDIS_URL), through POST /publish (-url, -token, or
// PUBLISH_TOKEN), or, given none of them, through the embedded Redis of a
// try-out server on this machine (see tryOut).
func publishCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parsePublishArgs(args, stderr)
	if err != nil {
		return err
	}
	p, err := newPublication(a, stdout, stderr)
	if err != nil {
		return err
	}
	if !a.given["prefix"] {
		a.prefix = envOr("CHANNEL_PREFIX", "sse:")
	}
	if !a.given["cluster"] && !a.given["redis"] && !a.given["url"] && !a.given["token"] && os.Getenv("REDIS_URL") == "" {
		a.cluster = os.Getenv("REDIS_CLUSTER_ADDRS")
	}
	if a.cluster != "" {
		return publishCluster(ctx, a, p)
	}
	switch {
	case a.given["redis"]:
	case a.given["url"] || a.given["token"]:
	case os.Getenv("REDIS_URL") != "":
		a.redisURL = os.Getenv("REDIS_URL")
	case os.Getenv("PUBLISH_TOKEN") != "":
	default:
		t, path, ok, err := findTryOut()
		if err != nil {
			return fmt.Errorf("try-out file: %w", err)
		}
		if ok {
			return publishTryOut(ctx, a, p, t, path)
		}
	}
	if a.token == "" {
		a.token = os.Getenv("PUBLISH_TOKEN")
	}
	if a.redisURL != "" {
		id, replayed, err := publishRedis(ctx, a.redisURL, a.prefix, p.channel, p.envelope, p.key)
		if err != nil {
			return p.maybe(err)
		}
		p.printID(id.String(), replayed)
		return nil
	}
	return publishHTTP(ctx, a.url, a.token, p)
}

// publishArgs are `ssebridge publish`'s flags; given names those on the
// command line, since an empty one falls back to the environment.
type publishArgs struct {
	channel, event, data string
	redisURL, prefix     string
	url, token           string
	cluster              string
	partitions           int
	idemKey              string
	given                map[string]bool
}

func parsePublishArgs(args []string, stderr io.Writer) (publishArgs, error) {
	var a publishArgs
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&a.channel, "channel", "", "broadcast, user:<id> or room:<name>")
	fs.StringVar(&a.event, "event", "message", "event name")
	fs.StringVar(&a.data, "data", "", "event data, required: JSON, or text sent as a string")
	fs.StringVar(&a.redisURL, "redis", "", "publish through this Redis; redis:// may be left out (default $REDIS_URL)")
	fs.StringVar(&a.prefix, "prefix", "", "CHANNEL_PREFIX, with -redis (default $CHANNEL_PREFIX, or sse:)")
	fs.StringVar(&a.url, "url", "http://localhost:8080", "ssebridge's base URL, for POST /publish")
	fs.StringVar(&a.token, "token", "", "PUBLISH_TOKEN, for POST /publish (default $PUBLISH_TOKEN)")
	fs.StringVar(&a.cluster, "cluster", "", "publish through this Redis Cluster: host:port,... of some of its nodes (default $REDIS_CLUSTER_ADDRS)")
	fs.IntVar(&a.partitions, "partitions", 0, "CLUSTER_PARTITIONS, with -cluster (default $CLUSTER_PARTITIONS, or 16)")
	fs.StringVar(&a.idemKey, "idempotency-key", "", "publish at most once under this key within IDEMPOTENCY_WINDOW: a retry with the same key answers the first id (default: a new random key per call, said on a failure)")
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
	var err error
	a.given, err = parseFlags(fs, args)
	return a, err
}

// publication is one event to publish, checked, and where its outcome is
// told.
type publication struct {
	channel, event string
	data           json.RawMessage // JSON, or the text given as a JSON string
	envelope       []byte          // what the publish scripts take: {"event","data"}
	key            string          // the idempotency key
	stdout, stderr io.Writer
}

func newPublication(a publishArgs, stdout, stderr io.Writer) (publication, error) {
	p := publication{channel: a.channel, event: a.event, stdout: stdout, stderr: stderr}
	if err := wire.CheckChannel(a.channel); err != nil {
		return p, usageError{err: fmt.Errorf("-channel: %w", err)}
	}
	if !a.given["data"] || a.data == "" || a.data == `""` {
		return p, usageError{err: errors.New(`-data is required and must not be empty: browsers drop an event with no data (-data '{"text":"hi"}', or plain text)`)}
	}
	p.data = json.RawMessage(a.data)
	if !json.Valid(p.data) {
		p.data, _ = json.Marshal(a.data)
	}
	var err error
	p.envelope, err = compactJSON(struct {
		Event string          `json:"event"`
		Data  json.RawMessage `json:"data"`
	}{a.event, p.data})
	if err != nil {
		return p, err
	}
	p.key = a.idemKey
	if !a.given["idempotency-key"] {
		p.key = rand.Text() // the same call retried must not publish twice
	} else if err := checkIdempotencyKey(p.key); err != nil {
		return p, usageError{err: fmt.Errorf("-idempotency-key: %w", err)}
	}
	return p, nil
}

// maybe says, on a failure, how to retry it without a duplicate.
func (p publication) maybe(err error) error {
	var reply redis.Error
	var op *net.OpError
	if errors.As(err, &reply) || errors.As(err, &op) && op.Op == "dial" {
		return err // Redis refused the script, or nothing was sent: nothing published
	}
	return fmt.Errorf("%w\n(the event may have been published: to retry it at most once, run the same command with -idempotency-key %s)", err, p.key)
}

// printID prints the published event's id, and says on stderr when the
// key had published it before.
func (p publication) printID(id string, replayed bool) {
	if replayed {
		fmt.Fprintln(p.stderr, "publish: published before under this idempotency key: nothing published now; its id:")
	}
	fmt.Fprintln(p.stdout, id)
}

// publishCluster publishes p through the Redis Cluster nodes a.cluster.
func publishCluster(ctx context.Context, a publishArgs, p publication) error {
	partitions := a.partitions
	if !a.given["partitions"] {
		n, err := strconv.Atoi(envOr("CLUSTER_PARTITIONS", "16"))
		if err != nil {
			return usageError{err: fmt.Errorf("CLUSTER_PARTITIONS: %w", err)}
		}
		partitions = n
	}
	if partitions < 1 || partitions > wire.MaxPartitions {
		return usageError{err: fmt.Errorf("-partitions must be between 1 and %d", wire.MaxPartitions)}
	}
	// go-redis's defaults but for the slot map's reload (clusterOptions):
	// a one-off command holds no pool.
	o := &redis.UniversalOptions{Username: os.Getenv("REDIS_USERNAME"), Password: os.Getenv("REDIS_PASSWORD")}
	cc := redis.NewClusterClient(clusterOptions(o, strings.Split(a.cluster, ",")))
	defer cc.Close()
	id, replayed, err := store.NewClusterPublisher(cc, a.prefix, partitions).PublishOnce(ctx, p.channel, p.envelope, p.key)
	if err != nil {
		return p.maybe(err)
	}
	p.printID(id.String(), replayed)
	return nil
}

// publishTryOut publishes p through the embedded Redis of the try-out
// server that wrote the file at path.
func publishTryOut(ctx context.Context, a publishArgs, p publication, t tryOut, path string) error {
	fmt.Fprintf(p.stderr, "publish: try-out mode: through the embedded Redis %s of the ssebridge at %s (from %s)\n", t.Redis, t.URL, path)
	prefix := a.prefix
	if !a.given["prefix"] {
		prefix = t.ChannelPrefix
	}
	id, replayed, err := publishRedis(ctx, t.Redis, prefix, p.channel, p.envelope, p.key)
	if err != nil {
		return fmt.Errorf("%w\n%s", p.maybe(err), t.stale(path))
	}
	p.printID(id.String(), replayed)
	return nil
}

// publishRedis publishes envelope durably through the Redis at url, at
// most once under key within the window.
func publishRedis(ctx context.Context, url, prefix, channel string, envelope []byte, key string) (wire.Cursor, bool, error) {
	rdb, err := flagClient(url)
	if err != nil {
		return wire.Cursor{}, false, err
	}
	defer rdb.Close()
	// NewHistory's limits are not used here: the script reads them (and
	// the idempotency window) from Redis.
	return store.NewHistory(rdb, prefix, 0, 0, 0).PublishOnce(ctx, channel, envelope, key)
}

// flagClient is a command's client for the Redis a -redis flag (or
// REDIS_URL) names: a URL, or host:port.
func flagClient(url string) (*redis.Client, error) {
	if !strings.Contains(url, "://") {
		url = "redis://" + url // 127.0.0.1:6379
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("-redis: %w", err)
	}
	return redis.NewClient(opts), nil
}

// publishHTTP publishes p through POST /publish of the ssebridge at url.
func publishHTTP(ctx context.Context, url, token string, p publication) error {
	body, err := compactJSON(struct {
		Channel string          `json:"channel"`
		Event   string          `json:"event"`
		Data    json.RawMessage `json:"data"`
	}{p.channel, p.event, p.data})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(url, "/")+"/publish", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", p.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return p.maybe(fmt.Errorf("%w (no ssebridge there? -url names it; -redis publishes through Redis instead)", err))
	}
	defer resp.Body.Close()
	var answer struct{ ID, Error string }
	_ = json.NewDecoder(resp.Body).Decode(&answer)
	switch {
	case resp.StatusCode == http.StatusOK && answer.ID != "":
		p.printID(answer.ID, resp.Header.Get("Idempotent-Replayed") == "true")
		return nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		return fmt.Errorf("POST /publish: %s: that ssebridge has no POST /publish: it is on only with PUBLISH_TOKEN set there (then pass it with -token); or publish through Redis with -redis", resp.Status)
	case resp.StatusCode >= 500 && answer.Error != "":
		return p.maybe(fmt.Errorf("POST /publish: %s: %s", resp.Status, answer.Error))
	case answer.Error != "":
		return fmt.Errorf("POST /publish: %s: %s", resp.Status, answer.Error)
	case resp.StatusCode >= 500:
		return p.maybe(fmt.Errorf("POST /publish: %s", resp.Status))
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

// compactJSON is json.Marshal without HTML escaping: '<' stays one byte.
func compactJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err := enc.Encode(v)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), err
}
