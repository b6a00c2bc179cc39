package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/stream"
	"github.com/ssebridge/ssebridge/wire"
)

// presenceBackends are the two places presence lives: one Redis, and a
// cluster (a room's keys in its partition, events by SPUBLISH). Each gives
// two instances' Presence on the same data, and a function that subscribes
// to a room's events as its streams would receive them.
func presenceBackends(t *testing.T) map[string]func(t *testing.T) (a, b *store.Presence, events func(room string) <-chan string) {
	return map[string]func(t *testing.T) (a, b *store.Presence, events func(room string) <-chan string){
		"one redis": func(t *testing.T) (*store.Presence, *store.Presence, func(string) <-chan string) {
			rdb := redistest.Start(t).Client()
			return store.NewPresence(rdb, "sse:"), store.NewPresence(rdb, "sse:"), func(room string) <-chan string {
				return relay(t, rdb.Subscribe(context.Background(), "sse:room:"+room))
			}
		},
		"cluster": func(t *testing.T) (*store.Presence, *store.Presence, func(string) <-chan string) {
			cc, c := startUnitCluster(t)
			return c.Presence(), newUnitCluster(t, cc, unitParts, unitMaxlen).Presence(), func(room string) <-chan string {
				ch := clusterShardChannel(room)
				return relay(t, cc.SSubscribe(context.Background(), ch))
			}
		},
	}
}

// clusterShardChannel is where the unit cluster (prefix "sse:") publishes
// a room's live events.
func clusterShardChannel(room string) string {
	return fmt.Sprintf("sse:{p%d}:room:%s", wire.Partition("room:"+room, unitParts), room)
}

// relay hands over the data of each event published on sub, once it is
// subscribed.
func relay(t *testing.T, sub *redis.PubSub) <-chan string {
	t.Helper()
	t.Cleanup(func() { sub.Close() })
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 100)
	go func() {
		for m := range sub.Channel() {
			var env struct {
				Event string          `json:"event"`
				Data  json.RawMessage `json:"data"`
			}
			if err := json.Unmarshal([]byte(m.Payload), &env); err != nil || env.Event != "presence" {
				out <- "bad: " + m.Payload
				continue
			}
			out <- string(env.Data)
		}
	}()
	return out
}

func expectEvents(t *testing.T, ch <-chan string, want ...string) {
	t.Helper()
	for _, w := range want {
		select {
		case got := <-ch:
			if got != w {
				t.Fatalf("event %s, want %s", got, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no event, want %s", w)
		}
	}
	select {
	case got := <-ch:
		t.Fatalf("an event more: %s", got)
	default:
	}
}

func everyRoom(string) bool { return true }

// TestPresenceTwoInstances: two instances' shares add up in the room's
// and the user's answer; a user's join is published when their first
// stream arrives on any instance, their leave when the last one goes; a
// dead instance's share is swept once, with its users' leaves.
func TestPresenceTwoInstances(t *testing.T) {
	for name, backend := range presenceBackends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			a, b, subscribe := backend(t)
			const room = `lobby "1" /x`
			events := subscribe(room)
			write := func(p *store.Presence, changes ...stream.PresenceShare) {
				t.Helper()
				if err := p.Write(ctx, stream.PresenceBatch{Shares: changes, Events: everyRoom}); err != nil {
					t.Fatal(err)
				}
			}
			write(a, stream.PresenceShare{Room: room, User: "alice", Streams: 2}, stream.PresenceShare{User: "alice", Streams: 2})
			write(b, stream.PresenceShare{Room: room, User: "alice", Streams: 1}, stream.PresenceShare{User: "alice", Streams: 1},
				stream.PresenceShare{Room: room, User: "bob", Streams: 1}, stream.PresenceShare{User: "bob", Streams: 1})
			expectEvents(t, events,
				`{"room":"lobby \"1\" \/x","user":"alice","op":"join"}`,
				`{"room":"lobby \"1\" \/x","user":"bob","op":"join"}`)

			got, err := a.Room(ctx, room, "", 10)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]int{"alice": 3, "bob": 1}; !reflect.DeepEqual(got.Users, want) || got.Count.Users != 2 || got.Count.Streams != 4 || got.Next != "" {
				t.Fatalf("room: %+v, want users %v, counts 2 and 4", got, want)
			}
			page, err := b.Room(ctx, room, "", 1)
			if err != nil || !reflect.DeepEqual(page.Users, map[string]int{"alice": 3}) || page.Next != "alice" {
				t.Fatalf("first page: %+v %v", page, err)
			}
			page, err = b.Room(ctx, room, page.Next, 1)
			if err != nil || !reflect.DeepEqual(page.Users, map[string]int{"bob": 1}) || page.Next != "" || page.Count.Users != 2 {
				t.Fatalf("second page: %+v %v", page, err)
			}
			u, err := b.User(ctx, "alice")
			if err != nil || u.Streams != 3 || !reflect.DeepEqual(u.Rooms, map[string]int{room: 3}) {
				t.Fatalf("user: %+v %v", u, err)
			}

			// Both beat (new: each is told to write its share); a sweep now
			// finds no one silent.
			for _, p := range []*store.Presence{a, b} {
				if rewrite, err := p.Beat(ctx); err != nil || !rewrite {
					t.Fatalf("a first beat: rewrite %v, %v; want true (no beat before)", rewrite, err)
				}
			}
			if n, err := a.Sweep(ctx, 10*time.Second, time.Minute, everyRoom); err != nil || n != 0 {
				t.Fatalf("a sweep with both alive: %d, %v", n, err)
			}
			// b dies (its beat set back past the silence, as Retire with no
			// grace does): its share goes, bob leaves; alice stays (a holds
			// two). One sweep claims and sweeps it; the second finds nothing.
			if err := b.Write(ctx, stream.PresenceBatch{Entered: []string{"r" + room, "ualice", "ubob"}}); err != nil {
				t.Fatal(err)
			}
			if err := b.Retire(ctx, 10*time.Second, 0); err != nil {
				t.Fatal(err)
			}
			for i, want := range []int{1, 0} {
				if n, err := a.Sweep(ctx, 10*time.Second, time.Minute, everyRoom); err != nil || n != want {
					t.Fatalf("sweep %d: %d instances, %v; want %d", i+1, n, err, want)
				}
			}
			expectEvents(t, events, `{"room":"lobby \"1\" \/x","user":"bob","op":"leave"}`)
			got, err = a.Room(ctx, room, "", 10)
			if err != nil || !reflect.DeepEqual(got.Users, map[string]int{"alice": 2}) || got.Count.Streams != 2 {
				t.Fatalf("after the sweep: %+v %v", got, err)
			}
			if u, err := a.User(ctx, "bob"); err != nil || u.Streams != 0 || len(u.Rooms) != 0 {
				t.Fatalf("bob after the sweep: %+v %v", u, err)
			}
			// b was alive after all: its next beat says it was swept.
			if rewrite, err := b.Beat(ctx); err != nil || !rewrite {
				t.Fatalf("the swept instance's beat: rewrite %v, %v; want true", rewrite, err)
			}
			if rewrite, err := b.Beat(ctx); err != nil || rewrite {
				t.Fatalf("its next beat: rewrite %v, %v; want false", rewrite, err)
			}
			// A swept instance's late write of zero removes nothing twice; a
			// write repeated (its reply lost) changes nothing.
			write(b, stream.PresenceShare{Room: room, User: "alice", Streams: 0})
			write(a, stream.PresenceShare{Room: room, User: "alice", Streams: 2}, stream.PresenceShare{User: "alice", Streams: 2})
			if got, err := a.Room(ctx, room, "", 10); err != nil || got.Users["alice"] != 2 || got.Count.Streams != 2 {
				t.Fatalf("after the late and the repeated writes: %+v %v", got, err)
			}
			write(a, stream.PresenceShare{Room: room, User: "alice", Streams: 0}, stream.PresenceShare{User: "alice", Streams: 0})
			expectEvents(t, events, `{"room":"lobby \"1\" \/x","user":"alice","op":"leave"}`)
			got, err = a.Room(ctx, room, "", 10)
			if err != nil || len(got.Users) != 0 || got.Count.Users != 0 || got.Count.Streams != 0 {
				t.Fatalf("empty room: %+v %v", got, err)
			}
		})
	}
}

// TestPresenceSweepRacesABeat: an instance taken for dead beats while a
// sweeper removes its share. It learns so from that beat (its share is to
// be written again), and the sweep's end leaves it registered, its index
// kept: it is alive.
func TestPresenceSweepRacesABeat(t *testing.T) {
	rdb := redistest.Start(t).Client()
	ctx := context.Background()
	a, b := store.NewPresence(rdb, "sse:"), store.NewPresence(rdb, "sse:")
	for _, p := range []*store.Presence{a, b} {
		if _, err := p.Beat(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Write(ctx, stream.PresenceBatch{
		Shares:  []stream.PresenceShare{{Room: "lobby", User: "bob", Streams: 1}, {User: "bob", Streams: 1}},
		Entered: []string{"rlobby", "ubob"},
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Retire(ctx, 10*time.Second, 0); err != nil {
		t.Fatal(err)
	}
	var told bool
	midSweep := func(string) bool { // called as the sweep prepares its calls
		rewrite, err := b.Beat(ctx)
		told = told || (err == nil && rewrite)
		return false
	}
	if _, err := a.Sweep(ctx, 10*time.Second, time.Minute, midSweep); err != nil {
		t.Fatal(err)
	}
	if !told {
		t.Fatal("the instance that beat during its sweep was not told to write its share again")
	}
	if rewrite, err := b.Beat(ctx); err != nil || rewrite {
		t.Fatalf("after the sweep: rewrite %v, %v; want false (still registered, not claimed)", rewrite, err)
	}
	if n, err := rdb.SCard(ctx, "sse:presence:shares:"+b.Instance()).Result(); err != nil || n != 2 {
		t.Fatalf("its index: %d entries, %v; want its 2 kept", n, err)
	}
}
