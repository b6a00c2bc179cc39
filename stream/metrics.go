package stream

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the hub's Prometheus metrics.
type Metrics struct {
	Open      prometheus.Gauge
	Delivered prometheus.Counter
	Dropped   *prometheus.CounterVec // by reason
	Closed    *prometheus.CounterVec // by reason
	Replayed  prometheus.Counter
	Recovered prometheus.Counter
	Resets    *prometheus.CounterVec // by reason
}

// NewMetrics registers the hub's metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ssebridge_streams_open",
			Help: "Streams open now.",
		}),
		Delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_events_delivered_total",
			Help: "Events written to streams, counted once per stream.",
		}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_events_dropped_total",
			Help: "Published messages refused before fan-out, by reason.",
		}, []string{"reason"}),
		Closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_streams_closed_total",
			Help: "Streams ended, by reason (slow: queue overflowed).",
		}, []string{"reason"}),
		Replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_events_replayed_total",
			Help: "Durable events replayed to streams that resumed with Last-Event-ID.",
		}),
		Recovered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssebridge_events_recovered_total",
			Help: "Durable events read back from history after a gap in the Redis feed.",
		}),
		Resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_resets_total",
			Help: "reset events sent: a resume id that could not be honoured, by reason.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.Open, m.Delivered, m.Dropped, m.Closed, m.Replayed, m.Recovered, m.Resets)
	return m
}
