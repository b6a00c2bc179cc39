package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Reasons a published message is refused. Each is a label of the
// events-dropped metric.
var (
	ErrTooLarge    = errors.New("too_large")
	ErrBadField    = errors.New("bad_field")
	ErrBadEnvelope = errors.New("bad_envelope")
)

// Envelope is what a backend publishes: an event name, its data and an
// optional id.
type Envelope struct {
	Event string
	ID    string
	Data  []byte // the text to send, before it is split into data: lines
}

// ParseEnvelope reads a published payload. A JSON object with a "data" key is
// an envelope; any other payload is sent whole as the data of a "message"
// event, so that nothing a backend publishes is silently lost.
func ParseEnvelope(payload []byte) (Envelope, error) {
	env, err := parseEnvelope(payload)
	if err != nil {
		return Envelope{}, err
	}
	return env, env.check()
}

// parseEnvelope is ParseEnvelope without the check of names and ids.
func parseEnvelope(payload []byte) (Envelope, error) {
	trimmed := bytes.TrimSpace(payload)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Envelope{Event: "message", Data: payload}, nil
	}
	// The payload itself, not trimmed: white space that JSON does not allow
	// around a value (\v, NBSP...) makes it a payload sent whole. A map, not
	// a struct: encoding/json matches struct fields without regard to case,
	// and {"Data":...} is not an envelope.
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(payload, &obj); err != nil || obj["data"] == nil {
		return Envelope{Event: "message", Data: payload}, nil
	}
	raw := struct{ Event, Data, ID json.RawMessage }{obj["event"], obj["data"], obj["id"]}
	env := Envelope{Event: "message"}
	if raw.Event != nil && string(raw.Event) != "null" {
		if err := json.Unmarshal(raw.Event, &env.Event); err != nil {
			return Envelope{}, fmt.Errorf("%w: \"event\" is not a string", ErrBadEnvelope)
		}
		if env.Event == "" {
			env.Event = "message"
		}
	}
	if raw.ID != nil && string(raw.ID) != "null" {
		id, err := idText(raw.ID)
		if err != nil {
			return Envelope{}, err
		}
		env.ID = id
	}
	if raw.Data[0] == '"' {
		var s string
		if err := json.Unmarshal(raw.Data, &s); err != nil {
			return Envelope{}, fmt.Errorf("%w: \"data\": %v", ErrBadEnvelope, err)
		}
		env.Data = []byte(s)
	} else {
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw.Data); err != nil {
			return Envelope{}, fmt.Errorf("%w: \"data\": %v", ErrBadEnvelope, err)
		}
		env.Data = buf.Bytes()
	}
	return env, nil
}

func idText(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	if n, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
		return strconv.FormatInt(n, 10), nil
	}
	return "", fmt.Errorf("%w: \"id\" is neither a string nor an integer", ErrBadEnvelope)
}

// Reserved event names: ssebridge's own events, which pages and
// ssebridge.js act on (ready starts a stream, reset reloads, logout stops
// for good), and EventSource's own, error and open, which it would
// dispatch as a MessageEvent of that name on the EventSource itself: its
// onerror and onopen run, and ssebridge.js took an "error" for a dropped
// stream and showed nothing more. A published event may not pose as one
// of them.
var reserved = map[string]bool{"ready": true, "reset": true, "logout": true, "error": true, "open": true}

// check refuses names and ids that would end their SSE field early and so
// inject a field or a whole event, ssebridge's own event names, and live ids
// outside LiveID's alphabet.
func (e Envelope) check() error {
	if strings.ContainsAny(e.Event, "\r\n") {
		return fmt.Errorf("%w: \"event\" holds CR or LF", ErrBadField)
	}
	if reserved[e.Event] {
		return fmt.Errorf("%w: \"event\" %q is ssebridge's own", ErrBadField, e.Event)
	}
	if e.ID != "" && !LiveID(e.ID) {
		return fmt.Errorf("%w: \"id\" %q: a live event's id is 1-%d characters of letters, digits and - _ ~ + / = @", ErrBadField, truncate(e.ID, 40), MaxLiveIDLen)
	}
	return nil
}

// MaxLiveIDLen is the longest id a live event may carry.
const MaxLiveIDLen = 128

// LiveID reports whether id may be a live event's id. A live event's id
// becomes the browser's Last-Event-ID and comes back on the next resume,
// trimmed by HTTP (RFC 9110) and perhaps by other clients in other ways:
// if it could then read as a cursor, a payload relayed by the backend
// would choose where the stream resumes, and skip durable events. An
// alphabet with no white space and neither of the separators of
// ssebridge's ids (':' of "<epoch>:<ms>-<n>", '.' of cluster ids) makes
// that impossible by construction, whatever shapes ids take later; it
// still holds numbers, UUIDs, ULIDs and base64.
func LiveID(id string) bool {
	if len(id) == 0 || len(id) > MaxLiveIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_~+/=@", c) >= 0) {
			return false
		}
	}
	return true
}

// Frame returns the event as SSE bytes: id: (when set), event:, then one
// data: line per line of data, CR LF, CR and LF all counting as line ends,
// as they do for the browser's parser.
func (e Envelope) Frame() []byte {
	n := len(e.Data) + len(e.Event) + len(e.ID) + 32
	b := make([]byte, 0, n+8*bytes.Count(e.Data, []byte{'\n'}))
	if e.ID != "" {
		b = append(b, "id: "...)
		b = append(b, e.ID...)
		b = append(b, '\n')
	}
	b = append(b, "event: "...)
	b = append(b, e.Event...)
	b = append(b, '\n')
	data := e.Data
	for {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			break
		}
		b = appendData(b, data[:i])
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	b = appendData(b, data)
	return append(b, '\n')
}

func appendData(b, line []byte) []byte {
	b = append(b, "data: "...)
	b = append(b, line...)
	return append(b, '\n')
}

// EncodeMessage turns a published payload into the bytes every stream sends,
// once for all of them. Payloads over maxBytes are refused.
func EncodeMessage(payload []byte, maxBytes int) ([]byte, error) {
	if len(payload) > maxBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrTooLarge, len(payload), maxBytes)
	}
	env, err := ParseEnvelope(payload)
	if err != nil {
		return nil, err
	}
	return env.Frame(), nil
}

// EncodeDurable encodes a durable event; its id: is its cursor, whatever id
// the envelope holds, since that id is what the browser resumes from. An
// empty envelope is a mark: an id: line alone, which moves the browser's
// last event id on without firing any event.
func EncodeDurable(cursor Cursor, envelope []byte, maxBytes int) ([]byte, error) {
	if len(envelope) == 0 {
		return []byte("id: " + cursor.String() + "\n\n"), nil
	}
	if len(envelope) > maxBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrTooLarge, len(envelope), maxBytes)
	}
	env, err := parseEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	// The envelope's own id is not sent, so it is not judged either.
	env.ID = ""
	if err := env.check(); err != nil {
		return nil, err
	}
	env.ID = cursor.String()
	return env.Frame(), nil
}

// Heartbeat is the comment line that keeps idle streams and the proxies
// between them alive; EventSource ignores it.
var Heartbeat = []byte(": ping\n\n")

// RetryFrame tells the browser how long to wait before it reconnects.
func RetryFrame(ms int64) []byte {
	return []byte("retry: " + strconv.FormatInt(ms, 10) + "\n\n")
}
