package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// presenceCommand is `ssebridge presence`: who is in a room, or where a
// user is, as GET /presence answers. It asks an instance (-url, -token or
// PUBLISH_TOKEN), or reads Redis itself (-redis, or REDIS_URL), or, given
// neither, the embedded Redis of a try-out server on this machine. On
// Redis Cluster, ask an instance.
func presenceCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ssebridge presence", flag.ContinueOnError)
	fs.SetOutput(stderr)
	room := fs.String("room", "", "the room: its users, each with their streams, and the counts")
	user := fs.String("user", "", "the user: their streams, and their streams per room")
	limit := fs.Int("limit", 1000, "with -room: at most this many users (0: the counts only)")
	after := fs.String("after", "", "with -room: the users after this one (the answer's next)")
	base := fs.String("url", "", "an instance, e.g. http://127.0.0.1:8080: ask its GET /presence")
	token := fs.String("token", "", "with -url: PUBLISH_TOKEN (default: $PUBLISH_TOKEN)")
	redisURL := fs.String("redis", "", "read Redis itself instead (default: $REDIS_URL)")
	prefix := fs.String("prefix", "", "with -redis: CHANNEL_PREFIX (default: $CHANNEL_PREFIX, or sse:)")
	given, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if (*room == "") == (*user == "") {
		return usageError{err: errors.New("give -room NAME or -user NAME (one of them)")}
	}
	for _, n := range []struct{ flag, value string }{{"room", *room}, {"user", *user}, {"after", *after}} {
		if n.value != "" {
			if err := wire.CheckName(n.value); err != nil {
				return usageError{err: fmt.Errorf("-%s: %v", n.flag, err)}
			}
		}
	}
	if *limit < 0 {
		return usageError{err: errors.New("-limit: 0 or more")}
	}
	if !given["prefix"] {
		*prefix = envOr("CHANNEL_PREFIX", "sse:")
	}
	q := presenceQuery{room: *room, user: *user, limit: *limit, after: *after}
	var answer any
	switch {
	case *base != "":
		if *token == "" {
			*token = os.Getenv("PUBLISH_TOKEN")
		}
		answer, err = q.ask(ctx, *base, *token)
	default:
		if *redisURL == "" {
			*redisURL = os.Getenv("REDIS_URL")
		}
		if *redisURL == "" {
			t, path, ok, err := findTryOut()
			if err != nil {
				return fmt.Errorf("try-out file: %w", err)
			}
			if !ok {
				return usageError{err: fmt.Errorf("no -url, -redis or REDIS_URL, and no try-out server on this machine (%s)", path)}
			}
			*redisURL, *prefix = t.Redis, t.ChannelPrefix
		}
		answer, err = q.read(ctx, *redisURL, *prefix)
	}
	if err != nil {
		return err
	}
	out, _ := json.Marshal(answer)
	fmt.Fprintln(stdout, string(out))
	return nil
}

// presenceQuery is what `ssebridge presence` asks.
type presenceQuery struct {
	room, user, after string
	limit             int
}

// ask asks an instance's GET /presence, and returns its answer as is.
func (q presenceQuery) ask(ctx context.Context, base, token string) (json.RawMessage, error) {
	v := url.Values{}
	if q.room != "" {
		v.Set("room", q.room)
		v.Set("limit", strconv.Itoa(q.limit))
		if q.after != "" {
			v.Set("after", q.after)
		}
	} else {
		v.Set("user", q.user)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(base, "/")+"/presence?"+v.Encode(), nil)
	if err != nil {
		return nil, usageError{err: fmt.Errorf("-url: %v", err)}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /presence: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return json.RawMessage(body), nil
}

// read reads the presence from Redis, as an instance would answer.
func (q presenceQuery) read(ctx context.Context, redisURL, prefix string) (any, error) {
	rdb, err := flagClient(redisURL)
	if err != nil {
		return nil, usageError{err: err}
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p := store.NewPresence(rdb, prefix)
	if q.room != "" {
		r, err := p.Room(ctx, q.room, q.after, q.limit)
		if r.Users == nil {
			r.Users = map[string]int{}
		}
		return r, err
	}
	return p.User(ctx, q.user)
}
