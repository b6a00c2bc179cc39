package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/internal/ratelog"
	"github.com/ssebridge/ssebridge/stream"
	"github.com/ssebridge/ssebridge/wire"
)

// eventsPath is the stream's route.
const eventsPath = "/events"

// OpensStream reports whether r asks for a stream (GET /events): the one
// request that keeps its connection's opening slot (stream.Openings).
func OpensStream(r *http.Request) bool {
	return r.Method == http.MethodGet && r.URL.Path == eventsPath
}

type events struct {
	o       Options
	origins origins
	refused *prometheus.CounterVec
	log     ratelog.Logger
}

// stream serves GET /events: the EventSource stream.
func (ev *events) stream(c echo.Context) error {
	// Taken before the session is read: control messages published from
	// then on reach the stream even if they arrive before it is registered.
	// One deadline for every wait on Redis before the answer: the barrier,
	// the session, the subscriptions.
	ctx := c.Request().Context()
	rctx, cancel := context.WithTimeout(ctx, ev.o.RedisTimeout)
	defer cancel()
	var ticket stream.ControlPoint
	who, err := ev.authorize(rctx, c, func(ctx context.Context) (err error) {
		ticket, err = ev.o.Hub.ControlPoint(ctx)
		return err
	})
	if err != nil {
		return err
	}
	resume := c.Request().Header.Get("Last-Event-ID")
	if resume == "" {
		resume = c.QueryParam("lastEventId") // for curl, and pages that keep the id themselves
	}
	s, err := ev.o.Hub.Open(rctx, stream.Spec{User: who.session.User, Session: who.token, Rooms: who.rooms, AllRooms: who.allRooms, Resume: resume, Granted: who.session.Granted, ControlPoint: ticket})
	if err != nil && ctx.Err() != nil {
		return ev.gone()
	}
	if err != nil {
		return ev.openRefusal(c, who.session.User, err)
	}

	// From here the hub owns the connection, and closes the stream when it
	// ends. The writer under Echo's: Echo's own adds bookkeeping to every
	// write. Marked committed for Echo, which then writes nothing after
	// the stream (its error handler, should a panic reach its recovery).
	c.Response().Committed = true
	ev.o.Hub.Serve(c.Response().Writer, c.Request(), s, ev.o.Write)
	return nil
}

// openRefusal answers a stream the hub would not open.
func (ev *events) openRefusal(c echo.Context, user string, err error) error {
	var resumes *stream.ResumeLimitError
	switch {
	case errors.As(err, &resumes):
		// Retry-After says when the next resume is let through, not
		// RETRY_INTERVAL: sooner would be refused again.
		c.Response().Header().Set("Retry-After", strconv.Itoa(max(int(math.Ceil(resumes.Wait.Seconds())), 1)))
		return ev.refuse(http.StatusTooManyRequests, "resume_limit", "too many resumes for this user (MAX_RESUMES_PER_USER_PER_MINUTE)")
	case errors.Is(err, stream.ErrTooManyForUser):
		return ev.refuseRetry(c, http.StatusTooManyRequests, "user_limit", "too many streams for this user")
	case errors.Is(err, stream.ErrTooManyStreams):
		return ev.refuseRetry(c, http.StatusTooManyRequests, "total_limit", "too many streams on this instance")
	case errors.Is(err, stream.ErrShuttingDown):
		return ev.refuseRetry(c, http.StatusServiceUnavailable, "shutdown", "shutting down")
	case errors.Is(err, stream.ErrOpeningsBusy):
		return ev.refuseRetry(c, http.StatusServiceUnavailable, "openings", "too many streams opening at once (OPEN_CONCURRENCY), try again")
	case errors.Is(err, stream.ErrControlBacklog):
		return ev.refuseRetry(c, http.StatusServiceUnavailable, "control_backlog", "too busy, try again")
	}
	return ev.redisRefusal(c, err)
}

// redisRefusal answers a request that Redis failed: 503 with Retry-After,
// saying whether Redis was late (REDIS_TIMEOUT) or away, and logs the
// cause once a minute per cause, with how many more there were.
func (ev *events) redisRefusal(c echo.Context, err error) error {
	msg, cause := redisTrouble(err, ev.o.RedisTimeout)
	ev.log.Write(slog.LevelWarn, "warn:redis:"+cause, "stream refused: "+msg, "cause", cause, "err", err)
	return ev.refuseRetry(c, http.StatusServiceUnavailable, "redis", msg)
}

// check serves GET /events/check: the answer GET /events would give, without
// opening a stream. EventSource hides the status of a refused stream; this
// lets a page tell a final refusal (401, 403) from a passing one. Once the
// session is known, the answer names it (wire.SessionID), a refusal for a
// limit included: ssebridge.js asks before it joins the tabs of a session,
// and a tab of a user whose one allowed stream its leader holds must still
// learn which tabs to join. With ?anonymous=ok a missing or unknown
// session (401) answers 200 with a null user and session, and the error.
func (ev *events) check(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), ev.o.RedisTimeout)
	defer cancel()
	who, err := ev.authorize(ctx, c, nil)
	if he, ok := err.(*echo.HTTPError); ok && he.Code == http.StatusUnauthorized && c.QueryParam("anonymous") == "ok" {
		// A page asking on load whether the browser is logged in: no
		// session is an answer, not an error for its console to show.
		return c.JSON(http.StatusOK, map[string]any{"user": nil, "rooms": []string{}, "session": nil, "error": he.Message})
	}
	if err != nil {
		return err
	}
	sess, rooms := who.session, who.rooms
	sid := wire.SessionID(who.token, who.session.User)
	if ev.o.Hub != nil {
		if err := ev.o.Hub.Admits(sess.User); err != nil {
			refusal := ev.openRefusal(c, sess.User, err)
			if he, ok := refusal.(*echo.HTTPError); ok {
				return c.JSON(he.Code, map[string]any{"error": he.Message, "session": sid})
			}
			return refusal
		}
	}
	if rooms == nil {
		rooms = []string{}
	}
	return c.JSON(http.StatusOK, map[string]any{"user": sess.User, "rooms": rooms, "session": sid})
}

// authorized is what authorize found: whose stream, and which rooms.
type authorized struct {
	token    string
	session  wire.Session
	rooms    []string
	allRooms bool // no ?rooms=: all of the session's
}

// authorize checks the origin and the session, and returns the rooms the
// stream asks for (all of the session's when it names none). beforeLookup,
// if set, runs right before the session is read; an error of it is Redis's. ctx bounds the waits on
// Redis.
func (ev *events) authorize(ctx context.Context, c echo.Context, beforeLookup func(context.Context) error) (authorized, error) {
	var a authorized
	if !ev.origins.admit(c) {
		return a, ev.refuse(http.StatusForbidden, "origin", "origin not allowed")
	}
	tokens, tooMany := ev.tokens(c)
	if tooMany {
		return a, ev.refuse(http.StatusBadRequest, "two_cookies",
			"the "+ev.o.SessionCookie+" cookie is sent with more values than one session's: which session is meant is not clear")
	}
	if len(tokens) == 0 {
		return a, ev.refuse(http.StatusUnauthorized, "no_token",
			"no session: send the "+ev.o.SessionCookie+" cookie or an Authorization: Bearer header")
	}
	var sess wire.Session
	var err error
	if beforeLookup != nil {
		err = beforeLookup(ctx)
	}
	switch {
	case err != nil:
		// Answered as a failed read of the session (below).
	case len(tokens) == 1:
		a.token = tokens[0]
		sess, err = ev.o.Sessions.Lookup(ctx, a.token)
	default:
		a.token, sess, err = ev.liveOne(ctx, tokens)
		if errors.Is(err, errTwoSessions) {
			// Go reads the first cookie, Django the last (parse_cookie):
			// with two live sessions, the stream would be another's than
			// the one the backend sees (a cookie planted by a sibling
			// subdomain, or a plain-HTTP answer, with a longer path to be
			// sent first). One live beside stale ones (a cookie left on
			// another path or domain) is the browser's.
			return a, ev.refuse(http.StatusBadRequest, "two_cookies",
				"the "+ev.o.SessionCookie+" cookie is sent twice, naming two sessions: which is meant is not clear")
		}
	}
	switch {
	case errors.Is(err, wire.ErrNoSession):
		return a, ev.refuse(http.StatusUnauthorized, "unknown_session", "unknown or expired session")
	case errors.Is(err, wire.ErrBadSession):
		ev.log.Write(slog.LevelWarn, "warn:bad_session", "stream refused: malformed session in redis", "err", err)
		return a, ev.refuse(http.StatusUnauthorized, "bad_session", err.Error())
	case err != nil && c.Request().Context().Err() != nil:
		// The request's own context ended (the client closed its connection
		// or reset its stream), not Redis: told by the context, not by the
		// error, which go-redis words as it likes.
		return a, ev.gone()
	case err != nil:
		return a, ev.redisRefusal(c, err)
	}
	a.session = sess

	param := strings.Join(c.QueryParams()["rooms"], ",")
	if param == "" {
		if len(sess.Rooms) > ev.o.MaxRooms {
			return a, ev.refuse(http.StatusForbidden, "too_many_rooms",
				fmt.Sprintf("the session lists %d rooms, more than MAX_ROOMS (%d): name the rooms with ?rooms=", len(sess.Rooms), ev.o.MaxRooms))
		}
		a.rooms, a.allRooms = slices.Compact(slices.Sorted(slices.Values(sess.Rooms))), true
		return a, nil
	}
	rooms, err := wire.ParseRooms(param, ev.o.MaxRooms)
	if err != nil {
		return a, ev.refuse(http.StatusBadRequest, "bad_room", "rooms: "+err.Error())
	}
	for _, r := range rooms {
		if !sess.Allows(r) {
			return a, ev.refuse(http.StatusForbidden, "room_not_allowed", "room "+strconv.Quote(r)+" is not in the session")
		}
	}
	a.rooms = rooms
	return a, nil
}

// maxCookieTokens is how many values of the session cookie a request may
// carry: a browser sends one per path and domain it was set for.
const maxCookieTokens = 4

// tokens reads the session token: the cookie's values first (distinct, in
// the order sent: more than one when it was set for several paths or
// domains), then a bearer header for curl and other non-browser clients.
// tooMany is set past maxCookieTokens values.
func (ev *events) tokens(c echo.Context) (tokens []string, tooMany bool) {
	for _, ck := range c.Request().Cookies() {
		if ck.Name != ev.o.SessionCookie || ck.Value == "" || slices.Contains(tokens, ck.Value) {
			continue
		}
		if len(tokens) == maxCookieTokens {
			return nil, true
		}
		tokens = append(tokens, ck.Value)
	}
	if len(tokens) > 0 {
		return tokens, false
	}
	if t, ok := strings.CutPrefix(c.Request().Header.Get("Authorization"), "Bearer "); ok {
		if t = strings.TrimSpace(t); t != "" {
			return []string{t}, false
		}
	}
	return nil, false
}

// errTwoSessions: more than one of a request's cookie values names a session.
var errTwoSessions = errors.New("the session cookie names two sessions")

// liveOne finds the one of tokens that names a session: wire.ErrNoSession
// if none does, errTwoSessions if more than one does, and any other error
// of a look-up as it is.
func (ev *events) liveOne(ctx context.Context, tokens []string) (string, wire.Session, error) {
	var token string
	var sess wire.Session
	for _, t := range tokens {
		s, err := ev.o.Sessions.Lookup(ctx, t)
		if errors.Is(err, wire.ErrNoSession) {
			continue
		}
		if err != nil {
			return t, s, err
		}
		if token != "" {
			return "", wire.Session{}, errTwoSessions
		}
		token, sess = t, s
	}
	if token == "" {
		return "", wire.Session{}, wire.ErrNoSession
	}
	return token, sess, nil
}

// refuse counts a refusal and returns it as an error, which the error
// handler answers as JSON {"error": msg}.
func (ev *events) refuse(code int, reason, msg string) error {
	ev.refused.WithLabelValues(reason).Inc()
	ev.log.Write(slog.LevelDebug, "refused:"+reason, "stream refused", "status", code, "reason", reason)
	if reason == "no_token" {
		ev.hint(reason, "no session cookie "+strconv.Quote(ev.o.SessionCookie)+
			" and no Authorization header: is the cookie sent (SameSite, domain, withCredentials: true)?")
	}
	return echo.NewHTTPError(code, msg)
}

// hint logs at info, at most once a minute per reason, a refusal that a
// developer fixes in configuration or in the page. (An origin refusal is
// told by origins.admit, which knows the origin.) Never a token.
func (ev *events) hint(reason, msg string) {
	if ok, suppressed := ev.origins.limit.Allow(reason); ok {
		ev.o.Log.Info(msg, "reason", reason, "suppressed", suppressed)
	}
}

// gone counts a request whose client went away while the session was read
// or the stream opened: no fault of Redis's, and nobody to answer.
func (ev *events) gone() error {
	ev.refused.WithLabelValues("client_gone").Inc()
	ev.log.Write(slog.LevelDebug, "refused:client_gone", "stream refused: the client went away", "reason", "client_gone")
	return errClientGone
}

// refuseRetry refuses for a passing reason, with Retry-After.
func (ev *events) refuseRetry(c echo.Context, code int, reason, msg string) error {
	secs := int(ev.o.Retry.Seconds())
	c.Response().Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
	return ev.refuse(code, reason, msg)
}
