package handlers

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/internal/ratelog"
	"github.com/ssebridge/ssebridge/wire"
)

// dev holds the try-out routes of embedded mode: the demo page logs in and
// publishes through them as a backend would. They do not exist with REDIS_URL.
type dev struct {
	o       Options
	refused *prometheus.CounterVec
	log     ratelog.Logger
}

// guard lets only this machine's pages use the /dev routes, which log
// anyone in and publish anything. The Host must be a loopback name: a site
// whose name was rebound to 127.0.0.1 (DNS rebinding) sends its own, and
// gets 421 Misdirected Request: the request reached a server that does not
// answer for that name. The Origin, which browsers send with every POST,
// must be a page of this machine (the service's own is one, its Host being
// loopback): a foreign page gets 403, as on GET /events. No Origin (curl,
// ssebridge tail) is judged by the Host alone. Neither value is echoed.
func (d *dev) guard(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if !LoopbackHost(r.Host) {
			return d.refuse(http.StatusMisdirectedRequest, "host", r.Host,
				"the Host is not this machine: the try-out's /dev routes answer only at localhost, 127.0.0.1 or [::1]")
		}
		if o := r.Header.Get("Origin"); o != "" && !loopbackOrigin(o) {
			return d.refuse(http.StatusForbidden, "origin", o,
				"the Origin is not a page of this machine: the try-out's /dev routes answer only pages at localhost, 127.0.0.1 or [::1]")
		}
		return next(c)
	}
}

// refuse counts a refusal of guard's and tells the developer, once a
// minute, which page was refused (quoted by slog, and cut: anyone sets it).
func (d *dev) refuse(code int, reason, value, msg string) error {
	d.refused.WithLabelValues(reason).Inc()
	if len(value) > 200 {
		value = value[:200] + "…"
	}
	d.log.Write(slog.LevelInfo, "dev:"+reason, "try-out: a /dev request from another site was refused", "reason", reason, reason, value)
	return echo.NewHTTPError(code, msg)
}

// LoopbackHost reports whether host, with or without a port, names this
// machine's loopback: localhost, 127.0.0.0/8 or ::1. An empty host (":8080",
// every interface) does not.
func LoopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loopbackOrigin reports whether origin is a page served from this machine.
func loopbackOrigin(origin string) bool {
	u, err := url.Parse(origin)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && LoopbackHost(u.Host)
}

func (d *dev) info(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]any{"embedded": true})
}

// login creates a session and sets its cookie, as the backend's login does.
func (d *dev) login(c echo.Context) error {
	user := strings.TrimSpace(c.FormValue("user"))
	if err := wire.CheckName(user); err != nil {
		return c.JSON(http.StatusBadRequest, map[string]string{"error": "user: " + err.Error()})
	}
	var rooms []string
	for _, r := range strings.Split(c.FormValue("rooms"), ",") {
		if r = strings.TrimSpace(r); r == "" {
			continue
		}
		if err := wire.CheckName(r); err != nil {
			return c.JSON(http.StatusBadRequest, map[string]string{"error": "rooms: " + err.Error()})
		}
		rooms = append(rooms, r)
	}
	const ttl = 24 * time.Hour
	// The rooms are granted now: a publish of nothing takes a position
	// after every event so far (History.Position), and the session's
	// streams never get the rooms' events from before it.
	pos, err := d.o.History.Publish(c.Request().Context(), "", nil)
	if err != nil {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	}
	granted := make(map[string]string, len(rooms))
	for _, r := range rooms {
		granted[r] = pos.String()
	}
	token, err := d.o.Sessions.Create(c.Request().Context(), wire.Session{User: user, Rooms: rooms, Granted: granted}, ttl)
	if err != nil {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	}
	c.SetCookie(&http.Cookie{
		Name: d.o.SessionCookie, Value: token, Path: "/", MaxAge: int(ttl.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
	return c.JSON(http.StatusOK, map[string]any{"user": user, "rooms": rooms})
}

// publish publishes live on a logical channel, as the backend's PUBLISH does.
func (d *dev) publish(c echo.Context) error {
	channel := c.FormValue("channel")
	if err := wire.CheckChannel(channel); err != nil {
		return c.JSON(http.StatusBadRequest, map[string]string{"error": err.Error()})
	}
	payload := []byte(c.FormValue("payload"))
	if c.FormValue("durable") != "" {
		if _, err := wire.ParseEnvelope(payload); err != nil {
			return c.JSON(http.StatusBadRequest, map[string]string{"error": err.Error()})
		}
		id, err := d.o.History.Publish(c.Request().Context(), channel, payload)
		if err != nil {
			return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		}
		return c.JSON(http.StatusOK, map[string]string{"id": id.String()})
	}
	if err := d.o.Dev.Publisher.Publish(c.Request().Context(), channel, payload); err != nil {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "published"})
}

// logout ends the session as the backend's logout does: it deletes the
// session key (no new stream, and open ones end at the next recheck), then
// publishes a logout control message (that user's open streams get
// event: logout and end now), and clears the cookie. With no cookie, or a
// session already gone, there is nothing to end: it only clears the cookie.
func (d *dev) logout(c echo.Context) error {
	clearCookie := func() {
		c.SetCookie(&http.Cookie{
			Name: d.o.SessionCookie, Value: "", Path: "/", MaxAge: -1,
			HttpOnly: true, SameSite: http.SameSiteLaxMode,
		})
	}
	ck, err := c.Cookie(d.o.SessionCookie)
	if err != nil || ck.Value == "" {
		clearCookie()
		return c.JSON(http.StatusOK, map[string]string{"status": "not logged in"})
	}
	ctx := c.Request().Context()
	sess, err := d.o.Sessions.Lookup(ctx, ck.Value)
	if errors.Is(err, wire.ErrNoSession) || errors.Is(err, wire.ErrBadSession) {
		clearCookie()
		return c.JSON(http.StatusOK, map[string]string{"status": "not logged in"})
	}
	if err != nil {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	}
	if err := d.o.Sessions.Delete(ctx, ck.Value); err != nil {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": "deleting the session: " + err.Error()})
	}
	clearCookie() // the session is gone: the cookie is worthless now, whatever follows
	msg, _ := json.Marshal(map[string]string{"op": "logout", "user": sess.User})
	if err := d.o.Dev.Publisher.Publish(ctx, wire.ControlChannel, msg); err != nil {
		// Open streams still end at the next session recheck.
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "logged out", "user": sess.User})
}
