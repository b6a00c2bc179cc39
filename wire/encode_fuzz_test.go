package wire_test

// Fuzz tests of the SSE encoding. The frames wire writes are read back by an
// SSE parser of this file's own, written from the WHATWG HTML standard's
// "event stream interpretation" rules (§9.2.6) and sharing no code with
// wire; what a frame must carry is derived from the payload here too, with
// encoding/json, as the spec (SPEC.md, "Events") states it.

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/ssebridge/ssebridge/wire"
)

// sseEvent is one event as EventSource would fire it.
type sseEvent struct {
	Type, Data, LastEventID string
}

// sseResult is what a browser's parser makes of a byte stream.
type sseResult struct {
	Events []sseEvent
	// LastEventID is the event source's last event ID string at the end:
	// what the browser would send as Last-Event-ID on a reconnect.
	LastEventID string
	Retry       int64 // the last valid retry: value, -1 when none
	// Pending reports bytes the parser still holds at the end: a line
	// without its line end, a CR that an LF of the next write could join,
	// or fields not yet dispatched by a blank line. Any of them would merge
	// into whatever the stream writes next.
	Pending bool
}

// parseSSE interprets stream as the WHATWG rules say, starting from a
// source whose last event ID string is lastEventID.
func parseSSE(stream []byte, lastEventID string) sseResult {
	res := sseResult{LastEventID: lastEventID, Retry: -1}
	var (
		data, eventType []byte
		idBuffer        = lastEventID
		fields          bool // a field was processed since the last dispatch
	)
	dispatch := func() {
		// 1. The last event ID string takes the buffer's value.
		res.LastEventID = idBuffer
		fields = false
		// 2. No data: nothing is fired, the buffers are reset.
		if len(data) == 0 {
			data, eventType = nil, nil
			return
		}
		// 3. One trailing LF is removed.
		d := data
		if d[len(d)-1] == '\n' {
			d = d[:len(d)-1]
		}
		typ := string(eventType)
		if typ == "" {
			typ = "message"
		}
		res.Events = append(res.Events, sseEvent{Type: typ, Data: string(d), LastEventID: idBuffer})
		data, eventType = nil, nil
	}
	for len(stream) > 0 {
		// end-of-line = ( cr lf / cr / lf )
		end := bytes.IndexAny(stream, "\r\n")
		if end < 0 {
			res.Pending = true // a line still being received
			break
		}
		line := stream[:end]
		next := end + 1
		if stream[end] == '\r' {
			if end+1 == len(stream) {
				res.Pending = true // an LF written next would belong to this line end
			} else if stream[end+1] == '\n' {
				next++
			}
		}
		stream = stream[next:]

		if len(line) == 0 {
			dispatch()
			continue
		}
		if line[0] == ':' {
			continue // comment
		}
		var field, value []byte
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		} else {
			field = line
		}
		switch string(field) {
		case "event":
			eventType = append([]byte(nil), value...)
			fields = true
		case "data":
			data = append(data, value...)
			data = append(data, '\n')
			fields = true
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				idBuffer = string(value)
			}
			fields = true
		case "retry":
			if n, err := strconv.ParseInt(string(value), 10, 64); err == nil && len(value) > 0 && strings.Trim(string(value), "0123456789") == "" {
				res.Retry = n
			}
		default:
			// ignored
		}
	}
	if fields {
		res.Pending = true
	}
	return res
}

func TestParseSSE(t *testing.T) {
	r := parseSSE([]byte("data: a\r\ndata:b\rid: 7\n\n: c\n\nevent: x\ndata\n\nid: 8\n\nid: 9\x00\n\nretry: 12\n\n"), "0")
	want := []sseEvent{{"message", "a\nb", "7"}, {"x", "", "7"}}
	if len(r.Events) != len(want) || r.Events[0] != want[0] || r.Events[1] != want[1] || r.LastEventID != "8" || r.Retry != 12 || r.Pending {
		t.Fatalf("got %+v", r)
	}
	if r := parseSSE([]byte("data: a\n"), ""); !r.Pending || len(r.Events) != 0 {
		t.Fatalf("undispatched data: %+v", r)
	}
	if r := parseSSE([]byte("data: a\n\r"), ""); !r.Pending || len(r.Events) != 1 {
		t.Fatalf("trailing CR: %+v", r)
	}
}

// wantEvent is what the spec says a published payload becomes.
type wantEvent struct {
	Event, Data, ID string // ID "" when the frame must carry no id:
}

func isJSONSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\r' || b == '\n' }

// lines normalises line ends as the browser will see them: CR LF and CR
// each become LF.
func lines(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n")
}

// expectEvent reads payload as SPEC.md describes envelopes: a JSON object
// with a "data" key is an envelope; anything else is sent whole as the data
// of a "message" event. The error is the refusal the spec demands, as the
// wire error that names it. A durable envelope's id is not sent (its cursor
// is), so only its type is judged.
func expectEvent(payload []byte, durable bool) (wantEvent, error) {
	whole := wantEvent{Event: "message", Data: lines(string(payload))}
	i := 0
	for i < len(payload) && isJSONSpace(payload[i]) {
		i++
	}
	if i == len(payload) || payload[i] != '{' || !json.Valid(payload) {
		return whole, nil
	}
	var obj map[string]json.RawMessage // keys as written, exactly
	if err := json.Unmarshal(payload, &obj); err != nil {
		panic("valid JSON object does not decode: " + err.Error())
	}
	data, ok := obj["data"]
	if !ok {
		return whole, nil
	}
	w := wantEvent{Event: "message"}
	if ev, ok := obj["event"]; ok && string(ev) != "null" {
		if ev[0] != '"' {
			return wantEvent{}, wire.ErrBadEnvelope
		}
		if err := json.Unmarshal(ev, &w.Event); err != nil {
			panic(err)
		}
		if w.Event == "" {
			w.Event = "message"
		}
	}
	if id, ok := obj["id"]; ok && string(id) != "null" {
		if id[0] == '"' {
			if err := json.Unmarshal(id, &w.ID); err != nil {
				panic(err)
			}
		} else {
			n, err := strconv.ParseInt(string(id), 10, 64)
			if err != nil {
				return wantEvent{}, wire.ErrBadEnvelope
			}
			w.ID = strconv.FormatInt(n, 10)
		}
	}
	if durable {
		w.ID = ""
	}
	if strings.ContainsAny(w.Event, "\r\n") || strings.ContainsAny(w.ID, "\r\n\x00") {
		return wantEvent{}, wire.ErrBadField
	}
	// ssebridge's own event names and EventSource's (error, open), and
	// ids of its event id's shape, are not for publishers.
	if w.Event == "ready" || w.Event == "reset" || w.Event == "logout" || w.Event == "error" || w.Event == "open" {
		return wantEvent{}, wire.ErrBadField
	}
	// A live id is 1-128 of [A-Za-z0-9] and -_~+/=@: never a cursor,
	// however it is trimmed on its way back.
	if w.ID != "" && !liveIDShape.MatchString(w.ID) {
		return wantEvent{}, wire.ErrBadField
	}
	if data[0] == '"' {
		if err := json.Unmarshal(data, &w.Data); err != nil {
			panic(err)
		}
	} else {
		var b bytes.Buffer
		if err := json.Compact(&b, data); err != nil {
			panic(err)
		}
		w.Data = b.String()
	}
	w.Data = lines(w.Data)
	return w, nil
}

// checkFrame asserts that frame, written on a stream whose last event id
// was "before", fires exactly want and leaves nothing pending; want.ID ""
// means the frame must not touch the last event id.
func checkFrame(t *testing.T, payload, frame []byte, want wantEvent) {
	t.Helper()
	const before = "before"
	r := parseSSE(frame, before)
	if r.Pending {
		t.Fatalf("frame leaves bytes pending, which would merge into the next event\npayload %q\nframe %q", payload, frame)
	}
	if len(r.Events) != 1 {
		t.Fatalf("frame fires %d events, want 1\npayload %q\nframe %q\nevents %q", len(r.Events), payload, frame, r.Events)
	}
	wantID := want.ID
	if wantID == "" {
		wantID = before
	}
	got := r.Events[0]
	if got.Type != want.Event || got.Data != want.Data || r.LastEventID != wantID || r.Retry != -1 {
		t.Fatalf("frame fires %+v (last id %q, retry %d)\nwant %+v (last id %q)\npayload %q\nframe %q",
			got, r.LastEventID, r.Retry, want, wantID, payload, frame)
	}
}

const fuzzMaxBytes = 4096

var envelopeSeeds = []string{
	``,
	`plain`,
	"a\r\nb\rc\nd\r",
	"\r",
	"\n\n",
	`{"event":"chat","data":{"from":"bob","text":"hi"}}`,
	`{"event":"a","data":"b\nc"}`,
	`{"id":"1","data":{}}`,
	`{"id":42,"data":"x"}`,
	`{"id":-0,"data":"x"}`,
	`{"id":1e3,"data":"x"}`,
	`{"id":99999999999999999999,"data":"x"}`,
	`{"id":"","data":"x"}`,
	`{"id":"a\u0000b","data":"x"}`,
	`{"id":"a\rb","data":"x"}`,
	`{"event":"a\r\nid: 666","data":"x"}`,
	`{"event":"","data":null}`,
	`{"event":null,"id":null,"data":""}`,
	`{"event":5,"data":1}`,
	`{"data":"x\r\n\r\nevent: evil\r\ndata: y"}`,
	`{"data":"\u2028\u0085é\u0000"}`,
	`{"data":1,"data":2}`,
	`{"Data":1}`,
	`{"DATA":"x","event":"e"}`,
	`{"Event":"logout","Data":"x"}`,
	"\v{\"data\":1}",
	"\u00a0{\"data\":1}",
	"\u0085{\"event\":\"e\",\"data\":1}",
	` {"data" : [ 1 , { "a" : "<b>" } ] } `,
	`{"data":1} trailing`,
	`{"data":"` + strings.Repeat("[", 200) + `"}`,
	`{"data":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
	"\xff\xfe{\"data\":1}",
	"{\"data\":\"\xff\"}",
	"{\"event\":\"\xff\",\"data\":1}",
	`{"data":"` + strings.Repeat("x", fuzzMaxBytes) + `"}`,
}

// FuzzEncodeMessage: any live payload that EncodeMessage accepts becomes one
// SSE event carrying exactly the payload's event name, data and id, and
// nothing that could leak into the next event; it refuses exactly what the
// spec refuses.
func FuzzEncodeMessage(f *testing.F) {
	for _, s := range envelopeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		frame, err := wire.EncodeMessage(payload, fuzzMaxBytes)
		if len(payload) > fuzzMaxBytes {
			if !errors.Is(err, wire.ErrTooLarge) {
				t.Fatalf("%d bytes over the limit: got %v, want ErrTooLarge", len(payload), err)
			}
			return
		}
		want, wantErr := expectEvent(payload, false)
		if wantErr != nil {
			if !errors.Is(err, wantErr) {
				t.Fatalf("payload %q: got frame %q, error %v; want %v", payload, frame, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("payload %q refused: %v; want %+v", payload, err, want)
		}
		checkFrame(t, payload, frame, want)
	})
}

// FuzzEncodeDurable: a durable event is one SSE event whose id is its
// cursor, whatever the envelope says; an empty envelope (a mark) fires no
// event but moves the last event id on to the cursor.
func FuzzEncodeDurable(f *testing.F) {
	for i, s := range envelopeSeeds {
		f.Add("19a2b3c4d5e6f", uint64(1700000000000+i), uint64(i), []byte(s))
	}
	f.Add("e", uint64(0), uint64(0), []byte{})
	f.Add("Z9", ^uint64(0), ^uint64(0), []byte{})
	f.Add(strings.Repeat("a", 32), uint64(1), uint64(2), []byte(`{"id":"x","data":1}`))
	f.Fuzz(func(t *testing.T, epoch string, ms, n uint64, envelope []byte) {
		c := wire.Cursor{Epoch: epoch, MS: ms, N: n}
		if back, err := wire.ParseCursor(c.String()); err != nil || back != c {
			return // not a cursor ssebridge could hold
		}
		frame, err := wire.EncodeDurable(c, envelope, fuzzMaxBytes)
		if len(envelope) == 0 {
			if err != nil {
				t.Fatalf("mark refused: %v", err)
			}
			r := parseSSE(frame, "before")
			if len(r.Events) != 0 || r.Pending || r.LastEventID != c.String() {
				t.Fatalf("mark %q: events %q, pending %v, last id %q; want no event and last id %q",
					frame, r.Events, r.Pending, r.LastEventID, c.String())
			}
			return
		}
		if len(envelope) > fuzzMaxBytes {
			if !errors.Is(err, wire.ErrTooLarge) {
				t.Fatalf("%d bytes over the limit: got %v, want ErrTooLarge", len(envelope), err)
			}
			return
		}
		want, wantErr := expectEvent(envelope, true)
		if wantErr != nil {
			if !errors.Is(err, wantErr) {
				t.Fatalf("envelope %q: got frame %q, error %v; want %v", envelope, frame, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("envelope %q refused: %v; want %+v", envelope, err, want)
		}
		want.ID = c.String()
		checkFrame(t, envelope, frame, want)
	})
}
