package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ssebridge/ssebridge/store"
)

// ErrBadControl and ErrBacklog label refused control messages.
var (
	ErrBadControl = errors.New("bad_control")
	ErrBacklog    = errors.New("control_backlog")
)

// control is a message on the control channel: the backend changing what a
// user's open streams receive.
type control struct {
	Op   string `json:"op"`
	User string `json:"user"`
	Room string `json:"room"`
}

func parseControl(payload []byte) (control, error) {
	var c control
	if err := json.Unmarshal(payload, &c); err != nil {
		return c, fmt.Errorf("%w: not a JSON object: %v", ErrBadControl, err)
	}
	if err := store.CheckName(c.User); err != nil {
		return c, fmt.Errorf("%w: user: %v", ErrBadControl, err)
	}
	switch c.Op {
	case "join", "leave":
		if err := store.CheckName(c.Room); err != nil {
			return c, fmt.Errorf("%w: room: %v", ErrBadControl, err)
		}
	case "logout":
	default:
		return c, fmt.Errorf("%w: unknown op %q (want join, leave or logout)", ErrBadControl, c.Op)
	}
	return c, nil
}

// enqueueControl hands a control message to Run. Joining a room waits for
// Redis to confirm the subscription, which the goroutine that reads Redis
// cannot wait for itself.
func (h *Hub) enqueueControl(payload []byte) {
	c, err := parseControl(payload)
	if err != nil {
		h.drop(store.ControlChannel, err)
		return
	}
	select {
	case h.control <- c:
	default:
		h.drop(store.ControlChannel, fmt.Errorf("%w: %d control messages waiting", ErrBacklog, cap(h.control)))
	}
}

// Run subscribes to the control channel and applies control messages until
// ctx ends. Every MarkInterval it also moves idle streams' ids on, through
// Redis, so that they arrive behind every event published before them.
func (h *Hub) Run(ctx context.Context) {
	if err := h.sub.Retain(ctx, store.ControlChannel); err != nil && ctx.Err() == nil {
		h.log.Warn("control channel not subscribed yet; it will be once Redis is back", "err", err)
	}
	defer h.sub.Release(store.ControlChannel)
	mark := time.NewTicker(h.opts.MarkInterval)
	defer mark.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-h.control:
			h.apply(ctx, c)
		case <-mark.C:
			if h.Len() == 0 {
				continue
			}
			if err := h.history.Mark(ctx, store.BroadcastChannel); err != nil {
				h.log.Warn("moving stream ids on", "err", err)
			}
		}
	}
}

func (h *Hub) apply(ctx context.Context, c control) {
	switch c.Op {
	case "logout":
		h.mu.Lock()
		streams := collect(h.users[c.User])
		h.mu.Unlock()
		for _, s := range streams {
			s.end(ReasonLogout, logoutFrame, true)
		}
	case "join":
		h.join(ctx, c.User, store.RoomChannel(c.Room))
	case "leave":
		h.leave(c.User, store.RoomChannel(c.Room))
	}
}

func (h *Hub) join(ctx context.Context, user, channel string) {
	// Attached before Redis subscribes, so that nothing published once the
	// subscription is in force can miss the stream.
	h.mu.Lock()
	joined := 0
	for s := range h.users[user] {
		if _, ok := s.channels[channel]; !ok {
			s.channels[channel] = struct{}{}
			h.attachLocked(s, channel)
			joined++
		}
	}
	h.mu.Unlock()
	if joined == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// One reference per stream, as Close releases one per stream.
	if err := h.sub.Retain(ctx, slices.Repeat([]string{channel}, joined)...); err != nil {
		h.log.Warn("join: subscription not confirmed; it will be once Redis is back", "channel", channel, "err", err)
	}
}

func (h *Hub) leave(user, channel string) {
	h.mu.Lock()
	var left int
	for s := range h.users[user] {
		if _, ok := s.channels[channel]; ok {
			delete(s.channels, channel)
			sh := h.shard(channel)
			sh.mu.Lock()
			removeFrom(sh.subs, channel, s)
			sh.mu.Unlock()
			left++
		}
	}
	h.mu.Unlock()
	if left > 0 {
		h.sub.Release(slices.Repeat([]string{channel}, left)...)
	}
}
