package main

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestExpectedCounts: each stream is due, per scenario, exactly the events
// on the channels it holds, worked out here the slow way, by channel name;
// a room of one member and one of ten (the room-size curve's smallest)
// included.
func TestExpectedCounts(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    config
		want []int64
	}{
		{"room of 1", config{scenario: "room", n: 1, events: 5}, []int64{5}},
		{"room of 10", config{scenario: "room", n: 10, events: 3}, []int64{3, 3, 3, 3, 3, 3, 3, 3, 3, 3}},
		{"broadcast", config{scenario: "broadcast", n: 4, events: 2}, []int64{2, 2, 2, 2}},
		{"users", config{scenario: "users", n: 3, offset: 5, events: 7}, []int64{3, 2, 2}},
		{"rooms", config{scenario: "rooms", n: 10, rooms: 3, events: 7}, []int64{3, 2, 2, 3, 2, 2, 3, 2, 2, 3}},
		{"rooms, offset", config{scenario: "rooms", n: 4, offset: 1, rooms: 3, events: 7}, []int64{2, 2, 3, 2}},
		{"rooms, one each", config{scenario: "rooms", n: 4, rooms: 4, events: 8}, []int64{2, 2, 2, 2}},
		{"more rooms than streams", config{scenario: "rooms", n: 2, rooms: 5, events: 11}, []int64{3, 2}},
		{"fewer events than rooms", config{scenario: "rooms", n: 6, rooms: 5, events: 3}, []int64{1, 1, 1, 0, 0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.workers, c.rate = 1, 1
			if err := prepareLoad(&c, &Result{}); err != nil {
				t.Fatal(err)
			}
			got := expectedCounts(c)
			if !slices.Equal(got, tc.want) {
				t.Errorf("expected %v, want %v", got, tc.want)
			}
			for k := range c.n {
				held := streamChannels(c, k)
				var due []int32
				for seq := range c.events {
					if ch, _ := c.channel(seq); slices.Contains(held, ch) {
						due = append(due, int32(seq))
					}
				}
				if int64(len(due)) != got[k] {
					t.Errorf("stream %d (%v): %d due by channel name, %d expected", k, held, len(due), got[k])
				}
				if c.want != nil && !slices.Equal(c.want[k], due) {
					t.Errorf("stream %d (%v): want list %v, due by channel name %v", k, held, c.want[k], due)
				}
			}
		})
	}
}

// TestDeliveries: -deliveries D publishes the events that make D
// deliveries or a little more, over -seconds, whatever the rooms.
func TestDeliveries(t *testing.T) {
	for _, tc := range []struct {
		scenario      string
		n, rooms, d   int
		events        int
		deliveries    int64
		rate, seconds float64
	}{
		{"rooms", 10000, 10, 200000, 200, 200000, 20, 10},
		{"rooms", 10000, 1000, 200000, 20000, 200000, 2000, 10},
		{"rooms", 10000, 10000, 200000, 200000, 200000, 20000, 10},
		{"rooms", 1000, 7, 1000, 7, 1000, 0.7, 10},
		{"rooms", 10, 3, 5, 2, 7, 0.2, 10}, // rooms 0 and 1, of 4 and 3 members
		{"room", 1, 0, 20000, 20000, 20000, 2000, 10},
		{"room", 3, 0, 10, 4, 12, 2, 2},
		{"room", 1000, 0, 100000, 100, 100000, 10, 10},
		{"broadcast", 1000, 0, 100500, 101, 101000, 10.1, 10},
		{"users", 5, 0, 7, 7, 7, 1.4, 5},
	} {
		c := config{scenario: tc.scenario, n: tc.n, rooms: tc.rooms, deliveries: tc.d, seconds: tc.seconds, workers: 1}
		var res Result
		if err := prepareLoad(&c, &res); err != nil {
			t.Fatalf("%s, n %d, rooms %d: %v", tc.scenario, tc.n, tc.rooms, err)
		}
		var sum int64
		for _, e := range expectedCounts(c) {
			sum += e
		}
		if c.events != tc.events || res.Events != tc.events || sum != tc.deliveries || c.rate != tc.rate || res.Seconds != tc.seconds {
			t.Errorf("%s, n %d, rooms %d, -deliveries %d: %d events at %g/s over %gs, %d deliveries; want %d at %g/s, %d",
				tc.scenario, tc.n, tc.rooms, tc.d, c.events, c.rate, res.Seconds, sum, tc.events, tc.rate, tc.deliveries)
		}
	}
}

// TestDistinctChannels: the logical channels the streams hold between
// them, on ssebridge (user, session rooms, broadcast) and on Centrifugo
// (those of the token).
func TestDistinctChannels(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    config
		want int
	}{
		{"rooms", config{scenario: "rooms", n: 10, rooms: 3}, 10 + 3 + 1},
		{"more rooms than streams", config{scenario: "rooms", n: 2, rooms: 5}, 2 + 2 + 1},
		{"room", config{scenario: "room", n: 10}, 10 + 1 + 1},
		{"broadcast", config{scenario: "broadcast", n: 3}, 3 + 1 + 1},
		{"centrifugo broadcast", config{scenario: "broadcast", n: 3, centSecret: "s"}, 1},
		{"centrifugo users", config{scenario: "users", n: 4, centSecret: "s"}, 4},
	} {
		if got := distinctChannels(tc.c); got != tc.want {
			t.Errorf("%s: %d channels, want %d", tc.name, got, tc.want)
		}
	}
}

// TestPrepareLoadRefuses: what the rooms scenario and -deliveries cannot
// be given.
func TestPrepareLoadRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    config
	}{
		{"no rooms", config{scenario: "rooms", n: 10, events: 5, rate: 1, workers: 1}},
		{"centrifugo", config{scenario: "rooms", n: 10, rooms: 2, events: 5, rate: 1, workers: 1, centSecret: "s"}},
		{"storm", config{scenario: "rooms", n: 10, rooms: 2, events: 5, rate: 1, workers: 1, storm: true}},
		{"no workers", config{scenario: "rooms", n: 10, rooms: 2, events: 5, rate: 1}},
		{"no events", config{scenario: "rooms", n: 10, rooms: 2, rate: 1, workers: 1}},
		{"deliveries without seconds", config{scenario: "room", n: 10, deliveries: 100}},
		{"deliveries in chat", config{scenario: "chat", n: 100, deliveries: 100, seconds: 1}},
	} {
		if err := prepareLoad(&tc.c, &Result{}); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

// TestPublishPlanned: every event is published once, on its channel, one
// by one or in batches of those due within batchWindow (all of them here,
// due at once, in batches of maxBatch).
func TestPublishPlanned(t *testing.T) {
	const events = 1000
	for _, tc := range []struct {
		name    string
		batched bool
		calls   int
	}{
		{"one by one", false, events},
		{"batched", true, (events + maxBatch - 1) / maxBatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &benchRun{c: config{scenario: "rooms", n: 3, rooms: 3, events: events, workers: 4}}
			var mu sync.Mutex
			sent, calls := map[int64]int{}, 0
			record := func(ch string, payload []byte) {
				i := bytes.Index(payload, []byte(`"s":`))
				seq, _ := leadingInt(payload[i+4:])
				if want, _ := r.c.channel(int(seq)); ch != want {
					t.Errorf("event %d on %s, want %s", seq, ch, want)
				}
				sent[seq]++
			}
			pub := func(_ context.Context, ch string, payload []byte) error {
				mu.Lock()
				defer mu.Unlock()
				calls++
				record(ch, payload)
				return nil
			}
			var batch batchPublisher
			if tc.batched {
				batch = func(_ context.Context, channels []string, payloads [][]byte) error {
					mu.Lock()
					defer mu.Unlock()
					calls++
					for k := range channels {
						record(channels[k], payloads[k])
					}
					return nil
				}
			}
			err := r.publishPlanned(context.Background(), pub, batch, time.Now(), func(int) time.Duration { return 0 })
			if err != nil {
				t.Fatal(err)
			}
			if len(sent) != events || calls != tc.calls {
				t.Errorf("%d events sent in %d calls, want %d in %d", len(sent), calls, events, tc.calls)
			}
			for seq, n := range sent {
				if n != 1 || seq < 0 || seq >= events {
					t.Errorf("event %d sent %d times", seq, n)
				}
			}
		})
	}
}
