package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ssebridge/ssebridge/store"
)

// Subscriber keeps Redis subscribed to the channels the hub's streams need.
// store.Feed is the real one; the hub's unit tests use a fake.
type Subscriber interface {
	Retain(ctx context.Context, channels ...string) error
	Release(channels ...string)
}

// History reads durable events back. store.History is the real one; the
// hub's unit tests use a fake.
type History interface {
	Position(ctx context.Context) (store.Cursor, error)
	Mark(ctx context.Context, channel string) error
	Since(ctx context.Context, channels []string, after store.Cursor) (store.Replay, error)
}

// Errors Hub.Open returns.
var (
	ErrTooManyStreams = errors.New("too many streams on this instance")
	ErrTooManyForUser = errors.New("too many streams for this user")
	ErrShuttingDown   = errors.New("shutting down")
)

// Options are the hub's limits.
type Options struct {
	MaxStreams        int           // open streams on this instance
	MaxStreamsPerUser int           // open streams of one user
	QueueEvents       int           // events queued per stream before it counts as slow
	QueueBytes        int           // bytes queued per stream before it counts as slow
	MaxEventBytes     int           // largest published payload
	ReplayMaxBytes    int           // most a resuming stream replays; past it, reset
	MarkInterval      time.Duration // how often idle streams' ids are moved on
	Retry             time.Duration // the retry: hint sent to browsers
}

// Hub fans published messages out to streams. A message is encoded once and
// the same bytes are queued on every stream; a stream whose queue is full is
// ended as slow and never holds up the others.
type Hub struct {
	sub     Subscriber
	history History
	opts    Options
	log     *slog.Logger
	metrics *Metrics

	seed   maphash.Seed
	shards [64]shard // channel → streams, split to keep fan-outs on different channels apart

	mu       sync.Mutex // guards the fields below and every Stream.channels
	users    map[string]map[*Stream]struct{}
	sessions map[string]map[*Stream]struct{}
	open     int
	stopping bool

	control chan control
	// Open streams, for Wait: added to in Open, under mu and only while
	// not stopping, so never after Wait has begun; done in Close.
	streams sync.WaitGroup

	// seen is the newest durable id the feed delivered: a gap in the feed
	// is filled from there. Only the feed's goroutine (Publish, Recover)
	// touches it.
	seen store.Cursor
}

type shard struct {
	mu   sync.RWMutex
	subs map[string]map[*Stream]struct{}
}

// NewHub returns a hub that subscribes through sub. Call Run to process
// control messages.
func NewHub(sub Subscriber, history History, opts Options, log *slog.Logger, m *Metrics) *Hub {
	h := &Hub{
		sub:      sub,
		history:  history,
		opts:     opts,
		log:      log,
		metrics:  m,
		seed:     maphash.MakeSeed(),
		users:    make(map[string]map[*Stream]struct{}),
		sessions: make(map[string]map[*Stream]struct{}),
		control:  make(chan control, 1024),
	}
	for i := range h.shards {
		h.shards[i].subs = make(map[string]map[*Stream]struct{})
	}
	return h
}

func (h *Hub) shard(channel string) *shard {
	return &h.shards[maphash.String(h.seed, channel)%uint64(len(h.shards))]
}

// Spec says whose stream to open.
type Spec struct {
	User    string
	Session string // the session token, to end the stream when the session goes
	Rooms   []string
	Resume  string // Last-Event-ID: the id of the last event the browser got, if any
}

// Open registers a stream for spec's user, subscribed to the user's channel,
// the broadcast channel and spec's rooms, with the ready event queued first.
// It fails when a limit is reached, when the hub is shutting down, or when
// Redis cannot subscribe.
func (h *Hub) Open(ctx context.Context, spec Spec) (*Stream, error) {
	s := newStream(spec.User, spec.Session, h.opts.QueueEvents, h.opts.QueueBytes, h.metrics.Delivered)
	s.replaying = true // set before anything can reach the stream
	channels := []string{store.UserChannel(spec.User), store.BroadcastChannel}
	for _, r := range spec.Rooms {
		channels = append(channels, store.RoomChannel(r))
	}

	h.mu.Lock()
	switch {
	case h.stopping:
		h.mu.Unlock()
		return nil, ErrShuttingDown
	case h.open >= h.opts.MaxStreams:
		h.mu.Unlock()
		return nil, ErrTooManyStreams
	case len(h.users[spec.User]) >= h.opts.MaxStreamsPerUser:
		h.mu.Unlock()
		return nil, ErrTooManyForUser
	}
	h.open++
	h.streams.Add(1)
	addTo(h.users, spec.User, s)
	addTo(h.sessions, spec.Session, s)
	for _, c := range channels {
		s.channels[c] = struct{}{}
	}
	// Attached before Redis subscribes, so that nothing published once the
	// subscriptions are in force can miss the stream; until the replay is
	// queued, live events wait in s.held.
	for _, c := range channels {
		h.attachLocked(s, c)
	}
	h.mu.Unlock()
	h.metrics.Open.Inc()

	if err := h.sub.Retain(ctx, channels...); err != nil {
		h.Close(s, "")
		return nil, fmt.Errorf("subscribing: %w", err)
	}
	frames, last, err := h.opening(ctx, spec, channels)
	if err != nil {
		h.Close(s, "")
		return nil, fmt.Errorf("reading history: %w", err)
	}
	if !s.goLive(frames, last) {
		h.endSlow(s)
	}
	return s, nil
}

// opening returns what a stream sends first: retry: and ready, then either
// the durable events it missed since spec.Resume or a reset; and the newest
// durable id among them. Subscriptions are in force already, so nothing
// published from here on is missed, and the stream's last id drops what
// the replay and the live feed both bring.
func (h *Hub) opening(ctx context.Context, spec Spec, channels []string) ([][]byte, store.Cursor, error) {
	if spec.Resume == "" {
		pos, err := h.history.Position(ctx)
		if err != nil {
			return nil, pos, err
		}
		return [][]byte{readyFrame(spec.User, spec.Rooms, h.opts.Retry, pos.String())}, pos, nil
	}
	ready := readyFrame(spec.User, spec.Rooms, h.opts.Retry, "")
	after, err := store.ParseCursor(spec.Resume)
	if err != nil {
		pos, err := h.history.Position(ctx)
		if err != nil {
			return nil, pos, err
		}
		return [][]byte{ready, h.resetFrame(pos, store.ResetMalformed)}, pos, nil
	}
	r, err := h.history.Since(ctx, channels, after)
	if err != nil {
		return nil, after, err
	}
	if r.Reset != "" {
		return [][]byte{ready, h.resetFrame(r.Position, r.Reset)}, r.Position, nil
	}
	frames := [][]byte{ready}
	size, last := 0, after
	for _, ev := range r.Events {
		frame, err := EncodeDurable(ev.Cursor, ev.Envelope, h.opts.MaxEventBytes)
		if err != nil {
			continue // refused when it was published live, refused again
		}
		if size += len(frame); size > h.opts.ReplayMaxBytes {
			return [][]byte{ready, h.resetFrame(r.Position, store.ResetTooLarge)}, r.Position, nil
		}
		frames = append(frames, frame)
		last = ev.Cursor
	}
	h.metrics.Replayed.Add(float64(len(frames) - 1))
	return frames, last, nil
}

// resetFrame tells the page that events were missed beyond recovery, so it
// reloads its state, and moves its id to pos.
func (h *Hub) resetFrame(pos store.Cursor, reason string) []byte {
	h.metrics.Resets.WithLabelValues(reason).Inc()
	return Envelope{Event: "reset", ID: pos.String(), Data: []byte(`{"reason":"` + reason + `"}`)}.Frame()
}

// Close removes a stream that Serve has finished with and counts why it
// ended. Its channels no longer needed by any stream are unsubscribed.
func (h *Hub) Close(s *Stream, reason string) {
	h.mu.Lock()
	if s.closed {
		h.mu.Unlock()
		return
	}
	s.closed = true
	channels := make([]string, 0, len(s.channels))
	for c := range s.channels {
		channels = append(channels, c)
		sh := h.shard(c)
		sh.mu.Lock()
		removeFrom(sh.subs, c, s)
		sh.mu.Unlock()
	}
	clear(s.channels)
	removeFrom(h.users, s.User, s)
	removeFrom(h.sessions, s.session, s)
	h.open--
	h.streams.Done()
	h.mu.Unlock()

	h.sub.Release(channels...)
	h.metrics.Open.Dec()
	if reason != "" {
		h.metrics.Closed.WithLabelValues(reason).Inc()
	}
}

// attachLocked makes s receive channel; h.mu is held.
func (h *Hub) attachLocked(s *Stream, channel string) {
	sh := h.shard(channel)
	sh.mu.Lock()
	addTo(sh.subs, channel, s)
	sh.mu.Unlock()
}

// Publish fans a message from Redis out to the streams of its channel. It
// never blocks on a stream, so it can run on the goroutine reading Redis.
func (h *Hub) Publish(channel string, payload []byte) {
	if channel == store.ControlChannel {
		h.enqueueControl(payload)
		return
	}
	cursor, envelope, durable, err := store.ParseDurable(payload)
	var frame []byte
	if err != nil {
		err = fmt.Errorf("%w: %v", ErrBadEnvelope, err)
	} else {
		if durable {
			frame, err = EncodeDurable(cursor, envelope, h.opts.MaxEventBytes)
		} else {
			frame, err = EncodeMessage(payload, h.opts.MaxEventBytes)
		}
	}
	if durable && err == nil {
		h.seen = cursor
	}
	if err != nil {
		h.drop(channel, err)
		return
	}
	h.fanOut(channel, frame, cursor)
}

// Recover fills a gap in the Redis feed: after the pub/sub connection came
// back, it replays the durable events published meanwhile on every channel
// with streams, from the oldest position among them. Streams skip what they
// have; those that cannot be brought up to date get a reset.
func (h *Hub) Recover(ctx context.Context) {
	h.mu.Lock()
	from := h.seen
	channels := make(map[string]struct{})
	var streams []*Stream
	for _, set := range h.users {
		for s := range set {
			streams = append(streams, s)
			for c := range s.channels {
				channels[c] = struct{}{}
			}
		}
	}
	h.mu.Unlock()
	if from.IsZero() { // nothing durable came through the feed yet
		for _, s := range streams {
			if p := s.position(); !p.IsZero() && (from.IsZero() || p.Before(from)) {
				from = p
			}
		}
	}
	if from.IsZero() {
		return
	}
	names := make([]string, 0, len(channels))
	for c := range channels {
		names = append(names, c)
	}
	r, err := h.history.Since(ctx, names, from)
	if err != nil {
		h.log.Warn("durable events published while Redis was away could not be read", "err", err)
		return
	}
	if r.Reset != "" {
		h.log.Warn("durable events were lost while Redis was away: streams reset", "reason", r.Reset)
		reset := h.resetFrame(r.Position, r.Reset)
		for _, s := range streams {
			s.resetTo(reset, r.Position)
		}
		h.seen = r.Position
		return
	}
	for _, ev := range r.Events {
		frame, err := EncodeDurable(ev.Cursor, ev.Envelope, h.opts.MaxEventBytes)
		if err == nil {
			h.fanOut(ev.Channel, frame, ev.Cursor)
		}
		h.seen = ev.Cursor
	}
	h.metrics.Recovered.Add(float64(len(r.Events)))
	h.log.Info("durable events published while Redis was away were delivered", "events", len(r.Events))
}

func (h *Hub) drop(channel string, err error) {
	reason := err
	for u := errors.Unwrap(reason); u != nil; u = errors.Unwrap(reason) {
		reason = u
	}
	h.metrics.Dropped.WithLabelValues(reason.Error()).Inc()
	h.log.Warn("published message refused", "channel", channel, "err", err)
}

func (h *Hub) fanOut(channel string, frame []byte, cursor store.Cursor) {
	sh := h.shard(channel)
	var slow []*Stream
	sh.mu.RLock()
	for s := range sh.subs[channel] {
		if !s.offer(frame, cursor) {
			slow = append(slow, s)
		}
	}
	sh.mu.RUnlock()
	for _, s := range slow {
		h.endSlow(s)
	}
}

// endSlow ends a stream whose queue is full. The retry hint brings it back
// soon, to resume from its last id; its writer may well be stuck on a full
// socket and only learn of it at its write deadline.
func (h *Hub) endSlow(s *Stream) {
	if s.end(ReasonSlow, retryFrame(h.jitteredRetry()), false) {
		h.log.Info("stream closed: queue full", "user", s.User)
	}
}

// Sessions returns the tokens of the sessions that have open streams.
func (h *Hub) Sessions() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	tokens := make([]string, 0, len(h.sessions))
	for t := range h.sessions {
		tokens = append(tokens, t)
	}
	return tokens
}

// EndSession ends the streams opened with a session that no longer exists,
// with a logout event so that pages stop reconnecting.
func (h *Hub) EndSession(token string) {
	h.mu.Lock()
	streams := collect(h.sessions[token])
	h.mu.Unlock()
	for _, s := range streams {
		s.end(ReasonSession, logoutFrame, true)
	}
}

// Shutdown refuses new streams and ends the open ones with a retry hint,
// jittered so that browsers do not all reconnect in the same instant.
func (h *Hub) Shutdown() {
	h.mu.Lock()
	h.stopping = true
	var all []*Stream
	for _, set := range h.users {
		all = append(all, collect(set)...)
	}
	h.mu.Unlock()
	for _, s := range all {
		s.end(ReasonShutdown, retryFrame(h.jitteredRetry()), true)
	}
}

// Wait waits until every stream opened has been closed, or ctx ends. After
// Shutdown, that is every stream's writer having finished, whichever
// goroutine runs it.
func (h *Hub) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { h.streams.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Len is the number of open streams.
func (h *Hub) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open
}

func (h *Hub) jitteredRetry() int64 {
	ms := h.opts.Retry.Milliseconds()
	return ms/2 + rand.Int64N(ms+1)
}

var logoutFrame = []byte("event: logout\ndata: {}\n\n")

func readyFrame(user string, rooms []string, retry time.Duration, id string) []byte {
	if rooms == nil {
		rooms = []string{}
	}
	data, _ := json.Marshal(struct {
		User  string   `json:"user"`
		Rooms []string `json:"rooms"`
	}{user, rooms})
	frame := retryFrame(retry.Milliseconds())
	frame = frame[:len(frame)-1] // one block: retry: and the ready event together
	return append(frame, Envelope{Event: "ready", ID: id, Data: data}.Frame()...)
}

func addTo(m map[string]map[*Stream]struct{}, key string, s *Stream) {
	set := m[key]
	if set == nil {
		set = make(map[*Stream]struct{})
		m[key] = set
	}
	set[s] = struct{}{}
}

func removeFrom(m map[string]map[*Stream]struct{}, key string, s *Stream) {
	set := m[key]
	delete(set, s)
	if len(set) == 0 {
		delete(m, key)
	}
}

func collect(set map[*Stream]struct{}) []*Stream {
	out := make([]*Stream, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	return out
}
