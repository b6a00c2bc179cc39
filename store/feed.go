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
)

// Feed is the process's single Redis pub/sub connection. Streams share it:
// it subscribes to a channel when the first stream needs it, unsubscribes
// when the last one leaves, and after a lost connection resubscribes
// everything. So an instance holds the same few Redis connections whether
// it serves ten streams or a hundred thousand.
type Feed struct {
	rdb       *redis.Client
	prefix    string
	pingEvery time.Duration
	log       *slog.Logger
	metrics   *FeedMetrics

	mu   sync.Mutex // guards ps and refs, and orders SUBSCRIBE/UNSUBSCRIBE as refs change
	ps   *redis.PubSub
	refs map[string]int // logical channel name → streams that need it

	barrier   barrier
	connected atomic.Bool
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
	return &Feed{
		rdb:       rdb,
		prefix:    prefix,
		pingEvery: pingEvery,
		log:       log,
		metrics:   m,
		ps:        rdb.Subscribe(context.Background()),
		refs:      make(map[string]int),
	}
}

// Connected reports whether the pub/sub connection is up and subscribed.
func (f *Feed) Connected() bool { return f.connected.Load() }

// Retain adds one reference to each channel and subscribes to those that had
// none. It returns once Redis has confirmed the new subscriptions, so that an
// event published after Retain returns is delivered. If Redis cannot be
// reached the channels stay retained and are subscribed on reconnection.
func (f *Feed) Retain(ctx context.Context, names ...string) error {
	f.mu.Lock()
	var fresh []string
	for _, n := range names {
		f.refs[n]++
		if f.refs[n] == 1 {
			fresh = append(fresh, f.prefix+n)
		}
	}
	if len(fresh) == 0 {
		f.mu.Unlock()
		return nil
	}
	f.metrics.Channels.Set(float64(len(f.refs)))
	err := f.ps.Subscribe(ctx, fresh...)
	var done <-chan struct{}
	if err == nil {
		// Redis answers in order: the reply to a PING sent after SUBSCRIBE
		// proves the subscription is in force.
		done, err = f.barrier.send(ctx, f.ps)
	}
	f.mu.Unlock()
	if err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Release drops one reference to each channel and unsubscribes from those
// left with none.
func (f *Feed) Release(names ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var gone []string
	for _, n := range names {
		f.refs[n]--
		if f.refs[n] <= 0 {
			delete(f.refs, n)
			gone = append(gone, f.prefix+n)
		}
	}
	if len(gone) == 0 {
		return
	}
	f.metrics.Channels.Set(float64(len(f.refs)))
	// go-redis forgets the channels even if the command cannot be sent, so a
	// reconnection will not bring them back.
	_ = f.ps.Unsubscribe(context.Background(), gone...)
}

// Run reads the pub/sub connection until ctx ends, handing each message to
// deliver with its logical channel name. deliver must not block: it runs on
// the one goroutine that reads for every stream of the process.
//
// connected runs on the same goroutine each time the connection is up and
// subscribed, the first time and after every loss, before any message that
// follows: what was published while it was down can be fetched there and
// delivered ahead of what comes next.
func (f *Feed) Run(ctx context.Context, deliver func(channel string, payload []byte), connected func(context.Context)) {
	defer func() {
		f.mu.Lock()
		_ = f.ps.Close()
		f.mu.Unlock()
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
			// Waiters would otherwise hang for a reply that will never come;
			// their channels are resubscribed with the new connection.
			f.barrier.releaseAll()
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
			deliver(strings.TrimPrefix(m.Channel, f.prefix), []byte(m.Payload))
		case *redis.Pong:
			if seq, err := strconv.ParseUint(m.Payload, 10, 64); err == nil {
				f.barrier.release(seq)
			}
		}
	}
}

// redial replaces the pub/sub connection with a new one subscribed to every
// retained channel.
func (f *Feed) redial(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.ps.Close()
	f.ps = f.rdb.Subscribe(ctx)
	if len(f.refs) == 0 {
		return
	}
	channels := make([]string, 0, len(f.refs))
	for n := range f.refs {
		channels = append(channels, f.prefix+n)
	}
	_ = f.ps.Subscribe(ctx, channels...)
}

func (f *Feed) channelCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.refs)
}

// barrier matches PING replies to the callers waiting for them.
type barrier struct {
	mu      sync.Mutex
	seq     uint64
	waiters map[uint64]chan struct{}
}

// send writes a PING carrying a new sequence number and returns a channel
// closed when its reply (or any later one) arrives.
func (b *barrier) send(ctx context.Context, ps *redis.PubSub) (<-chan struct{}, error) {
	b.mu.Lock()
	b.seq++
	seq := b.seq
	done := make(chan struct{})
	if b.waiters == nil {
		b.waiters = make(map[uint64]chan struct{})
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

func (b *barrier) release(upTo uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for seq, ch := range b.waiters {
		if seq <= upTo {
			close(ch)
			delete(b.waiters, seq)
		}
	}
}

func (b *barrier) releaseAll() { b.release(^uint64(0)) }

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
