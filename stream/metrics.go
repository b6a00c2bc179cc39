package stream

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/wire"
)

// Metrics are the hub's Prometheus metrics.
type Metrics struct {
	Open        prometheus.Gauge
	Delivered   prometheus.Counter
	Dropped     *prometheus.CounterVec // by reason
	Closed      *prometheus.CounterVec // by reason
	Replayed    prometheus.Counter
	Recovered   prometheus.Counter
	Resets      *prometheus.CounterVec // by reason
	Control     *prometheus.CounterVec // by op
	Rechecked   *prometheus.CounterVec // by outcome
	ReplayPages prometheus.Gauge
	OnLoops     prometheus.Gauge
	ResumeUsers prometheus.Gauge
	FellBack    prometheus.Counter
}

// NewMetrics registers the hub's metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ssebridge_streams_open",
			Help: "Streams open now (MAX_STREAMS).",
		}),
		Delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_events_delivered_total",
			Help: "Events written to streams, counted once per stream.",
		}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_events_dropped_total",
			Help: "Published messages refused before fan-out, by reason (too_large: MAX_EVENT_BYTES; forged_durable; bad_control; too_many_rooms: MAX_ROOMS).",
		}, []string{"reason"}),
		Closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_streams_closed_total",
			Help: "Streams ended, by reason (slow: STREAM_QUEUE or STREAM_QUEUE_BYTES overflowed).",
		}, []string{"reason"}),
		Replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_events_replayed_total",
			Help: "Durable events replayed to streams that resumed with Last-Event-ID or joined a room.",
		}),
		Recovered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_events_recovered_total",
			Help: "Durable events read back from history after a gap in the Redis feed.",
		}),
		Resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_resets_total",
			Help: "reset events sent: a resume id that could not be honoured, by reason (too_large: REPLAY_MAX_BYTES).",
		}, []string{"reason"}),
		Control: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_control_applied_total",
			Help: "Control messages applied, by op.",
		}, []string{"op"}),
		Rechecked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_session_recheck_total",
			Help: "Streams changed by the session recheck, by outcome (ended, left_room, joined_room, user_changed).",
		}, []string{"outcome"}),
		ReplayPages: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ssebridge_replay_pages_inflight",
			Help: "Pages of replay read from Redis and not yet written (REPLAY_INFLIGHT_BYTES / 256 KiB at most).",
		}),
		OnLoops: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ssebridge_streams_on_loops",
			Help: "Live streams written by the event loops (EVENT_LOOPS) rather than a goroutine each.",
		}),
		FellBack: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_streams_fell_back_total",
			Help: "Times a live stream's queue filled with durable events (a burst: a recovery, a feed that was late) and the stream caught up from history instead of being ended as slow.",
		}),
		ResumeUsers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ssebridge_resume_limit_users",
			Help: "Users whose resumes MAX_RESUMES_PER_USER_PER_MINUTE tracks (at most MAX_STREAMS; refusals: ssebridge_handshakes_refused_total{reason=\"resume_limit\"}).",
		}),
	}
	// Every known label at 0 from the start: a dashboard shows 0 rather
	// than "No data" until the first increment, and a rate() has a start.
	for _, e := range dropSentinels() {
		m.Dropped.WithLabelValues(e.Error())
	}
	m.Dropped.WithLabelValues("other")
	for _, r := range []string{ReasonClient, ReasonSlow, ReasonLate, ReasonLogout, ReasonSession, ReasonShutdown, ReasonWrite, ReasonRedis, ReasonUpload} {
		m.Closed.WithLabelValues(r)
	}
	for _, r := range []string{wire.ResetMalformed, wire.ResetEpoch, wire.ResetFuture, wire.ResetTooOld, wire.ResetTrimmed, wire.ResetTooLarge} {
		m.Resets.WithLabelValues(r)
	}
	for _, op := range []string{wire.OpJoin, wire.OpLeave, wire.OpLogout} {
		m.Control.WithLabelValues(op)
	}
	for _, o := range []string{"ended", "user_changed", "left_room", "joined_room"} {
		m.Rechecked.WithLabelValues(o)
	}
	reg.MustRegister(m.Open, m.Delivered, m.Dropped, m.Closed, m.Replayed, m.Recovered, m.Resets, m.Control, m.Rechecked, m.ReplayPages, m.OnLoops, m.ResumeUsers, m.FellBack)
	return m
}
