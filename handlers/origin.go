package handlers

import (
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

// origins decides which pages may open a stream.
type origins map[string]struct{}

func newOrigins(allowed []string) origins {
	o := make(origins, len(allowed))
	for _, a := range allowed {
		if a = strings.TrimRight(strings.TrimSpace(a), "/"); a != "" {
			o[a] = struct{}{}
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
	if origin == c.Scheme()+"://"+c.Request().Host {
		return true
	}
	if _, ok := o[origin]; !ok {
		return false
	}
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Credentials", "true")
	return true
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
