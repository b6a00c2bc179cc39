package handlers

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/ssebridge/ssebridge/wire"
)

// maxPresenceQuery is the longest query GET /presence reads: a room or a
// user name (128 bytes) with limit and after, and room to spare.
const maxPresenceQuery = 1024

// presence serves GET /presence: who is in a room, or where a user is,
// over every instance. For backends: it needs the publish token.
type presence struct{ backendRoute }

func (p *presence) serve(c echo.Context) error {
	r := c.Request()
	if err := p.authorize(r, "GET /presence"); err != nil {
		return err
	}
	if len(r.URL.RawQuery) > maxPresenceQuery {
		return p.refuse(http.StatusRequestURITooLong, "too_large", "query over "+strconv.Itoa(maxPresenceQuery)+" bytes")
	}
	q := r.URL.Query()
	room, user := q.Get("room"), q.Get("user")
	ctx, cancel := context.WithTimeout(r.Context(), p.o.RedisTimeout)
	defer cancel()
	switch {
	case room != "" && user != "":
		return p.refuse(http.StatusBadRequest, "bad_request", "room= or user=, not both")
	case room != "":
		if err := wire.CheckName(room); err != nil {
			return p.refuse(http.StatusBadRequest, "bad_request", "room: "+err.Error())
		}
		limit, after, err := p.page(q.Get("limit"), q.Get("after"))
		if err != nil {
			return err
		}
		answer, err := p.o.Presence.Room(ctx, room, after, limit)
		if err != nil {
			return p.redis(c, err)
		}
		if answer.Users == nil {
			answer.Users = map[string]int{}
		}
		return c.JSON(http.StatusOK, answer)
	case user != "":
		if err := wire.CheckName(user); err != nil {
			return p.refuse(http.StatusBadRequest, "bad_request", "user: "+err.Error())
		}
		answer, err := p.o.Presence.User(ctx, user)
		if err != nil {
			return p.redis(c, err)
		}
		return c.JSON(http.StatusOK, answer)
	}
	return p.refuse(http.StatusBadRequest, "bad_request", "GET /presence needs room=NAME or user=NAME")
}

// page reads limit= (default and most: PRESENCE_PAGE_MAX; 0: counts only)
// and after= (the next of the page before).
func (p *presence) page(limitText, after string) (int, string, error) {
	limit := p.o.PresencePageMax
	if limitText != "" {
		n, err := strconv.Atoi(limitText)
		if err != nil || n < 0 || n > p.o.PresencePageMax {
			return 0, "", p.refuse(http.StatusBadRequest, "bad_request", "limit: a number from 0 to "+strconv.Itoa(p.o.PresencePageMax)+" (PRESENCE_PAGE_MAX)")
		}
		limit = n
	}
	if after != "" {
		if err := wire.CheckName(after); err != nil {
			return 0, "", p.refuse(http.StatusBadRequest, "bad_request", "after: "+err.Error())
		}
	}
	return limit, after, nil
}

func (p *presence) redis(c echo.Context, err error) error {
	if c.Request().Context().Err() != nil {
		p.refused.WithLabelValues("client_gone").Inc()
		return errClientGone
	}
	msg, cause := redisTrouble(err, p.o.RedisTimeout)
	p.log.Write(slog.LevelWarn, "presence:redis:"+cause, "presence read failed: "+msg, "cause", cause, "err", err)
	c.Response().Header().Set("Retry-After", "1")
	return p.refuse(http.StatusServiceUnavailable, "redis", msg)
}
