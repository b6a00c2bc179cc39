package store

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
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
	subConn // its mu also guards channels

	rdb       *redis.Client
	prefix    string
	pingEvery time.Duration
	log       *slog.Logger
	metrics   *FeedMetrics
	channels  map[string]struct{} // logical names this instance must be subscribed to
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
		channels:  make(map[string]struct{}),
	}
	f.init(rdb.Subscribe(context.Background()))
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
	err := f.ps.Subscribe(context.Background(), full...)
	if err != nil {
		// A write that failed has go-redis dial and resubscribe inside
		// the call, from its set as it was before these channels: once
		// more puts them on the new connection (or, if Redis is still
		// away, in the set the next one resubscribes).
		err = f.ps.Subscribe(context.Background(), full...)
	}
	return err
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
	done, err := f.ping(ctx)
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
	f.receive(ctx, receiveHooks{
		log:     f.log,
		metrics: f.metrics,
		every:   f.pingEvery,
		redial:  f.redial,
		lost:    func(context.Context, error) bool { return false },
		up: func(ctx context.Context) {
			f.log.Info("redis pub/sub connected", "channels", f.channelCount())
			connected(ctx)
		},
		message: func(channel string, m wire.Message, err error) {
			deliver(strings.TrimPrefix(channel, f.prefix), m, err)
		},
		readMarker: func(ctx context.Context) (string, error) {
			return f.rdb.HGet(ctx, f.prefix+"config", "marker").Result()
		},
	})
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
