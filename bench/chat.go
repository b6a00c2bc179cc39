package main

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"
)

// The chat scenario: stream k (user u{offset+k}) holds its user channel,
// two distinct rooms and the broadcast channel, as a chat application's
// page does; the backend sends direct messages, room messages and
// broadcasts at their own rates.
//
// Room layout, for N streams (deterministic for a -seed):
//
//   - N/10 rooms; 2×N memberships in all (every stream is in two rooms).
//   - max(1, N/2000) big rooms, chat0, chat1…, of N/10 members each: at
//     10,000 streams, 5 rooms of 1,000.
//   - The other rooms share the remaining memberships at 5–20 each: sizes
//     drawn uniformly in 5–20, then moved one membership at a time within
//     the bounds until they sum up exactly (mean 15.1 at 10,000 streams,
//     19.2 at 1,000; the bounds widen where the mean falls outside them,
//     as below 200 streams).
//   - The rooms are laid out in a shuffled order as 2×N slots, each room
//     as many consecutive slots as it has members; stream perm[k] (perm a
//     shuffle of the streams) takes slots k and N+k. No room has more than
//     N members, so its run of slots cannot hold both: the two rooms are
//     always distinct. Which rooms share members is therefore banded; the
//     fan-out and each stream's load, what the run measures, are not.
//
// Events: each kind at its own rate, event i of a kind at i/rate seconds
// from the start, the kinds merged by time (direct, room, broadcast at a
// tie); the sequence number is the position in that order. A direct
// message goes to a user drawn uniformly; a room message to a room drawn
// uniformly among the rooms, not weighted by size: rooms equally chatty
// keep the deliveries at 20 per room message on average (2N memberships
// over N/10 rooms), whereas weighting by members would send a third of them
// to the five big rooms and make ~260 deliveries of each, ten times the
// load, which two cores would not carry next to a broadcast.
const (
	chatMinStreams = 100 // below it the rooms could not be both 5–20 and distinct per stream
	chatSmallMin   = 5
	chatSmallMax   = 20
)

// chatKind is the kind of a chat event.
type chatKind uint8

const (
	chatDirect chatKind = iota
	chatRoom
	chatBroadcast
	chatKinds
)

func (k chatKind) String() string {
	switch k {
	case chatDirect:
		return "direct"
	case chatRoom:
		return "room"
	}
	return "broadcast"
}

// chatLayout is who holds which room.
type chatLayout struct {
	members [][]int32  // each room's streams (by index, 0…N-1), ascending
	of      [][2]int32 // each stream's two rooms
}

// chatEvent is one planned event: when it is sent, after the start, and to
// which stream (direct) or room (room).
type chatEvent struct {
	at   time.Duration
	kind chatKind
	to   int32
}

// chatPlan is a whole chat run: the layout, the events in sequence order,
// and each stream's expected sequence numbers, ascending and never nil (a
// stream's bitmap of what arrived is sized by these alone; a nil list
// would mean the other scenarios' bitmap by sequence number).
type chatPlan struct {
	layout    chatLayout
	events    []chatEvent
	want      [][]int32
	published [chatKinds]int
}

// chatRoomName is room j's name (its channel is room:<name>).
func chatRoomName(j int32) string { return "chat" + strconv.Itoa(int(j)) }

// chatRoomSizes returns the members of each room for n streams: the big
// rooms first, then the small ones (see the layout above).
func chatRoomSizes(n int, rng *rand.Rand) []int {
	rooms, big := n/10, max(1, n/2000)
	sizes := make([]int, rooms)
	rest := 2 * n
	for j := range big {
		sizes[j] = n / 10
		rest -= sizes[j]
	}
	small := sizes[big:]
	lo := min(chatSmallMin, rest/len(small))
	hi := max(chatSmallMax, (rest+len(small)-1)/len(small))
	sum := 0
	for j := range small {
		small[j] = lo + rng.IntN(hi-lo+1)
		sum += small[j]
	}
	for sum != rest {
		step := 1
		if sum > rest {
			step = -1
		}
		// A room drawn at random, or the next one that can still move.
		j := rng.IntN(len(small))
		for small[j]+step < lo || small[j]+step > hi {
			j = (j + 1) % len(small)
		}
		small[j] += step
		sum += step
	}
	return sizes
}

// newChatLayout lays out n streams' rooms (see above).
func newChatLayout(n int, rng *rand.Rand) (chatLayout, error) {
	if n < chatMinStreams {
		return chatLayout{}, fmt.Errorf("-scenario chat needs -n %d or more", chatMinStreams)
	}
	sizes := chatRoomSizes(n, rng)
	slots := make([]int32, 0, 2*n)
	for _, j := range rng.Perm(len(sizes)) {
		for range sizes[j] {
			slots = append(slots, int32(j))
		}
	}
	l := chatLayout{members: make([][]int32, len(sizes)), of: make([][2]int32, n)}
	for k, s := range rng.Perm(n) {
		l.of[s] = [2]int32{slots[k], slots[n+k]}
	}
	for s, two := range l.of {
		for _, j := range two {
			l.members[j] = append(l.members[j], int32(s))
		}
	}
	return l, nil
}

// newChatPlan plans seconds of events at rates (by kind, per second) over
// layout, and works out what each stream is due.
func newChatPlan(l chatLayout, seconds float64, rates [chatKinds]float64, rng *rand.Rand) chatPlan {
	p := chatPlan{layout: l, want: make([][]int32, len(l.of))}
	for s := range p.want {
		p.want[s] = []int32{}
	}
	for kind, rate := range rates {
		if rate <= 0 {
			continue
		}
		count := int(math.Round(rate * seconds))
		p.published[kind] = count
		for i := range count {
			at := time.Duration(float64(i) / rate * float64(time.Second))
			p.events = append(p.events, chatEvent{at: at, kind: chatKind(kind)})
		}
	}
	slices.SortStableFunc(p.events, func(a, b chatEvent) int { return cmp.Compare(a.at, b.at) })
	for seq := range p.events {
		ev := &p.events[seq]
		switch ev.kind {
		case chatDirect:
			ev.to = int32(rng.IntN(len(l.of)))
			p.want[ev.to] = append(p.want[ev.to], int32(seq))
		case chatRoom:
			ev.to = int32(rng.IntN(len(l.members)))
			for _, s := range l.members[ev.to] {
				p.want[s] = append(p.want[s], int32(seq))
			}
		default:
			for s := range p.want {
				p.want[s] = append(p.want[s], int32(seq))
			}
		}
	}
	return p
}

// channel is event seq's logical channel; offset numbers the first stream.
func (p *chatPlan) channel(seq, offset int) string {
	ev := p.events[seq]
	switch ev.kind {
	case chatDirect:
		return "user:u" + strconv.Itoa(offset+int(ev.to))
	case chatRoom:
		return "room:" + chatRoomName(ev.to)
	}
	return "broadcast"
}

// channels are the logical channels stream k holds; offset numbers the
// first stream.
func (p *chatPlan) channels(k, offset int) []string {
	two := p.layout.of[k]
	return []string{"user:u" + strconv.Itoa(offset+k), "room:" + chatRoomName(two[0]), "room:" + chatRoomName(two[1]), "broadcast"}
}

// rooms are stream k's two rooms, as its ssebridge session names them.
func (p *chatPlan) rooms(k int) []string {
	two := p.layout.of[k]
	return []string{chatRoomName(two[0]), chatRoomName(two[1])}
}

// prepareChat plans a chat run into c and fills in what res says of it:
// events, rate, events by kind.
func prepareChat(c *config, res *Result) error {
	if c.storm {
		return fmt.Errorf("-scenario chat does not take -storm")
	}
	if c.seconds <= 0 || c.workers < 1 {
		return fmt.Errorf("-scenario chat needs -seconds above 0 and -workers 1 or more")
	}
	rng := rand.New(rand.NewPCG(c.seed, 0x636861740a))
	l, err := newChatLayout(c.n, rng)
	if err != nil {
		return err
	}
	p := newChatPlan(l, c.seconds, [chatKinds]float64{c.directRate, c.roomRate, c.broadcastRate}, rng)
	if len(p.events) == 0 {
		return fmt.Errorf("-scenario chat: no events at these rates over -seconds %g", c.seconds)
	}
	c.chat, c.want, c.events, c.rate = &p, p.want, len(p.events), float64(len(p.events))/c.seconds
	res.Events, res.Seconds = len(p.events), c.seconds
	res.Rate = float64(len(p.events)) / c.seconds
	res.Published = map[string]int{}
	for kind, n := range p.published {
		res.Published[chatKind(kind).String()] = n
	}
	return nil
}
