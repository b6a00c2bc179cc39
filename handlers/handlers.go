// Package handlers holds ssebridge's HTTP routes. They are thin: sessions
// come from store, streams from stream.Hub.
package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ssebridge/ssebridge/internal/ratelog"
	"github.com/ssebridge/ssebridge/static"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/stream"
	"github.com/ssebridge/ssebridge/wire"
)

// DurablePublisher publishes a durable event and returns its id.
type DurablePublisher interface {
	Publish(ctx context.Context, channel string, envelope []byte) (wire.Cursor, error)
	// PublishOnce publishes with an idempotency key ("" for none): a key
	// seen within the window returns the first id, replayed, and
	// publishes nothing; reused for another event, store.ErrIdempotencyKeyReused.
	PublishOnce(ctx context.Context, channel string, envelope []byte, key string) (id wire.Cursor, replayed bool, err error)
}

// Options wire the routes to the rest of the service.
type Options struct {
	Hub            *stream.Hub
	Sessions       *store.Sessions
	History        DurablePublisher // *store.History, or *store.Cluster in cluster mode
	PublishToken   string           // bearer token of POST /publish; "" turns it off
	MaxEventBytes  int
	MaxRooms       int // rooms of one stream
	SessionCookie  string
	AllowedOrigins []string
	Write          stream.WriteOptions
	Retry          time.Duration // Retry-After on transient refusals
	// RedisTimeout bounds a request's waits on Redis, all of them
	// together (REDIS_TIMEOUT): past it, 503 with Retry-After. 0: 10 s.
	RedisTimeout time.Duration
	// PublishTimeout bounds POST /publish's: RedisTimeout, plus
	// DURABLE_WAIT_TIMEOUT when replicas are waited for. 0: RedisTimeout.
	PublishTimeout time.Duration

	// Ready reports whether Redis is reachable and subscribed.
	Ready func(context.Context) error

	Registry *prometheus.Registry
	Log      *slog.Logger
	// Version is what /healthz names (internal/version.Version).
	Version string

	// Presence, when set with PublishToken, serves GET /presence.
	Presence        *store.Presence
	PresencePageMax int // most users one answer lists (PRESENCE_PAGE_MAX)

	// Dev, when set, adds the try-out routes of embedded mode.
	Dev *Dev

	now func() time.Time // the clock of log rate limits; time.Now when nil (tests set it)
}

// Dev is what the try-out routes need: they log in and publish as a backend would.
type Dev struct {
	Publisher *store.Publisher
}

// New returns the service's routes.
func New(o Options) *echo.Echo {
	if o.RedisTimeout <= 0 {
		o.RedisTimeout = 10 * time.Second
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = o.RedisTimeout
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.JSONSerializer = jsonSerializer{}
	e.Use(middleware.Recover())
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		code, msg := http.StatusInternalServerError, "internal error"
		if errors.Is(err, errClientGone) {
			return // counted where it was seen; nobody to answer
		}
		if he, ok := err.(*echo.HTTPError); ok {
			code, msg = he.Code, http.StatusText(he.Code)
			if m, ok := he.Message.(string); ok {
				msg = m
			}
		}
		if !c.Response().Committed {
			_ = c.JSON(code, map[string]string{"error": msg})
		}
	}

	// Lines that may repeat with every request: one a minute per reason.
	logLimit := ratelog.New(time.Minute, o.now)

	refused := refusals(o.Registry, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ssebridge_handshakes_refused_total",
		Help: "Stream requests refused, by reason.",
	}, []string{"reason"}), "no_token", "two_cookies", "unknown_session", "bad_session", "origin", "bad_room", "room_not_allowed",
		"too_many_rooms", "user_limit", "total_limit", "resume_limit", "redis", "shutdown", "control_backlog", "openings", "client_gone")

	clog := ratelog.Logger{Log: o.Log, Limit: logLimit}
	ev := &events{o: o, origins: newOrigins(o.AllowedOrigins, o.Log, logLimit), refused: refused, log: clog}
	e.GET(eventsPath, ev.stream, noStore)
	e.GET("/events/check", ev.check, noStore)
	e.OPTIONS("/events", ev.preflight)
	e.OPTIONS("/events/check", ev.preflight)

	if o.PublishToken != "" {
		publishRefused := refusals(o.Registry, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_publish_refused_total",
			Help: "POST /publish requests refused, by reason.",
		}, []string{"reason"}),
			"unauthorized", "bad_request", "too_large", "redis", "client_gone", "idempotency_key_reused")
		e.POST("/publish", (&publisher{backendRoute{o, clog, publishRefused}}).publish, noStore)
	}
	if o.PublishToken != "" && o.Presence != nil {
		presenceRefused := refusals(o.Registry, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_presence_refused_total",
			Help: "GET /presence requests refused, by reason.",
		}, []string{"reason"}),
			"unauthorized", "bad_request", "too_large", "redis", "client_gone")
		e.GET("/presence", (&presence{backendRoute{o, clog, presenceRefused}}).serve, noStore)
	}
	e.GET("/healthz", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]string{"status": "ok", "version": o.Version})
	})
	e.GET("/readyz", (&readiness{ready: o.Ready, log: o.Log, limit: logLimit}).serve)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{})))
	e.GET("/*", echo.WrapHandler(http.FileServerFS(static.FS)))

	if o.Dev != nil {
		devRefused := refusals(o.Registry, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssebridge_dev_refused_total",
			Help: "Try-out /dev requests refused: a foreign Host (DNS rebinding) or Origin, by reason.",
		}, []string{"reason"}), "host", "origin")
		d := &dev{o: o, refused: devRefused, log: clog}
		g := e.Group("/dev", noStore, d.guard)
		g.GET("", d.info)
		g.POST("/login", d.login)
		g.POST("/publish", d.publish)
		g.POST("/logout", d.logout)
	}
	return e
}

// redisTrouble words a failed wait on Redis for the client: a deadline
// that passed is REDIS_TIMEOUT's (the caller tells a client's leaving
// apart, by the request's context). cause is store.Cause's, for the log.
func redisTrouble(err error, timeout time.Duration) (msg, cause string) {
	if errors.Is(err, store.ErrFeedLost) {
		return "redis pub/sub connection down", store.CauseLost
	}
	switch cause = store.Cause(err); cause {
	case store.CauseTimeout:
		return fmt.Sprintf("redis did not answer within %v (REDIS_TIMEOUT)", timeout), cause
	case store.CausePoolTimeout:
		return fmt.Sprintf("no free redis connection within %v (REDIS_TIMEOUT)", timeout), cause
	}
	return "redis unavailable", cause
}

// refusals registers a route's counter of refusals by reason, with each
// known reason at 0, so that a dashboard shows 0 rather than "No data" until the
// first increment, and a rate() has a start.
func refusals(reg prometheus.Registerer, c *prometheus.CounterVec, reasons ...string) *prometheus.CounterVec {
	reg.MustRegister(c)
	for _, r := range reasons {
		c.WithLabelValues(r)
	}
	return c
}

// errClientGone ends a request whose client left while it was served
// (closed its connection, or reset its HTTP/2 stream): it is counted, and
// nothing is answered, since nobody is left to read it.
var errClientGone = errors.New("client gone")

// noStore marks every answer of a route, refusals included, Cache-Control:
// no-store: they carry a user's data (who a session is, its rooms, a
// login's cookie), which neither the browser nor a shared cache may keep.
func noStore(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "no-store")
		return next(c)
	}
}
