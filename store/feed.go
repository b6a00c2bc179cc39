package store

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/wire"
)

// ErrFeedLost means the pub/sub connection was lost before Redis confirmed
// the subscriptions that Sync waited for.
var ErrFeedLost = errors.New("redis pub/sub connection lost")

// Feed is the process's single Redis pub/sub connection. Streams share it,
// so an instance holds the same few Redis connections whether it serves ten
// streams or a hundred thousand. It subscribes and unsubscribes when told
// (the hub decides, and serialises the calls per channel), confirms with
// Sync, and after a lost connection resubscribes everything.
type Feed struct {
	rdb       *redis.Client
	prefix    string
	pingEvery time.Duration
	log       *slog.Logger
	metrics   *FeedMetrics

	mu       sync.Mutex // guards ps and channels; commands are written under it, in call order
	ps       *redis.PubSub
	channels map[string]struct{} // logical names this instance must be subscribed to

	marker     atomic.Pointer[string] // the deployment's durable-framing marker
	markerRead time.Time              // when Run last read it from Redis; Run's own
	barrier    barrier
	connected  atomic.Bool
}

// FeedMetrics counts what the feed sees.
type FeedMetrics struct {
	Reconnects prometheus.Counter
	Messages   prometheus.Counter
	Channels   prometheus.Gauge
}

// NewFeedMetrics registers the feed's metrics.
func NewFeedMetrics(reg prometheus.Registerer) *FeedMetrics {
	m := &FeedMetrics{
		Reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_redis_reconnects_total",
			Help: "Times the pub/sub connection to Redis was lost and had to be made again.",
		}),
		Messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_redis_messages_total",
			Help: "Messages received from Redis pub/sub.",
		}),
		Channels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ssebridge_redis_channels",
			Help: "Redis channels this instance is subscribed to.",
		}),
	}
	reg.MustRegister(m.Reconnects, m.Messages, m.Channels)
	return m
}

// NewFeed returns a feed for channels named prefix+name. It pings Redis when
// the connection has been quiet for pingEvery, and takes a connection whose
// ping goes unanswered for another pingEvery as dead.
func NewFeed(rdb *redis.Client, prefix string, pingEvery time.Duration, log *slog.Logger, m *FeedMetrics) *Feed {
	f := &Feed{
		rdb:       rdb,
		prefix:    prefix,
		pingEvery: pingEvery,
		log:       log,
		metrics:   m,
		ps:        rdb.Subscribe(context.Background()),
		channels:  make(map[string]struct{}),
	}
	f.marker.Store(new(string))
	return f
}

// Connected reports whether the pub/sub connection is up and subscribed.
func (f *Feed) Connected() bool { return f.connected.Load() }

// SetMarker sets the marker that durable messages carry (History.Configure
// returns it). Until it is set, no message counts as durable.
func (f *Feed) SetMarker(m string) { f.marker.Store(&m) }

// Subscribe subscribes to channels. It only writes the command: Sync
// confirms it. If Redis cannot be reached the channels stay in the set and
// are subscribed when the connection is made again.
func (f *Feed) Subscribe(names ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	full := make([]string, len(names))
	for i, n := range names {
		f.channels[n] = struct{}{}
		full[i] = f.prefix + n
	}
	f.metrics.Channels.Set(float64(len(f.channels)))
	return f.ps.Subscribe(context.Background(), full...)
}

// Unsubscribe unsubscribes from channels.
func (f *Feed) Unsubscribe(names ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	full := make([]string, len(names))
	for i, n := range names {
		delete(f.channels, n)
		full[i] = f.prefix + n
	}
	f.metrics.Channels.Set(float64(len(f.channels)))
	// go-redis forgets the channels even if the command cannot be sent, so a
	// reconnection will not bring them back.
	_ = f.ps.Unsubscribe(context.Background(), full...)
}

// Sync returns once Redis has confirmed every Subscribe written before it:
// from then on, whatever is published on those channels reaches Run. Redis
// answers in order on the connection, so the reply to a PING written after
// them is the proof.
func (f *Feed) Sync(ctx context.Context) error {
	f.mu.Lock()
	done, err := f.barrier.send(ctx, f.ps)
	f.mu.Unlock()
	if err != nil {
		return err
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run reads the pub/sub connection until ctx ends, handing each message to
// deliver with its logical channel name, its framing read; err is set (and
// m zero) for a message that cannot be read, for the caller to count.
// deliver must not block: it runs on the one goroutine that reads for
// every stream of the process.
//
// connected runs on the same goroutine each time the connection is up and
// subscribed, the first time and after every loss, before any message that
// follows: what was published while it was down can be fetched there and
// delivered ahead of what comes next.
func (f *Feed) Run(ctx context.Context, deliver func(channel string, m wire.Message, err error), connected func(context.Context)) {
	// A read waits up to pingEvery whatever ctx says: closing the
	// connection when ctx ends stops it at once.
	stop := context.AfterFunc(ctx, func() {
		f.mu.Lock()
		_ = f.ps.Close()
		f.mu.Unlock()
	})
	defer func() {
		stop()
		f.mu.Lock()
		_ = f.ps.Close()
		f.mu.Unlock()
		f.barrier.releaseAll(ErrFeedLost)
	}()
	backoff := newBackoff(100*time.Millisecond, 2*time.Second)
	pingSent := false
	for ctx.Err() == nil {
		f.mu.Lock()
		ps := f.ps
		f.mu.Unlock()

		msg, err := ps.ReceiveTimeout(ctx, f.pingEvery)
		if ctx.Err() != nil {
			return
		}
		if isTimeout(err) {
			if !pingSent {
				_ = ps.Ping(ctx, "health")
				pingSent = true
				continue
			}
			// The ping went unanswered: Redis is hung or the path to it is
			// gone without a reset. Start over on a new connection.
			f.log.Warn("redis pub/sub: no answer to ping, reconnecting")
			f.redial(ctx)
			err = errors.New("ping timeout")
		}
		pingSent = false
		if err != nil {
			if f.connected.Swap(false) {
				f.metrics.Reconnects.Inc()
				f.log.Warn("redis pub/sub connection lost; streams stay open, reconnecting", "err", err)
			}
			// Waiters would otherwise hang for a reply that will never
			// come; they learn that their subscriptions are not confirmed.
			f.barrier.releaseAll(ErrFeedLost)
			if !sleep(ctx, backoff.next()) {
				return
			}
			continue
		}
		backoff.reset()
		if !f.connected.Swap(true) {
			f.log.Info("redis pub/sub connected", "channels", f.channelCount())
			connected(ctx)
		}
		switch m := msg.(type) {
		case *redis.Message:
			f.metrics.Messages.Inc()
			w, err := wire.ParseMessage([]byte(m.Payload), *f.marker.Load())
			if errors.Is(err, wire.ErrForged) && f.refreshMarker(ctx) {
				// The marker changed under this instance (config lost and
				// written again by another): read with the new one.
				w, err = wire.ParseMessage([]byte(m.Payload), *f.marker.Load())
			}
			deliver(strings.TrimPrefix(m.Channel, f.prefix), w, err)
		case *redis.Pong:
			if seq, err := strconv.ParseUint(m.Payload, 10, 64); err == nil {
				f.barrier.release(seq, nil)
			}
		}
	}
}

// refreshMarker reads the deployment's marker again, at most once a second
// (a flood of forged messages must not become a flood of reads), and
// reports whether it changed.
func (f *Feed) refreshMarker(ctx context.Context) bool {
	if time.Since(f.markerRead) < time.Second {
		return false
	}
	f.markerRead = time.Now()
	m, err := f.rdb.HGet(ctx, f.prefix+"config", "marker").Result()
	if err != nil || m == "" || m == *f.marker.Load() {
		return false
	}
	f.log.Warn("the durable marker changed in Redis: reading with the new one")
	f.SetMarker(m)
	return true
}

// redial replaces the pub/sub connection with a new one subscribed to every
// channel in the set.
func (f *Feed) redial(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.ps.Close()
	f.ps = f.rdb.Subscribe(ctx)
	if len(f.channels) == 0 {
		return
	}
	channels := make([]string, 0, len(f.channels))
	for n := range f.channels {
		channels = append(channels, f.prefix+n)
	}
	_ = f.ps.Subscribe(ctx, channels...)
}

func (f *Feed) channelCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.channels)
}

// barrier matches PING replies to the callers waiting for them.
type barrier struct {
	mu      sync.Mutex
	seq     uint64
	waiters map[uint64]chan error
}

// send writes a PING carrying a new sequence number and returns a channel
// that gets nil when its reply (or any later one) arrives, or an error when
// the connection is lost first.
func (b *barrier) send(ctx context.Context, ps *redis.PubSub) (<-chan error, error) {
	b.mu.Lock()
	b.seq++
	seq := b.seq
	done := make(chan error, 1)
	if b.waiters == nil {
		b.waiters = make(map[uint64]chan error)
	}
	b.waiters[seq] = done
	b.mu.Unlock()
	if err := ps.Ping(ctx, strconv.FormatUint(seq, 10)); err != nil {
		b.mu.Lock()
		delete(b.waiters, seq)
		b.mu.Unlock()
		return nil, err
	}
	return done, nil
}

func (b *barrier) release(upTo uint64, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for seq, ch := range b.waiters {
		if seq <= upTo {
			ch <- err
			delete(b.waiters, seq)
		}
	}
}

func (b *barrier) releaseAll(err error) { b.release(^uint64(0), err) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// sleep waits for d or until ctx ends, and reports whether it waited in full.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
