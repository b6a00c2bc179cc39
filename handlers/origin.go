package handlers

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/ssebridge/ssebridge/internal/ratelog"
)

// origins decides which pages may open a stream.
type origins struct {
	allowed map[string]struct{}
	log     *slog.Logger
	limit   *ratelog.Limiter // of the refusals logged for the developer, shared by every reason
}

func newOrigins(allowed []string, log *slog.Logger, limit *ratelog.Limiter) origins {
	o := origins{allowed: make(map[string]struct{}, len(allowed)), log: log, limit: limit}
	for _, a := range allowed {
		if a = strings.TrimRight(strings.TrimSpace(a), "/"); a != "" {
			o.allowed[a] = struct{}{}
		}
	}
	return o
}

// admit checks the request's Origin: absent (curl, same-origin GET), the
// service's own, or listed. An admitted cross-origin request gets CORS
// headers naming that one origin, with credentials: never "*", which
// browsers refuse together with cookies anyway.
func (o origins) admit(c echo.Context) bool {
	origin := c.Request().Header.Get("Origin")
	if origin == "" {
		return true
	}
	h := c.Response().Header()
	h.Add("Vary", "Origin")
	own := c.Scheme() + "://" + c.Request().Host
	if origin == own {
		return true
	}
	if _, ok := o.allowed[origin]; !ok {
		o.refused(origin, own)
		return false
	}
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Credentials", "true")
	return true
}

// refused tells the developer, at most once a minute, which origin to add.
// The origin is no secret; it is quoted and cut, since any client sets it.
func (o origins) refused(origin, own string) {
	if ok, suppressed := o.limit.Allow("origin"); ok {
		if len(origin) > 200 {
			origin = origin[:200] + "…"
		}
		o.log.Info(fmt.Sprintf("origin %q is not allowed: add it to ALLOWED_ORIGINS", origin),
			"reason", "origin", "own_origin", own, "suppressed", suppressed)
	}
}

// preflight answers a CORS preflight, which EventSource never sends but a
// fetch() with an Authorization header does.
func (ev *events) preflight(c echo.Context) error {
	if !ev.origins.admit(c) {
		return ev.refuse(http.StatusForbidden, "origin", "origin not allowed")
	}
	h := c.Response().Header()
	h.Set("Access-Control-Allow-Methods", "GET")
	h.Set("Access-Control-Allow-Headers", "Authorization, Last-Event-ID, Cache-Control")
	h.Set("Access-Control-Max-Age", "600")
	return c.NoContent(http.StatusNoContent)
}
