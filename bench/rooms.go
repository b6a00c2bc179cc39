package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The rooms scenario and -deliveries, for the curves of how cost grows
// (bench/curves.sh).
//
// -scenario rooms -rooms R: stream i (user u{i}) is in exactly one room,
// r{i%R}; event seq goes to room r{seq%R}, round-robin, so every room gets
// the same number of events (one more for the first events%R rooms) and,
// with R dividing N, has N/R members. Each stream's due events are a list
// (seq ≡ i mod R), as the chat's are, not a bitmap of the run's events:
// at 10,000 rooms a run publishes 200,000 events, of which each stream is
// due 20.
//
// -deliveries D, in any scenario but chat, sets -events and -rate from the
// deliveries wanted: events = D divided by the deliveries of one event (N
// streams for broadcast and room, 1 for users, N/R for rooms), rounded up,
// published evenly over -seconds. So the rooms curve keeps the deliveries
// the same whatever R (events = D×R/N), and the room-size curve (-scenario
// room -n M) the same whatever M. The expected deliveries are still
// counted stream by stream, exactly: D or a little more (the rounding up;
// with rooms, the first rooms have both the extra events and, where R does
// not divide N, the extra members).
//
// The rooms' events and those of -deliveries (but with -storm) are
// published by -workers concurrent publishers, each at its planned time,
// as the chat's are; with -publish redis, those due within batchWindow of
// each other go out together, pipelined (publishPlanned): the rooms curve
// publishes up to 20,000 events a second, which one PUBLISH at a time would
// make the generator's largest cost.

// roomName is room j's name in the rooms scenario (its channel is
// room:r{j}).
func roomName(j int) string { return "r" + strconv.Itoa(j) }

// roomsWant returns, for n streams numbered from offset, each in room
// i%rooms, the sequence numbers of the events due to each of them, in
// ascending order and never nil (see chatPlan.want).
func roomsWant(n, offset, rooms, events int) [][]int32 {
	want := make([][]int32, n)
	for k := range want {
		first := (offset + k) % rooms
		w := make([]int32, 0, max(0, (events-first+rooms-1)/rooms))
		for seq := first; seq < events; seq += rooms {
			w = append(w, int32(seq))
		}
		want[k] = w
	}
	return want
}

// eventsFor returns how many events make at least deliveries in c's
// scenario: deliveries over one event's, rounded up.
func eventsFor(c config, deliveries int) (int, error) {
	switch c.scenario {
	case "broadcast", "room":
		return (deliveries + c.n - 1) / c.n, nil
	case "users":
		return deliveries, nil
	case "rooms":
		return int((int64(deliveries)*int64(c.rooms) + int64(c.n) - 1) / int64(c.n)), nil
	}
	return 0, fmt.Errorf("-deliveries: not with -scenario %s", c.scenario)
}

// prepareLoad applies -deliveries and plans a rooms run into c (the chat
// has prepareChat), and fills in what res says of them.
func prepareLoad(c *config, res *Result) error {
	if c.deliveries > 0 {
		if c.seconds <= 0 {
			return fmt.Errorf("-deliveries needs -seconds above 0")
		}
		events, err := eventsFor(*c, c.deliveries)
		if err != nil {
			return err
		}
		c.events, c.rate = events, float64(events)/c.seconds
		res.Events, res.Rate, res.Seconds = c.events, c.rate, c.seconds
	}
	if c.scenario != "rooms" {
		return nil
	}
	switch {
	case c.rooms < 1:
		return fmt.Errorf("-scenario rooms needs -rooms 1 or more")
	case c.centSecret != "":
		return fmt.Errorf("-scenario rooms is for ssebridge (-sessions), not Centrifugo")
	case c.storm:
		return fmt.Errorf("-scenario rooms does not take -storm")
	case c.workers < 1 || c.rate <= 0 || c.events < 1:
		return fmt.Errorf("-scenario rooms needs -workers 1 or more and events to publish at a positive rate")
	}
	c.want = roomsWant(c.n, c.offset, c.rooms, c.events)
	res.Rooms = c.rooms
	return nil
}

// sessionRooms are the rooms stream k's ssebridge session names.
func sessionRooms(c config, k int) []string {
	switch c.scenario {
	case "chat":
		return c.chat.rooms(k)
	case "rooms":
		return []string{roomName((c.offset + k) % c.rooms)}
	}
	return []string{"bench"}
}

// streamChannels are the logical channels stream k holds: on Centrifugo
// those its connection token names; on ssebridge its user channel, its
// session's rooms and broadcast.
func streamChannels(c config, k int) []string {
	i := c.offset + k
	if c.centSecret == "" {
		channels := []string{"user:u" + strconv.Itoa(i), "broadcast"}
		for _, room := range sessionRooms(c, k) {
			channels = append(channels, "room:"+room)
		}
		return channels
	}
	switch c.scenario {
	case "users":
		return []string{"user:u" + strconv.Itoa(i)}
	case "chat":
		return c.chat.channels(k, c.offset)
	}
	ch, _ := c.channel(0)
	return []string{ch}
}

// distinctChannels counts the logical channels the streams hold between
// them: what the server under test needs subscribed in Redis, against
// which DistinctChannels and RedisPubSubChannels set the channels it does
// subscribe.
func distinctChannels(c config) int {
	seen := map[string]struct{}{}
	for k := range c.n {
		for _, ch := range streamChannels(c, k) {
			seen[ch] = struct{}{}
		}
	}
	return len(seen)
}

// expectedCounts are the deliveries due to each stream (by number less
// -offset): from its list with one (chat, rooms), else from each event's
// recipients.
func expectedCounts(c config) []int64 {
	out := make([]int64, c.n)
	if c.want != nil {
		for k, want := range c.want {
			out[k] = int64(len(want))
		}
		return out
	}
	for seq := range c.events {
		if _, to := c.channel(seq); to >= 0 {
			out[to-c.offset]++
		} else {
			for k := range out {
				out[k]++
			}
		}
	}
	return out
}

// pubsubChannels counts the channels Redis has subscribers on (PUBSUB
// CHANNELS *), whoever subscribed them: the server under test alone, as the
// bench subscribes to none.
func pubsubChannels(ctx context.Context, rdb *redis.Client) int {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	channels, err := rdb.PubSubChannels(ctx, "*").Result()
	if err != nil {
		return -1
	}
	return len(channels)
}
