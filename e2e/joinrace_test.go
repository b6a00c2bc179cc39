package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/wire"
)

// sseEvent is one event as a raw client reads it off the wire.
type sseEvent struct {
	id, event, data string
}

// wireStream is GET /events on a connection of its own, read by hand: no
// EventSource, no ssetest, nothing between the bytes and the test.
type wireStream struct {
	conn net.Conn
	r    *bufio.Reader
}

// openRaw writes GET /events with token (and lastID as Last-Event-ID, if
// set) and returns at once, before any answer.
func openRaw(t *testing.T, addr, token, lastID string) *wireStream {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second)) // a try never takes that long: a stall fails it
	resume := ""
	if lastID != "" {
		resume = "Last-Event-ID: " + lastID + "\r\n"
	}
	if _, err := fmt.Fprintf(conn, "GET /events HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n%sAccept: text/event-stream\r\n\r\n", addr, token, resume); err != nil {
		conn.Close()
		t.Fatal(err)
	}
	return &wireStream{conn: conn, r: bufio.NewReader(conn)}
}

// head reads the response's status line and headers.
func (s *wireStream) head() error {
	status, err := s.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the status line: %w", err)
	}
	if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
		return fmt.Errorf("status %q", strings.TrimSpace(status))
	}
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading the headers: %w", err)
		}
		if line == "\r\n" || line == "\n" {
			return nil
		}
	}
}

// next reads the next event; comments (heartbeats) and retry: are skipped.
func (s *wireStream) next() (sseEvent, error) {
	var ev sseEvent
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			if ev.event != "" || ev.data != "" {
				return ev, nil
			}
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			ev.id = value
		case "event":
			ev.event = value
		case "data":
			ev.data = value
		}
	}
}

// TestJoinRightAfterRequest is issue 17's client-level test of item 1: a
// raw HTTP client sends GET /events, and 0–3 ms later the backend grants
// the user a room as the Django package's set_rooms does (the session
// rewritten with the room and its grant position, and {"op":"join"} with
// that position as since, in one MULTI), then publishes two durable events
// on the room. Every durable event of the room published after the join
// that the stream owes must arrive, in order, once: a marker published on
// the user's channel after the stream's ready, read last, proves by order
// (the stream's ids only grow) that what is missing will never come.
//
// What the stream owes: a resume, everything after its Last-Event-ID,
// hence both events; a fresh stream whose ready lists no room got the
// room by the join, and owes both events (published after it); a fresh
// stream whose session read already had the room starts at its ready's
// id and owes only what follows it.
//
// 500 tries per subtest on one server, each on a user and a room of its own,
// each stream closed after its try.
func TestJoinRightAfterRequest(t *testing.T) {
	a := startApp(t, nil, nil)
	addr := strings.TrimPrefix(a.url, "http://")
	ctx := context.Background()
	// A first durable event, so that the cursor key exists: a resume's
	// Last-Event-ID and the grants are read from it.
	publishDurable(t, a.rdb, "broadcast", `{"event":"seed","data":"0"}`)

	for _, mode := range []string{"fresh", "resume"} {
		t.Run(mode, func(t *testing.T) {
			const tries = 500
			budget := time.Now().Add(25 * time.Second) // with -race on two busy cores: stop early rather than time out
			lost, broken, done := 0, 0, 0
			var examples []string
			for i := range tries {
				if time.Now().After(budget) {
					t.Logf("stopped after %d tries: the time budget is spent", i)
					break
				}
				user, room := fmt.Sprintf("joiner-%s-%d", mode, i), fmt.Sprintf("jr-%s-%d", mode, i)
				token := "tok-" + user
				key := a.cfg.SessionPrefix + token
				setSession(t, a.rdb, key, user)
				lastID := ""
				if mode == "resume" {
					lastID = a.rdb.Get(ctx, a.cfg.ChannelPrefix+"cursor").Val()
				}

				s := openRaw(t, addr, token, lastID)
				// The backend's request comes 0–3 ms after the browser's:
				// the workload, not a synchronisation.
				time.Sleep(time.Duration(rand.IntN(3001)) * time.Microsecond)
				since := a.rdb.Get(ctx, a.cfg.ChannelPrefix+"cursor").Val()
				sess, _ := json.Marshal(map[string]any{"user": user, "rooms": []string{room}, "granted": map[string]string{room: since}})
				join, _ := json.Marshal(map[string]string{"op": "join", "user": user, "room": room, "since": since})
				if _, err := a.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.SetArgs(ctx, key, sess, redis.SetArgs{KeepTTL: true})
					p.Publish(ctx, a.cfg.ChannelPrefix+"control", join)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				published := []string{
					publishDurable(t, a.rdb, "room:"+room, `{"event":"n","data":"1"}`),
					publishDurable(t, a.rdb, "room:"+room, `{"event":"n","data":"2"}`),
				}

				got, ready, err := s.readTry(t, a, user)
				s.conn.Close()
				done++
				if err != nil {
					broken++
					if len(examples) < 5 {
						examples = append(examples, fmt.Sprintf("try %d: %v", i, err))
					}
					continue
				}
				owed := published
				if mode == "fresh" && slices.Contains(ready.rooms, room) {
					start, err := wire.ParseCursor(ready.id)
					if err != nil {
						t.Fatalf("ready's id %q: %v", ready.id, err)
					}
					owed = slices.DeleteFunc(slices.Clone(published), func(id string) bool {
						c, _ := wire.ParseCursor(id)
						return !start.Before(c)
					})
				}
				if !slices.Equal(got, owed) {
					lost++
					if len(examples) < 5 {
						examples = append(examples, fmt.Sprintf("try %d: room events %v, want %v (published %v; ready rooms %v, id %q)", i, got, owed, published, ready.rooms, ready.id))
					}
				}
			}
			t.Logf("%s: %d of %d tries lost or repeated a room event, %d broke", mode, lost, done, broken)
			if lost+broken > 0 {
				t.Errorf("%s: %d of %d tries lost or repeated a durable event of a room published after the join, %d broke; first: %s",
					mode, lost, done, broken, strings.Join(examples, "; "))
			}
		})
	}
}

// readyOf is what a try needs of the ready event.
type readyOf struct {
	id    string
	rooms []string
}

// readTry reads the stream's head and events up to its ready, publishes a
// durable marker on the user's channel (after the stream's start, so owed
// in both modes), and reads on up to it. It returns the ids of the room
// events read before the marker, in the order read, and the ready; an
// error if the stream failed or its ids went backwards.
func (s *wireStream) readTry(t *testing.T, a *app, user string) (roomIDs []string, ready readyOf, err error) {
	t.Helper()
	if err := s.head(); err != nil {
		return nil, ready, err
	}
	var last wire.Cursor
	marker := ""
	for {
		ev, err := s.next()
		if err != nil {
			return nil, ready, fmt.Errorf("after room events %v: %w", roomIDs, err)
		}
		if ev.id != "" && ev.event != "ready" {
			c, err := wire.ParseCursor(ev.id)
			if err != nil {
				return nil, ready, fmt.Errorf("event id %q: %w", ev.id, err)
			}
			if !last.Before(c) {
				return nil, ready, fmt.Errorf("id %s after %s: not in order", ev.id, last)
			}
			last = c
		}
		switch ev.event {
		case "ready":
			var r struct{ Rooms []string }
			if err := json.Unmarshal([]byte(ev.data), &r); err != nil {
				return nil, ready, fmt.Errorf("ready %q: %w", ev.data, err)
			}
			ready = readyOf{id: ev.id, rooms: r.Rooms}
			marker = publishDurable(t, a.rdb, "user:"+user, `{"event":"marker","data":"m"}`)
		case "n":
			roomIDs = append(roomIDs, ev.id)
		case "marker":
			if ev.id == marker {
				return roomIDs, ready, nil
			}
		case "reset":
			return nil, ready, fmt.Errorf("reset %s", ev.data)
		}
	}
}
