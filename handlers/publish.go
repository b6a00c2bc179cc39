package handlers

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
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
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// backendRoute is a route for backends, not browsers: guarded by
// PUBLISH_TOKEN, its refusals counted by reason.
type backendRoute struct {
	o       Options
	log     ratelog.Logger
	refused *prometheus.CounterVec
}

// refuse counts a refusal and returns it for the error handler to answer.
func (b *backendRoute) refuse(code int, reason, msg string) error {
	b.refused.WithLabelValues(reason).Inc()
	return echo.NewHTTPError(code, msg)
}

// authorize refuses (401) a request without the publish token; route
// names the route in the refusal.
func (b *backendRoute) authorize(r *http.Request, route string) error {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(b.o.PublishToken)) != 1 {
		return b.refuse(http.StatusUnauthorized, "unauthorized", route+" needs Authorization: Bearer <PUBLISH_TOKEN>")
	}
	return nil
}

// publisher serves POST /publish: durable publish for backends without
// Redis access.
type publisher struct{ backendRoute }

// gone counts a request whose client went away before it was answered.
func (p *publisher) gone(channel string) error {
	p.refused.WithLabelValues("client_gone").Inc()
	p.log.Write(slog.LevelDebug, "publish:client_gone", "durable publish: the client went away", "channel", channel)
	return errClientGone
}

// publishRequest is the body of POST /publish.
type publishRequest struct {
	Channel string          `json:"channel"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
}

func (p *publisher) publish(c echo.Context) error {
	if err := p.authorize(c.Request(), "POST /publish"); err != nil {
		return err
	}
	key, err := idempotencyKey(c.Request().Header)
	if err != nil {
		return p.refuse(http.StatusBadRequest, "bad_request", err.Error())
	}
	channel, envelope, err := p.readEvent(c)
	if err != nil {
		return err
	}
	// Without the header no key is made up: the script is sent once
	// (never retried below ssebridge), and a key the client does not know
	// could not make the client's own retry safe, while each one would
	// cost Redis a record for IDEMPOTENCY_WINDOW.
	ctx, cancel := context.WithTimeout(c.Request().Context(), p.o.PublishTimeout)
	defer cancel()
	id, replayed, err := p.o.History.PublishOnce(ctx, channel, envelope, key)
	if err != nil && c.Request().Context().Err() != nil {
		// The client left (its context, not Redis, ended the call): no
		// outage to warn of, and nobody to answer.
		return p.gone(channel)
	}
	if errors.Is(err, store.ErrIdempotencyKeyReused) {
		return p.refuse(http.StatusUnprocessableEntity, "idempotency_key_reused",
			"Idempotency-Key: this key was used within IDEMPOTENCY_WINDOW for another channel or event: a key names one event; nothing was published")
	}
	if err != nil {
		// Maybe published: the script may have run, or may still run when
		// a stalled link delivers it (docs/protocol.md). Not logged with
		// the key: it is the client's, and logs stay clean.
		msg, cause := redisTrouble(err, p.o.PublishTimeout)
		p.log.Write(slog.LevelWarn, "publish:redis:"+cause, "durable publish failed: "+msg, "channel", channel, "cause", cause, "err", err)
		c.Response().Header().Set("Retry-After", "1")
		msg += ": the event may have been published; retry with the same Idempotency-Key to publish it at most once"
		if !id.IsZero() {
			// Published, not known to be on enough replicas (DURABLE_WAIT_REPLICAS).
			msg = "redis unavailable: the event was published but is not known to be on enough replicas; retry with the same Idempotency-Key to wait again"
		}
		return p.refuse(http.StatusServiceUnavailable, "redis", msg)
	}
	if replayed {
		c.Response().Header().Set("Idempotent-Replayed", "true")
	}
	return c.JSON(http.StatusOK, map[string]string{"id": id.String()})
}

// readEvent reads the body of POST /publish: the channel and the event's
// envelope, or the refusal to answer (its error), saying what was wrong.
func (p *publisher) readEvent(c echo.Context) (channel string, envelope []byte, err error) {
	// The body holds the envelope and a channel name: allow a little over
	// the event limit, and refuse the envelope itself by its own size below.
	limit := int64(p.o.MaxEventBytes) + 1024
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, limit+1))
	if err != nil && c.Request().Context().Err() != nil {
		return "", nil, p.gone("")
	}
	if err != nil {
		return "", nil, p.refuse(http.StatusBadRequest, "bad_request", "reading the body: "+err.Error())
	}
	if int64(len(body)) > limit {
		return "", nil, p.refuse(http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body over %d bytes", limit))
	}
	var req publishRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return "", nil, p.refuse(http.StatusBadRequest, "bad_request", `body: want {"channel":..., "event":..., "data":...}: `+err.Error())
	}
	// One object, nothing after it but white space: a second object or
	// stray bytes are a client's mistake, never silently dropped.
	if _, err := dec.Token(); err != io.EOF {
		return "", nil, p.refuse(http.StatusBadRequest, "bad_request",
			fmt.Sprintf("body: unexpected data after the JSON object, at byte %d", dec.InputOffset()))
	}
	// Keys are matched exactly, as in sessions and control messages:
	// encoding/json matched "Channel" or "DATA" too, and the last match
	// won, so a body could publish where its sender's own reading of it
	// did not (a backend that merges a user's JSON into what it sends).
	if err := exactKeys(body, "channel", "event", "data"); err != nil {
		return "", nil, p.refuse(http.StatusBadRequest, "bad_request", `body: want {"channel":..., "event":..., "data":...}: `+err.Error())
	}
	if err := wire.CheckChannel(req.Channel); err != nil {
		return "", nil, p.refuse(http.StatusBadRequest, "bad_request", err.Error())
	}
	if req.Data == nil {
		return "", nil, p.refuse(http.StatusBadRequest, "bad_request", `"data" is missing`)
	}
	envelope, err = encodeEnvelope(req.Event, req.Data)
	if err != nil {
		return "", nil, p.refuse(http.StatusBadRequest, "bad_request", `"data": `+err.Error())
	}
	if len(envelope) > p.o.MaxEventBytes {
		return "", nil, p.refuse(http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("event is %d bytes, over MAX_EVENT_BYTES (%d)", len(envelope), p.o.MaxEventBytes))
	}
	if _, err := wire.ParseEnvelope(envelope); err != nil {
		return "", nil, p.refuse(http.StatusBadRequest, "bad_request", err.Error())
	}
	return req.Channel, envelope, nil
}

// maxIdempotencyKey is the longest Idempotency-Key, unquoted.
const maxIdempotencyKey = 255

// idempotencyKey reads the Idempotency-Key header: a bare token, or an
// sf-string ("...", with \" and \\ escapes) as the IETF draft has it;
// unquoted, 1-255 visible ASCII characters. "" when absent.
func idempotencyKey(h http.Header) (string, error) {
	values := h.Values("Idempotency-Key")
	switch {
	case len(values) == 0:
		return "", nil
	case len(values) > 1:
		return "", errors.New("Idempotency-Key: sent more than once")
	}
	v := values[0]
	if strings.HasPrefix(v, `"`) {
		var b strings.Builder
		closed := false
		for i := 1; i < len(v); i++ {
			ch := v[i]
			switch {
			case closed:
				return "", errors.New(`Idempotency-Key: nothing may follow the closing '"'`)
			case ch == '\\':
				i++
				if i == len(v) || (v[i] != '"' && v[i] != '\\') {
					return "", errors.New(`Idempotency-Key: in a quoted key, '\' escapes only '"' and '\'`)
				}
				b.WriteByte(v[i])
			case ch == '"':
				closed = true
			default:
				b.WriteByte(ch)
			}
		}
		if !closed {
			return "", errors.New(`Idempotency-Key: a quoted key needs its closing '"'`)
		}
		v = b.String()
	}
	if len(v) < 1 || len(v) > maxIdempotencyKey {
		return "", fmt.Errorf("Idempotency-Key: want 1-%d characters, got %d", maxIdempotencyKey, len(v))
	}
	for i := range len(v) {
		if v[i] < 0x21 || v[i] > 0x7e {
			return "", fmt.Errorf("Idempotency-Key: want visible ASCII characters only (no space), got byte 0x%02x at %d", v[i], i)
		}
	}
	return v, nil
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
