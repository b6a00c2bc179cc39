package handlers

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/internal/ratelog"
	"github.com/ssebridge/ssebridge/wire"
)

// publisher serves POST /publish: durable publish for backends without
// Redis access.
type publisher struct {
	o       Options
	log     ratelog.Logger
	refused *prometheus.CounterVec
}

// gone counts a request whose client went away before it was answered.
func (p *publisher) gone(channel string) error {
	p.refused.WithLabelValues("client_gone").Inc()
	p.log.Write(slog.LevelDebug, "publish:client_gone", "durable publish: the client went away", "channel", channel)
	return errClientGone
}

// refuse counts a refusal and returns it for the error handler to answer.
func (p *publisher) refuse(code int, reason, msg string) error {
	p.refused.WithLabelValues(reason).Inc()
	return echo.NewHTTPError(code, msg)
}

// publishRequest is the body of POST /publish.
type publishRequest struct {
	Channel string          `json:"channel"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
}

func (p *publisher) publish(c echo.Context) error {
	auth := c.Request().Header.Get("Authorization")
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(p.o.PublishToken)) != 1 {
		return p.refuse(http.StatusUnauthorized, "unauthorized", "POST /publish needs Authorization: Bearer <PUBLISH_TOKEN>")
	}
	// The body holds the envelope and a channel name: allow a little over
	// the event limit, and refuse the envelope itself by its own size below.
	limit := int64(p.o.MaxEventBytes) + 1024
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, limit+1))
	if err != nil && c.Request().Context().Err() != nil {
		return p.gone("")
	}
	if err != nil {
		return p.refuse(http.StatusBadRequest, "bad_request", "reading the body: "+err.Error())
	}
	if int64(len(body)) > limit {
		return p.refuse(http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body over %d bytes", limit))
	}
	var req publishRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return p.refuse(http.StatusBadRequest, "bad_request", `body: want {"channel":..., "event":..., "data":...}: `+err.Error())
	}
	// One object, nothing after it but white space: a second object or
	// stray bytes are a client's mistake, never silently dropped.
	if _, err := dec.Token(); err != io.EOF {
		return p.refuse(http.StatusBadRequest, "bad_request",
			fmt.Sprintf("body: unexpected data after the JSON object, at byte %d", dec.InputOffset()))
	}
	// Keys are matched exactly, as in sessions and control messages:
	// encoding/json matched "Channel" or "DATA" too, and the last match
	// won, so a body could publish where its sender's own reading of it
	// did not (a backend that merges a user's JSON into what it sends).
	if err := exactKeys(body, "channel", "event", "data"); err != nil {
		return p.refuse(http.StatusBadRequest, "bad_request", `body: want {"channel":..., "event":..., "data":...}: `+err.Error())
	}
	if err := wire.CheckChannel(req.Channel); err != nil {
		return p.refuse(http.StatusBadRequest, "bad_request", err.Error())
	}
	if req.Data == nil {
		return p.refuse(http.StatusBadRequest, "bad_request", `"data" is missing`)
	}
	envelope, err := encodeEnvelope(req.Event, req.Data)
	if err != nil {
		return p.refuse(http.StatusBadRequest, "bad_request", `"data": `+err.Error())
	}
	if len(envelope) > p.o.MaxEventBytes {
		return p.refuse(http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("event is %d bytes, over MAX_EVENT_BYTES (%d)", len(envelope), p.o.MaxEventBytes))
	}
	if _, err := wire.ParseEnvelope(envelope); err != nil {
		return p.refuse(http.StatusBadRequest, "bad_request", err.Error())
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), p.o.PublishTimeout)
	defer cancel()
	id, err := p.o.History.Publish(ctx, req.Channel, envelope)
	if err != nil && c.Request().Context().Err() != nil {
		// The client left (its context, not Redis, ended the call): no
		// outage to warn of, and nobody to answer.
		return p.gone(req.Channel)
	}
	if err != nil {
		// Maybe published: the script may have run, or may still run when
		// a stalled link delivers it (docs/protocol.md).
		msg, cause := redisTrouble(err, p.o.PublishTimeout)
		p.log.Write(slog.LevelWarn, "publish:redis:"+cause, "durable publish failed: "+msg, "channel", req.Channel, "cause", cause, "err", err)
		c.Response().Header().Set("Retry-After", "1")
		return p.refuse(http.StatusServiceUnavailable, "redis", msg+"; it may have been published: retry with the same Idempotency-Key")
	}
	return c.JSON(http.StatusOK, map[string]string{"id": id.String()})
}

// encodeEnvelope returns the envelope as it is stored and sent, without
// HTML escaping: json.Marshal would send '<' as \u003c, six bytes for one,
// and measure MAX_EVENT_BYTES on that.
func encodeEnvelope(event string, data json.RawMessage) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err := enc.Encode(struct {
		Event string          `json:"event,omitempty"`
		Data  json.RawMessage `json:"data"`
	}{event, data})
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), err
}

// exactKeys reports the first key of the JSON object body, in sorted order,
// that is none of keys exactly.
func exactKeys(body []byte, keys ...string) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return err
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		if !slices.Contains(keys, k) {
			return fmt.Errorf("json: unknown field %q", k)
		}
	}
	return nil
}
