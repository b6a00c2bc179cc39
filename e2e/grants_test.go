package e2e

import (
	"context"
	"encoding/json"
	"fmt"
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
