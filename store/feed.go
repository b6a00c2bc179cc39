package store

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/group"
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

	rdb      *redis.Client
	prefix   string
	lagLimit time.Duration
	log      *slog.Logger
	metrics  *FeedMetrics
	channels map[string]struct{} // logical names this instance must be subscribed to

	// syncs shares one barrier PING among the Syncs made while one is
	// under way (a mass reconnect's openings make three each).
	syncs *group.Commit[struct{}, error]
}

// FeedMetrics counts what the feed sees.
type FeedMetrics struct {
	Reconnects prometheus.Counter
	Messages   prometheus.Counter
	Channels   prometheus.Gauge
	// Lag is the feed's Lag (a Cluster's: its partitions' greatest), read
	// when scraped, so that it rises during a stall.
	Lag prometheus.GaugeFunc
	lag atomic.Pointer[func() time.Duration]
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
	m.Lag = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ssebridge_pubsub_lag_seconds",
		Help: "How far the pub/sub feed is behind Redis: the round trip of a PING through it, or the age of the oldest unanswered one (in cluster mode, the greatest of the partitions').",
	}, func() float64 {
		if lag := m.lag.Load(); lag != nil {
			return (*lag)().Seconds()
		}
		return 0
	})
	reg.MustRegister(m.Reconnects, m.Messages, m.Channels, m.Lag)
	return m
}

// NewFeed returns a feed for channels named prefix+name. It measures its
// lag with a PING at least every second (see subConn.probeEvery), and takes
// a connection whose ping goes unanswered for twice pingEvery as dead.
func NewFeed(rdb *redis.Client, prefix string, pingEvery time.Duration, log *slog.Logger, m *FeedMetrics) *Feed {
	f := &Feed{
		rdb:      rdb,
		prefix:   prefix,
		log:      log,
		metrics:  m,
		channels: make(map[string]struct{}),
	}
	f.syncs = &group.Commit[struct{}, error]{Run: f.syncBatch}
	// Not dialled yet: the first Subscribe or ping does it.
	f.init(rdb.Subscribe(context.Background()), pingEvery)
	lag := f.Lag
	m.lag.Store(&lag)
	return f
}

// SetLagLimit sets PUBSUB_LAG_LIMIT, before Run: a connection further
// behind Redis than limit is dropped and made again, so that the backlog
// is not drained through the streams' queues; the gap is recovered from
// history as after any loss. 0: no limit.
func (f *Feed) SetLagLimit(limit time.Duration) { f.lagLimit = limit }

// Connected reports whether the pub/sub connection is up and subscribed.
func (f *Feed) Connected() bool { return f.connected.Load() }

// SetMarker sets the marker that durable messages carry (History.Configure
// returns it). Until it is set, no message counts as durable.
func (f *Feed) SetMarker(m string) { f.marker.Store(&m) }

// Subscribe subscribes to channels. It only writes the command: Sync
// confirms it. If Redis cannot be reached the channels stay in the set and
// are subscribed when the connection is made again; while it is being
// made again, Subscribe returns ErrFeedLost at once.
func (f *Feed) Subscribe(names ...string) error {
	f.mu.Lock()
	full := make([]string, len(names))
	for i, n := range names {
		f.channels[n] = struct{}{}
		full[i] = f.prefix + n
	}
	f.metrics.Channels.Set(float64(len(f.channels)))
	ps := f.ps
	f.mu.Unlock()
	if ps == nil {
		return ErrFeedLost // the redial subscribes the set
	}
	// Written without mu (the hub serialises the calls per channel): a
	// connection go-redis has dropped is dialled inside the call, bounded.
	ctx, cancel := context.WithTimeout(context.Background(), f.dialTimeout())
	defer cancel()
	err := ps.Subscribe(ctx, full...)
	if err != nil {
		// A write that failed has go-redis dial and resubscribe inside
		// the call, from its set as it was before these channels: once
		// more puts them on the new connection (or, if Redis is still
		// away, in the set the next one resubscribes).
		err = ps.Subscribe(ctx, full...)
	}
	return err
}

// Unsubscribe unsubscribes from channels.
func (f *Feed) Unsubscribe(names ...string) {
	f.mu.Lock()
	full := make([]string, len(names))
	for i, n := range names {
		delete(f.channels, n)
		full[i] = f.prefix + n
	}
	f.metrics.Channels.Set(float64(len(f.channels)))
	ps := f.ps
	f.mu.Unlock()
	if ps == nil {
		return // the redial subscribes the set, without them
	}
	// go-redis forgets the channels even if the command cannot be sent, so a
	// reconnection will not bring them back.
	ctx, cancel := context.WithTimeout(context.Background(), f.dialTimeout())
	defer cancel()
	_ = ps.Unsubscribe(ctx, full...)
}

// Sync returns once Redis has confirmed every Subscribe written before it:
// from then on, whatever is published on those channels reaches Run. Redis
// answers in order on the connection, so the reply to a PING written after
// them is the proof. While the connection is being made again it fails at
// once with ErrFeedLost. Syncs made at the same time share one PING,
// written after each of them was made.
func (f *Feed) Sync(ctx context.Context) error {
	err, left := f.syncs.Do(ctx, struct{}{})
	return cmp.Or(left, err)
}

// syncBatch writes one barrier PING for a batch of Syncs and waits for its
// reply.
func (f *Feed) syncBatch(ctx context.Context, batch []struct{}) []error {
	done, err := f.ping(ctx)
	if err == nil {
		select {
		case err = <-done:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	out := make([]error, len(batch))
	for i := range out {
		out[i] = err
	}
	return out
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
		log:      f.log,
		metrics:  f.metrics,
		lagLimit: f.lagLimit,
		redial:   f.redial,
		probe: func(ctx context.Context, ps *redis.PubSub, payload string) error {
			return ps.Ping(ctx, payload)
		},
		lost: func(context.Context, error) {},
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

// redial makes a new pub/sub connection subscribed to every channel in
// the set, within timeout, and puts it in place. It does not hold mu while
// Redis is written to: channels (un)subscribed meanwhile are caught up on
// the new connection before it is put in place, where Subscribe and Sync
// find it, so that a Sync's ping follows them.
func (f *Feed) redial(ctx context.Context, timeout time.Duration, current func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ps := f.rdb.Subscribe(context.Background()) // dials with its first command
	have := map[string]struct{}{}
	dialled := false
	for {
		var add, drop []string
		f.mu.Lock()
		for n := range f.channels {
			if _, ok := have[n]; !ok {
				add = append(add, n)
			}
		}
		for n := range have {
			if _, ok := f.channels[n]; !ok {
				drop = append(drop, n)
			}
		}
		if len(add) == 0 && len(drop) == 0 && !dialled {
			// Nothing to subscribe: dial now all the same (the read would,
			// without a deadline), and have a first reply.
			f.mu.Unlock()
			if err := ps.Ping(ctx, "dial"); err != nil {
				_ = ps.Close()
				return err
			}
			dialled = true
			continue
		}
		if len(add) == 0 && len(drop) == 0 {
			if !current() {
				f.mu.Unlock()
				_ = ps.Close()
				return errAbandoned
			}
			f.ps = ps
			f.mu.Unlock()
			return nil
		}
		f.mu.Unlock()
		err := func() error {
			if len(add) > 0 {
				if err := ps.Subscribe(ctx, f.full(add)...); err != nil {
					return err
				}
			}
			if len(drop) > 0 {
				return ps.Unsubscribe(ctx, f.full(drop)...)
			}
			return nil
		}()
		if err != nil {
			_ = ps.Close()
			return err
		}
		dialled = true
		for _, n := range add {
			have[n] = struct{}{}
		}
		for _, n := range drop {
			delete(have, n)
		}
	}
}

func (f *Feed) full(names []string) []string {
	full := make([]string, len(names))
	for i, n := range names {
		full[i] = f.prefix + n
	}
	return full
}

func (f *Feed) channelCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.channels)
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
