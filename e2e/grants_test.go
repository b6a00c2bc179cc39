package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/ssetest"
)

// grantSession stores a session of user with rooms, each granted at the
// position Redis is at now, as the Django package writes it
// (docs/protocol.md, "Sessions"), and returns that position.
func grantSession(t *testing.T, a *app, key, user string, rooms ...string) string {
	t.Helper()
	pos, err := a.rdb.Get(context.Background(), a.cfg.ChannelPrefix+"cursor").Result()
	if err != nil && err != redis.Nil {
		t.Fatal(err)
	}
	granted := map[string]string{}
	for _, r := range rooms {
		granted[r] = pos
	}
	v, _ := json.Marshal(map[string]any{"user": user, "rooms": rooms, "granted": granted})
	if err := a.rdb.Set(context.Background(), key, v, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	return pos
}

// TestGrantBoundsHistory: a stream never receives a room's events from
// before its session was granted the room, however it gets the room: a
// resume from an id older than the grant, a join, or the session recheck
// finding the room; events after the grant all arrive.
func TestGrantBoundsHistory(t *testing.T) {
	a := startApp(t, nil, map[string]string{"SESSION_RECHECK_INTERVAL": "200ms"})
	join := func(user, room, since string) {
		msg, _ := json.Marshal(map[string]string{"op": "join", "user": user, "room": room, "since": since})
		a.publish("control", string(msg))
	}
	// The instance must be behind the grant for a join to show the leak:
	// no stream of it has the room, so its events do not reach it.
	for i, tc := range []struct {
		name string
		get  func(t *testing.T, user, key, room string) *ssetest.Stream
	}{
		{"resume from before the grant", func(t *testing.T, user, key, room string) *ssetest.Stream {
			setSession(t, a.rdb, key, user)
			s, old, err := openReady(context.Background(), a.url, bearer(key[len(a.cfg.SessionPrefix):]))
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			publishDurable(t, a.rdb, "room:"+room, `{"event":"n","data":"before"}`)
			grantSession(t, a, key, user, room)
			publishDurable(t, a.rdb, "room:"+room, `{"event":"n","data":"after"}`)
			return a.openResume(t, key[len(a.cfg.SessionPrefix):], old)
		}},
		{"join", func(t *testing.T, user, key, room string) *ssetest.Stream {
			setSession(t, a.rdb, key, user)
			s := a.openResume(t, key[len(a.cfg.SessionPrefix):], "")
			publishDurable(t, a.rdb, "room:"+room, `{"event":"n","data":"before"}`)
			since := grantSession(t, a, key, user, room)
			publishDurable(t, a.rdb, "room:"+room, `{"event":"n","data":"after"}`)
			join(user, room, since)
			return s
		}},
		{"session recheck", func(t *testing.T, user, key, room string) *ssetest.Stream {
			setSession(t, a.rdb, key, user)
			s := a.openResume(t, key[len(a.cfg.SessionPrefix):], "")
			publishDurable(t, a.rdb, "room:"+room, `{"event":"n","data":"before"}`)
			grantSession(t, a, key, user, room)
			publishDurable(t, a.rdb, "room:"+room, `{"event":"n","data":"after"}`)
			return s // the recheck (200ms) joins it
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user, room := fmt.Sprintf("grantee%d", i), fmt.Sprintf("secret%d", i)
			s := tc.get(t, user, a.cfg.SessionPrefix+"tok-"+user, room)
			want(t, s, "n", "after")
		})
	}
}

// TestGrantBoundsJoinDuringReplay: a room joined while a resume's replay
// is between two pages is read, by the pages that follow, from the
// stream's resume position: neither the join's since nor the grant bound
// it, and the room's history from before the grant reaches the new member.
// The member paces the replay (a client that stops reading), so the join
// lands mid-pass whenever it likes.
func TestGrantBoundsJoinDuringReplay(t *testing.T) {
	a := startApp(t, nil, nil)
	user, room := "latecomer", "vault"
	key := a.cfg.SessionPrefix + "tok-" + user
	token := key[len(a.cfg.SessionPrefix):]
	setSession(t, a.rdb, key, user)
	s, old, err := openReady(context.Background(), a.url, bearer(token))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	// More of the user's own history than loopback's socket buffers hold
	// (tcp_wmem's 4 MiB at most), under REPLAY_MAX_BYTES: the replay has
	// many pages, and its writer waits for the reader between them.
	big := strings.Repeat("x", 60000)
	for range 160 {
		publishDurable(t, a.rdb, "user:"+user, `{"event":"u","data":"`+big+`"}`)
	}
	publishDurable(t, a.rdb, "room:"+room, `{"event":"n","data":"before"}`)
	since, err := a.rdb.Get(context.Background(), a.cfg.ChannelPrefix+"cursor").Result()
	if err != nil {
		t.Fatal(err)
	}

	// A resume from before all of it, read by a client with a small
	// receive buffer that stops after the first replayed event.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(a.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "GET /events HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nLast-Event-ID: %s\r\nAccept: text/event-stream\r\n\r\n",
		strings.TrimPrefix(a.url, "http://"), token, old)
	r := bufio.NewReaderSize(conn, 4096)
	next := func() (event, data string) {
		t.Helper()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading the stream: %v", err)
			}
			line = strings.TrimRight(line, "\r\n")
			if line == "" && event != "" {
				return event, data
			}
			if v, ok := strings.CutPrefix(line, "event: "); ok {
				event = v
			}
			if v, ok := strings.CutPrefix(line, "data: "); ok {
				data = v
			}
		}
	}
	for {
		if ev, _ := next(); ev == "u" {
			break // the pass has begun, without the room
		}
	}

	// The backend grants the room now (as set_rooms does): the session
	// and a join with its since.
	v, _ := json.Marshal(map[string]any{"user": user, "rooms": []string{room}, "granted": map[string]string{room: since}})
	if err := a.rdb.Set(context.Background(), key, v, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	msg, _ := json.Marshal(map[string]string{"op": "join", "user": user, "room": room, "since": since})
	a.publish("control", string(msg))
	eventually(t, 5*time.Second, "the join applied", func() bool {
		return a.metric(`ssebridge_control_applied_total{op="join"}`) == 1
	})
	publishDurable(t, a.rdb, "room:"+room, `{"event":"n","data":"after"}`)

	for {
		ev, data := next()
		if ev != "n" {
			continue
		}
		if data == "before" {
			t.Fatal("the room's event from before the grant reached the stream that joined it during a replay")
		}
		if data == "after" {
			return
		}
	}
}
