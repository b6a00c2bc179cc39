package stream

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ssebridge/ssebridge/internal/group"
	"github.com/ssebridge/ssebridge/internal/ratelog"
	"github.com/ssebridge/ssebridge/wire"
)

// Subscriber keeps Redis subscribed to the channels the hub's streams need.
// store.Feed is the real one; the hub's unit tests use a fake.
type Subscriber interface {
	// Subscribe and Unsubscribe write the command; the hub calls them
	// serialised per channel, in the order membership changed.
	Subscribe(channels ...string) error
	Unsubscribe(channels ...string)
	// Sync returns once every Subscribe written before it is in force.
	Sync(ctx context.Context) error
}

// History reads durable events back. store.History is the real one; the
// hub's unit tests use a fake.
type History interface {
	Position(ctx context.Context) (wire.Cursor, error)
	PublishBareID(ctx context.Context, channel string) error
	Read(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, maxBytes int) (wire.Page, error)
	// Size counts, without reading them out, the events Read would return
	// from after up to until, each as its envelope's length plus overhead,
	// stopping once the count passes limit.
	Size(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, overhead, limit int) (int, error)
}

// Errors Hub.Open returns.
var (
	ErrTooManyStreams = errors.New("too many streams on this instance")
	ErrTooManyForUser = errors.New("too many streams for this user")
	ErrShuttingDown   = errors.New("shutting down")
	// ErrNotSubscribed wraps the feed's error when Redis did not confirm the
	// stream's subscriptions.
	ErrNotSubscribed = errors.New("subscriptions not confirmed by redis")
)

// Options are the hub's limits.
type Options struct {
	MaxStreams          int           // open streams on this instance
	MaxStreamsPerUser   int           // open streams of one user
	MaxRooms            int           // rooms of one stream
	QueueEvents         int           // events queued per stream before it counts as slow
	QueueBytes          int           // bytes queued per stream before it counts as slow
	MaxEventBytes       int           // largest published payload
	ReplayMaxBytes      int           // most one catch-up replays; past it, reset
	ReplayInflightBytes int           // most replayed bytes read and not yet written, all streams together
	MaxResumesPerUser   int           // opens with a Last-Event-ID per user per minute; 0: no limit
	MarkInterval        time.Duration // how often idle streams' ids are moved on
	Retry               time.Duration // the retry: hint sent to browsers
	// RedisTimeout bounds each wait on Redis made for a stream (its
	// subscriptions confirmed, a read of history, a position): past it the
	// stream is refused, or ended with a retry hint. 0: 10 s.
	RedisTimeout time.Duration
	// FeedLag says how far the feed is behind Redis now
	// (ssebridge_pubsub_lag_seconds); nil: never. A stream whose queue
	// overflows while the feed is LateLag or more behind is ended as
	// late, not slow: the burst was the feed's, not the client's.
	FeedLag func() time.Duration
	LateLag time.Duration // 0: a second
	// ParseCursor reads a Last-Event-ID: wire.ParseCursor when nil; in
	// cluster mode, the vector ids of store.Cluster.
	ParseCursor func(string) (wire.Cursor, error)
	// AfterGrant moves a replay's position on a room's channel on to the
	// position the room was granted at (wire.Session.Granted, or a join's
	// since), so that no stream gets a room's events from before its
	// grant: wire.AfterGrant when nil; in cluster mode, store.Cluster's.
	AfterGrant func(after wire.Cursor, channel, grant string) wire.Cursor
	// Loops is how many event loops write live HTTP/1.1 streams (Linux,
	// plain TCP): 0 is one per core (GOMAXPROCS), negative is none (a
	// goroutine per stream).
	Loops int
	// Presence counts the streams of each user per room, over every
	// instance (PRESENCE); nil: not counted.
	Presence *Presence
	// Openings bounds the streams opened at once (OPEN_CONCURRENCY); nil:
	// no bound.
	Openings *Openings
	// UnsubscribeDelay is how long a channel left without streams stays
	// subscribed (UNSUBSCRIBE_DELAY; membership.go); 0: unsubscribed at
	// once. The sweep runs in Run.
	UnsubscribeDelay time.Duration
}

// positionRead is a shared read of the history's position (Hub.positions).
type positionRead struct {
	pos wire.Cursor
	err error
}

// defaultRedisTimeout is Options.RedisTimeout when it is not set.
const defaultRedisTimeout = 10 * time.Second

// bounded returns ctx with the deadline of one wait on Redis
// (Options.RedisTimeout): a stream is better refused, or sent back with a
// retry hint, than left waiting on a link that does not answer.
func (h *Hub) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, h.opts.RedisTimeout)
}

// replayPageBytes is the size of one history read: small enough that many
// streams can catch up at once, large enough to take few round trips.
const replayPageBytes = 256 << 10

// Hub fans published messages out to streams. A message is encoded once and
// the same bytes are queued on every stream; a stream whose queue is full is
// ended as slow and never holds up the others. See doc.go for who owns what.
type Hub struct {
	backend Backend
	opts    Options
	log     *slog.Logger
	metrics *Metrics
	// limited keeps the lines a publisher or a client can repeat at will
	// (a refused message, a slow stream) to one a minute per kind.
	limited ratelog.Logger

	members membership

	mu       sync.Mutex           // guards the fields below and every Stream.attaching/removed
	users    map[string][]*Stream // see addTo
	sessions map[string][]*Stream
	// pending holds control messages for streams Open is still attaching:
	// here, not in the stream, since few streams ever have one.
	pending  map[*Stream][]control
	open     int
	stopping bool
	controls controlLog
	resumes  *resumeLimit
	// rechecks counts session rechecks begun; a stream is stamped with it
	// when it registers (Stream.authorized). Wraps, compared as serial
	// numbers: a stream would have to outlive 2³¹ rechecks.
	rechecks uint32

	// Open streams, for Wait: added to in Open, under mu and only while
	// not stopping, so never after Wait has begun; done in Close.
	streams sync.WaitGroup

	// seen is the newest durable id the feed delivered, a gap recovery's
	// included: a gap in the feed is filled from there.
	seen atomic.Pointer[wire.Cursor]
	// inOrder is the newest durable id the feed delivered in publish order
	// (a recovery's are not: it reads up to a bound taken after control
	// messages still on their way were published). Every control message
	// the feed delivers after it was published after it: a joined channel
	// is replayed from there. Zero when unknown (then from the stream's
	// own id).
	inOrder atomic.Pointer[wire.Cursor]

	// positions shares reads of the history's position among the streams
	// opening at the same time (begin): each still gets a read begun after
	// it asked, and a mass reconnect costs the pool a few reads, not one
	// round trip per stream.
	positions   group.Commit[struct{}, positionRead]
	replaySlots chan struct{} // one per page of replay in flight
	recheckNow  chan struct{}
	loops       *loops // nil: a goroutine per stream
	cut         context.Context
	cutAll      context.CancelFunc
}

// NewHub returns a hub that subscribes and reads history through b (a
// Broker). Call Run to keep idle streams' ids fresh.
func NewHub(b Backend, opts Options, log *slog.Logger, m *Metrics) *Hub {
	h := &Hub{
		backend:     b,
		opts:        opts,
		log:         log,
		metrics:     m,
		limited:     ratelog.Logger{Log: log, Limit: ratelog.New(time.Minute, nil)},
		users:       make(map[string][]*Stream),
		sessions:    make(map[string][]*Stream),
		pending:     make(map[*Stream][]control),
		resumes:     newResumeLimit(opts.MaxResumesPerUser, max(opts.MaxStreams, 1)),
		replaySlots: make(chan struct{}, max(1, opts.ReplayInflightBytes/replayPageBytes)),
		recheckNow:  make(chan struct{}, 1),
	}
	h.members.init()
	if h.opts.ParseCursor == nil {
		h.opts.ParseCursor = wire.ParseCursor
	}
	if h.opts.AfterGrant == nil {
		h.opts.AfterGrant = wire.AfterGrant
	}
	if h.opts.RedisTimeout <= 0 {
		h.opts.RedisTimeout = defaultRedisTimeout
	}
	if h.opts.LateLag <= 0 {
		h.opts.LateLag = time.Second // what the lag probe measures to
	}
	h.positions.Run = func(ctx context.Context, reqs []struct{}) []positionRead {
		pos, err := currentPosition(ctx, b)
		out := make([]positionRead, len(reqs))
		for i := range out {
			out[i] = positionRead{pos, err}
		}
		return out
	}
	h.loops = newLoops(h, opts.Loops)
	h.seen.Store(&wire.Cursor{})
	h.inOrder.Store(&wire.Cursor{})
	h.cut, h.cutAll = context.WithCancel(context.Background())
	return h
}

// Close removes a stream that its writer has finished with and counts why
// it ended. Channels that no stream needs any more are unsubscribed.
func (h *Hub) Close(s *Stream, reason string) {
	s.takeSlot().free(slotClaimed) // closed before its opening
	if h.remove(s, reason) {
		h.detachRemoved(s)
	}
}

// remove takes s out of the hub's indexes and counts why it ended; it
// reports false if s was closed already. Nothing in it waits on Redis.
func (h *Hub) remove(s *Stream, reason string) bool {
	h.mu.Lock()
	if s.removed {
		h.mu.Unlock()
		return false
	}
	s.removed = true
	removeFrom(h.users, s.User, s)
	removeFrom(h.sessions, s.session, s)
	h.open--
	h.mu.Unlock()
	h.metrics.Open.Dec()
	if reason != "" {
		h.metrics.Closed.WithLabelValues(reason).Inc()
	}
	return true
}

// detachRemoved detaches a forgotten stream from its channels (an unsubscribe
// may wait on Redis) and lets Wait know it is gone.
func (h *Hub) detachRemoved(s *Stream) {
	h.detachAll(s)
	h.streams.Done()
}

// Publish takes a message from the feed and fans it out to the streams of
// its channel, or applies it if it is a control message. err is the feed's
// when the message could not be read. Publish never blocks on a stream, so
// it can run on the goroutine reading Redis.
func (h *Hub) Publish(channel string, m wire.Message, err error) {
	if err == nil && channel == wire.ControlChannel {
		var c wire.Control
		if c, err = wire.ParseControl(m.Body); err == nil {
			h.control(c)
			return
		}
	}
	var frame []byte
	if err == nil {
		if m.Durable() {
			frame, err = wire.EncodeDurable(m.Cursor, m.Body, h.opts.MaxEventBytes)
			h.noteDelivered(m.Cursor)
			advance(&h.inOrder, m.Cursor)
		} else {
			frame, err = wire.EncodeMessage(m.Body, h.opts.MaxEventBytes)
		}
	}
	if err != nil {
		h.drop(channel, err)
		return
	}
	h.fanOut(channel, frame, m.Cursor)
}

// noteDelivered records the newest durable id delivered through the feed.
func (h *Hub) noteDelivered(c wire.Cursor) { advance(&h.seen, c) }

// advance moves p on to c if c is later. One goroutine moves each (the
// feed's), so a load then a store is enough.
func advance(p *atomic.Pointer[wire.Cursor], c wire.Cursor) {
	if p.Load().Before(c) {
		p.Store(&c)
	}
}

func (h *Hub) drop(channel string, err error) {
	reason := dropReason(err)
	h.metrics.Dropped.WithLabelValues(reason).Inc()
	h.limited.Write(slog.LevelWarn, "dropped:"+reason, "published message refused", "channel", channel, "err", err)
}

// dropSentinels are the errors a refused message is counted by.
func dropSentinels() []error {
	return []error{wire.ErrTooLarge, wire.ErrBadField, wire.ErrBadEnvelope, wire.ErrForged, wire.ErrBadControl, wire.ErrBadCursor, errTooManyRooms}
}

// dropReason is the metric label of a refused message: the sentinel error
// it wraps, never free text.
func dropReason(err error) string {
	for _, sentinel := range dropSentinels() {
		if errors.Is(err, sentinel) {
			return sentinel.Error()
		}
	}
	return "other"
}

// endSlow ends a stream whose queue is full (of a live event: durable ones
// fall back to history). The retry hint brings it back soon, to resume
// from its last id; its writer may well be stuck on a full socket and only
// learn of it at its write deadline. While the feed is late, the burst is
// the feed's: the stream is ended as late, not as a slow client.
func (h *Hub) endSlow(s *Stream) {
	if h.opts.FeedLag != nil {
		if lag := h.opts.FeedLag(); lag >= h.opts.LateLag {
			if s.end(ReasonLate, wire.RetryFrame(h.jitteredRetry())) {
				h.limited.Write(slog.LevelInfo, "late", "stream closed: queue full of a burst while the feed was late", "user", s.User, "lag", lag.Round(time.Millisecond))
			}
			return
		}
	}
	if s.end(ReasonSlow, wire.RetryFrame(h.jitteredRetry())) {
		h.limited.Write(slog.LevelInfo, "slow", "stream closed: queue full", "user", s.User)
	}
}

// endRetry ends a stream for a passing reason, with a retry hint: the
// browser comes back and resumes from its own id.
func (h *Hub) endRetry(s *Stream, reason string) {
	s.end(reason, wire.RetryFrame(h.jitteredRetry()))
}

// Shutdown refuses new streams and ends the open ones with a retry hint,
// jittered so that browsers do not all reconnect in the same instant.
func (h *Hub) Shutdown() {
	h.mu.Lock()
	h.stopping = true
	h.mu.Unlock()
	for _, s := range h.all() {
		s.finish(ReasonShutdown, wire.RetryFrame(h.jitteredRetry()))
	}
}

// Wait waits until every stream opened has been closed, or ctx ends; then
// it cuts the connections of the streams still open, so that no writer
// blocked on a full socket outlives the deadline.
func (h *Hub) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { h.streams.Wait(); h.loops.wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		h.cutAll()
		return ctx.Err()
	}
}

// Len is the number of open streams.
func (h *Hub) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open
}

func (h *Hub) all() []*Stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*Stream
	for _, set := range h.users {
		out = append(out, set...)
	}
	return out
}

func (h *Hub) jitteredRetry() int64 {
	ms := h.opts.Retry.Milliseconds()
	return ms/2 + rand.Int64N(ms+1)
}

// resetFrame tells the page that events were missed beyond recovery, so it
// reloads its state, and moves its id to pos.
func (h *Hub) resetFrame(pos wire.Cursor, reason string) []byte {
	h.metrics.Resets.WithLabelValues(reason).Inc()
	return wire.Envelope{Event: "reset", ID: pos.String(), Data: []byte(`{"reason":"` + reason + `"}`)}.Frame()
}

var logoutFrame = []byte("event: logout\ndata: {}\n\n")

// readyFrame is the first event of a stream: whose it is (the user, and
// the session's id, wire.SessionID, which ssebridge.js groups tabs by) and
// its rooms.
func readyFrame(user, session string, rooms []string, retry time.Duration, id string) []byte {
	if rooms == nil {
		rooms = []string{}
	}
	data, _ := json.Marshal(struct {
		User    string   `json:"user"`
		Rooms   []string `json:"rooms"`
		Session string   `json:"session"`
	}{user, rooms, session})
	frame := wire.RetryFrame(retry.Milliseconds())
	frame = frame[:len(frame)-1] // one block: retry: and the ready event together
	return append(frame, wire.Envelope{Event: "ready", ID: id, Data: data}.Frame()...)
}

// addTo and removeFrom keep the users and sessions indexes. A user or a
// session has few streams (MAX_STREAMS_PER_USER at most), most often one:
// a slice of them costs 8 bytes a stream, where a set of its own per key
// cost a map (128 bytes or more) per key.
func addTo(m map[string][]*Stream, key string, s *Stream) {
	m[key] = append(m[key], s)
}

func removeFrom(m map[string][]*Stream, key string, s *Stream) {
	set := m[key]
	i := slices.Index(set, s)
	if i < 0 {
		return
	}
	last := len(set) - 1
	set[i] = set[last]
	set[last] = nil // no hold on a closed stream
	if last == 0 {
		delete(m, key)
		return
	}
	m[key] = set[:last]
}

// grantsOf keys a session's grant positions by room channel, for the rooms
// a stream has; nil when none has one.
func grantsOf(rooms []string, granted map[string]string) map[string]string {
	var out map[string]string
	for _, r := range rooms {
		if g, ok := granted[r]; ok && g != "" {
			if out == nil {
				out = make(map[string]string)
			}
			out[wire.RoomChannel(r)] = g
		}
	}
	return out
}
