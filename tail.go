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
	neturl "net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/r3labs/sse/v2"
	"gopkg.in/cenkalti/backoff.v1"
)

// tailCommand is `ssebridge tail`: print a stream's events, resuming with
// the last id after every drop, until interrupted or refused for good.
func tailCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parseTailArgs(args, stderr)
	if err != nil {
		return err
	}
	if !a.given["url"] && !a.given["token"] {
		t, path, ok, err := findTryOut()
		if err != nil {
			return fmt.Errorf("try-out file: %w", err)
		}
		if ok {
			tok, err := tryOutLogin(ctx, t, a.user, a.rooms)
			if err != nil {
				return fmt.Errorf("try-out mode: %w\n%s", err, t.stale(path))
			}
			a.url, a.token = t.URL+"/events", tok
			fmt.Fprintf(stderr, "tail: try-out mode: %s as user %q in rooms %q, with a session from POST /dev/login (from %s)\n", a.url, a.user, a.rooms, path)
		}
	}
	if a.token == "" {
		return usageError{err: errors.New("-token is required: a session token, as the backend stored it under session:<token> (try-out mode, with no flags, needs a server without REDIS_URL running on this machine)")}
	}
	return tail(ctx, a, stdout, stderr)
}

// tailArgs are `ssebridge tail`'s flags; given names those on the command
// line.
type tailArgs struct {
	url, token, lastID string
	user, rooms        string
	given              map[string]bool
}

func parseTailArgs(args []string, stderr io.Writer) (tailArgs, error) {
	var a tailArgs
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&a.url, "url", "http://localhost:8080/events", "the stream's URL")
	fs.StringVar(&a.token, "token", "", "session token, sent as Authorization: Bearer")
	fs.StringVar(&a.lastID, "last-event-id", "", "resume after this id")
	fs.StringVar(&a.user, "user", "tail", "try-out mode: the user of the session tail makes itself")
	fs.StringVar(&a.rooms, "rooms", "lobby", "try-out mode: that session's rooms, comma-separated")
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
	var err error
	a.given, err = parseFlags(fs, args)
	return a, err
}

// tail prints the stream at a.url, resuming after every drop, until ctx
// ends or the server refuses it for good (a 4xx but 429).
func tail(ctx context.Context, a tailArgs, stdout, stderr io.Writer) error {
	client := sse.NewClient(a.url, sse.ClientMaxBufferSize(1<<20))
	client.Headers["Authorization"] = "Bearer " + a.token
	client.LastEventID.Store([]byte(a.lastID))
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
