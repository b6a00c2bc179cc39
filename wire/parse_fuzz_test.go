package wire_test

// Fuzz tests of wire's parsers of untrusted bytes: durable framing,
// sessions, cursors, ?rooms= lists and control messages. Each checks what
// an accepted value guarantees to the rest of the service, with checks of
// its own (validName, cursorShape) rather than wire's.

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ssebridge/ssebridge/wire"
)

// validName is SPEC.md's rule for user ids and room names: 1–128
// characters of letters, digits and _ - . : @.
func validName(s string) bool {
	if len(s) < 1 || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("_-.:@", r)) {
			return false
		}
	}
	return true
}

// isJSONObject reports whether raw is one JSON object, white space aside.
func isJSONObject(raw []byte) bool {
	return json.Valid(raw) && bytes.HasPrefix(bytes.TrimLeft(raw, " \t\r\n"), []byte("{"))
}

// validCursor reports whether c is a cursor ssebridge can hold: one that
// survives String and ParseCursor.
func validCursor(c wire.Cursor) bool {
	back, err := wire.ParseCursor(c.String())
	return err == nil && back == c
}

// checkNotDurable: a payload that does not start with NUL, marker, space
// never comes out of ParseMessage with a cursor; one that does not start
// with NUL at all is a live message, whole.
func checkNotDurable(t *testing.T, payload []byte, marker string) {
	t.Helper()
	m, err := wire.ParseMessage(payload, marker)
	prefix := "\x00" + marker + " "
	if len(payload) == 0 || payload[0] != 0 {
		if err != nil || m.Durable() || !bytes.Equal(m.Body, payload) {
			t.Fatalf("live payload %q (marker %q): got %+v, %v; want it whole", payload, marker, m, err)
		}
		return
	}
	if marker == "" || !bytes.HasPrefix(payload, []byte(prefix)) {
		if !errors.Is(err, wire.ErrForged) || m.Durable() {
			t.Fatalf("payload %q without marker %q: got %+v, %v; want ErrForged", payload, marker, m, err)
		}
		return
	}
	// With the marker: durable if the rest is a cursor line and an envelope.
	head, body, found := bytes.Cut(payload[len(prefix):], []byte{'\n'})
	if err != nil {
		if m.Durable() {
			t.Fatalf("refused %q but with a cursor: %+v", payload, m)
		}
		return
	}
	c, cerr := wire.ParseCursor(string(head))
	if !found || cerr != nil || m.Cursor != c || !m.Durable() || !bytes.Equal(m.Body, body) {
		t.Fatalf("durable payload %q (marker %q): got %+v; want cursor %q and body %q", payload, marker, m, head, body)
	}
}

// FuzzParseMessage: a payload not framed with NUL, the marker and a space
// never comes out with a cursor; DurableFrame round-trips.
func FuzzParseMessage(f *testing.F) {
	const marker = "9f86d081884c7d659a2feaa0c55ad015"
	f.Add(marker, []byte("hello"), "e", uint64(1), uint64(2), []byte(`{"data":1}`))
	f.Add(marker, []byte("\x00"+marker+" e:1-2\n{\"data\":1}"), "e", uint64(1), uint64(2), []byte(""))
	f.Add(marker, []byte("\x00"+marker+" e:1-2"), "e", uint64(0), uint64(0), []byte("\n"))
	f.Add(marker, []byte("\x00"+marker+"e:1-2\n"), "Z", ^uint64(0), ^uint64(0), []byte("\x00"))
	f.Add(marker, []byte("\x00 e:1-2\nx"), "abc", uint64(1), uint64(2), []byte("x"))
	f.Add("", []byte("\x00 e:1-2\nx"), "abc", uint64(1), uint64(2), []byte("x"))
	f.Add("m", []byte("\x00m e:01-002\n\x00m e:3-4\n"), "e", uint64(1), uint64(2), []byte("\x00m e:9-9\n"))
	f.Add("a b", []byte("\x00a b e:1-2\nx"), "e", uint64(1), uint64(2), []byte("x"))
	f.Add("a\n", []byte("\x00a\n e:1-2\nx"), "e", uint64(1), uint64(2), []byte("x"))
	f.Add(marker, []byte{}, "e", uint64(1), uint64(2), []byte{})
	f.Add(marker, []byte{0}, "e", uint64(1), uint64(2), []byte{})
	f.Fuzz(func(t *testing.T, marker string, payload []byte, epoch string, ms, n uint64, body []byte) {
		checkNotDurable(t, payload, marker)
		c := wire.Cursor{Epoch: epoch, MS: ms, N: n}
		if marker == "" || !validCursor(c) {
			return
		}
		frame := wire.DurableFrame(marker, c, body)
		m, err := wire.ParseMessage(frame, marker)
		if err != nil || m.Cursor != c || !bytes.Equal(m.Body, body) {
			t.Fatalf("DurableFrame(%q, %v, %q) = %q parses as %+v, %v", marker, c, body, frame, m, err)
		}
		// Under another deployment's marker, the same frame is forged.
		checkNotDurable(t, frame, marker+"x")
		checkNotDurable(t, frame, "x"+marker)
	})
}

// FuzzParseSession: an accepted session has a valid user and valid rooms,
// came from a JSON object, and survives a re-marshal unchanged.
func FuzzParseSession(f *testing.F) {
	for _, s := range []string{
		`{"user":"diegoug"}`,
		`{"user":"alice","rooms":["lobby","team-7"],"extra":{"x":1}}`,
		`{"user":42}`, `{"user":-0}`, `{"user":-9223372036854775808}`, `{"user":9223372036854775808}`,
		`{"user":1e2}`, `{"user":1.0}`, `{"user":""}`, `{"user":null}`, `{"user":true}`,
		`{"user":"a","rooms":null}`, `{"user":"a","rooms":[]}`, `{"user":"a","rooms":["x","x"]}`,
		`{"user":"a","rooms":["ok","not ok"]}`, `{"user":"a","rooms":[null]}`, `{"user":"a","rooms":"lobby"}`,
		`{"user":"a","user":"b"}`, `{"USER":"a"}`, `{"user":"a\u0000"}`, `{"user":"é"}`,
		`{"user":"a"} trailing`, `["user","a"]`, `null`, ``, `not json`,
		`{"user":"` + strings.Repeat("u", 128) + `"}`, `{"user":"` + strings.Repeat("u", 129) + `"}`,
		`{"user":"a","x":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
		`{"user":"alice","uſer":"bob"}`, `{"user":"a","rooms":["l"],"ROOMS":["secret"]}`,
		`{"user":"a","rooms":["l"],"granted":{"l":"e1:17-0"}}`, `{"user":"a","rooms":["l"],"granted":{"l":"e1:17"}}`,
		`{"user":"a","granted":{"l":""}}`, `{"user":"a","granted":{"l":"x"}}`, `{"user":"a","granted":{"l":1}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		s, err := wire.ParseSession(raw)
		if err != nil {
			if !errors.Is(err, wire.ErrBadSession) {
				t.Fatalf("%q: error %v is not ErrBadSession", raw, err)
			}
			return
		}
		if !isJSONObject(raw) {
			t.Fatalf("%q is not a JSON object, yet accepted as %+v", raw, s)
		}
		if !validName(s.User) {
			t.Fatalf("%q: accepted user %q", raw, s.User)
		}
		// What the backend reads: the keys exactly as written.
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil || obj["user"] == nil {
			t.Fatalf("%q: accepted as %+v with no \"user\" key", raw, s)
		}
		var rooms []string
		_ = json.Unmarshal(obj["rooms"], &rooms)
		if !slices.Equal(rooms, s.Rooms) {
			t.Fatalf("%q: rooms %q, but the \"rooms\" key holds %q", raw, s.Rooms, rooms)
		}
		for room, g := range s.Granted {
			if wire.CheckGrant(g) != nil {
				t.Fatalf("%q: accepted grant %q for %q", raw, g, room)
			}
		}
		for _, r := range s.Rooms {
			if !validName(r) {
				t.Fatalf("%q: accepted room %q", raw, r)
			}
		}
		again, err := json.Marshal(map[string]any{"user": s.User, "rooms": s.Rooms})
		if err != nil {
			t.Fatal(err)
		}
		s2, err := wire.ParseSession(again)
		if err != nil || s2.User != s.User || !slices.Equal(s2.Rooms, s.Rooms) {
			t.Fatalf("%q: %+v re-marshalled as %s parses as %+v, %v", raw, s, again, s2, err)
		}
	})
}

// cursorShape is the cursor syntax: an epoch of 1–32 letters and digits,
// then ":<ms>-<n>" in decimal.
var cursorShape = regexp.MustCompile(`^([A-Za-z0-9]{1,32}):([0-9]+)-([0-9]+)$`)

// liveIDShape is what a live event's id may be (docs/protocol.md).
var liveIDShape = regexp.MustCompile(`^[A-Za-z0-9_~+/=@-]{1,128}$`)

// fitsExact reports whether digits are at most 2^53, the largest integer
// the scripts' Lua numbers hold exactly.
func fitsExact(digits string) bool {
	digits = strings.TrimLeft(digits, "0")
	const max = "9007199254740992"
	return len(digits) < len(max) || len(digits) == len(max) && digits <= max
}

// later compares cursors of one epoch by their numbers, independently of Before.
func later(c, d wire.Cursor) int {
	switch {
	case c.MS != d.MS:
		if c.MS < d.MS {
			return -1
		}
		return 1
	case c.N != d.N:
		if c.N < d.N {
			return -1
		}
		return 1
	}
	return 0
}

// FuzzParseCursor: exactly the strings of cursor syntax are accepted; an
// accepted cursor round-trips through String; Before is a strict total
// order on the cursors of one epoch, and Max picks the later one.
func FuzzParseCursor(f *testing.F) {
	for _, p := range [][2]string{
		{"19a2b3c4d5e6f:1700000000000-0", "19a2b3c4d5e6f:1700000000000-1"},
		{"e:1-2", "e:1-2"}, {"e:01-002", "e:1-2"}, {"e:2-0", "e:1-99"},
		{"e:18446744073709551615-18446744073709551615", "e:18446744073709551616-0"},
		{"e:9007199254740992-9007199254740992", "e:9007199254740993-0"},
		{"a:1-2", "b:1-2"}, {":1-2", "e:-1-2"}, {"e:+1-2", "e:1-+2"}, {"e:1_0-2", "e:0x1-2"},
		{"e:1-2-3", "e:1:2-3"}, {"é:1-2", "e :1-2"}, {"e:1-2\n", "e:1-2\x00"},
		{strings.Repeat("a", 32) + ":1-2", strings.Repeat("a", 33) + ":1-2"}, {"", "e:"},
	} {
		f.Add(p[0], p[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		c, err := wire.ParseCursor(a)
		m := cursorShape.FindStringSubmatch(a)
		wantOK := m != nil && fitsExact(m[2]) && fitsExact(m[3])
		if err != nil {
			if wantOK || !errors.Is(err, wire.ErrBadCursor) || !c.IsZero() {
				t.Fatalf("%q: refused (%v, %+v); cursor syntax: %v", a, err, c, wantOK)
			}
			return
		}
		if !wantOK {
			t.Fatalf("%q accepted as %+v, but it is not of cursor syntax", a, c)
		}
		if c.IsZero() {
			t.Fatalf("%q accepted as the zero cursor", a)
		}
		if back, err := wire.ParseCursor(c.String()); err != nil || back != c {
			t.Fatalf("%q: %+v → %q → %+v, %v", a, c, c.String(), back, err)
		}
		if back, err := wire.ParseEntryID(c.Epoch, c.EntryID()); err != nil || back != c {
			t.Fatalf("%q: entry id %q reads as %+v, %v", a, c.EntryID(), back, err)
		}
		if c.Before(c) {
			t.Fatalf("%q comes before itself", a)
		}
		if c.Max(wire.Cursor{}) != c || (wire.Cursor{}).Max(c) != c {
			t.Fatalf("%q: Max with the zero cursor is not the cursor", a)
		}
		d, err := wire.ParseCursor(b)
		if err != nil {
			return
		}
		if c.Epoch != d.Epoch {
			// Documented: another epoch's cursor counts as before.
			if !c.Before(d) || !d.Before(c) {
				t.Fatalf("%q, %q: cursors of two epochs must each count as before the other", a, b)
			}
			return
		}
		cmp := later(c, d)
		if c.Before(d) != (cmp < 0) || d.Before(c) != (cmp > 0) {
			t.Fatalf("%q, %q: Before %v/%v, want order %d", a, b, c.Before(d), d.Before(c), cmp)
		}
		if c.Before(d) && d.Before(c) {
			t.Fatalf("%q, %q: each before the other", a, b)
		}
		want := c
		if cmp < 0 {
			want = d
		}
		if c.Max(d) != want || d.Max(c) != want {
			t.Fatalf("%q, %q: Max %+v/%+v, want %+v", a, b, c.Max(d), d.Max(c), want)
		}
	})
}

// FuzzParseRooms: an accepted ?rooms= list is the input's names, in order,
// each valid, duplicates dropped, at most max of them; a list is refused
// only for an invalid name or too many names.
func FuzzParseRooms(f *testing.F) {
	for _, s := range []string{
		"lobby", "lobby,team-7", "a,a,a", "a,,b", "", ",", "a,", " a", "a b", "é",
		"a\nb", "a\x00", "room:x,@,.,-,_", strings.Repeat("x", 128), strings.Repeat("x", 129),
		strings.Repeat("a,b,", 100), strings.TrimSuffix(strings.Repeat("r,", 257), ","),
	} {
		f.Add(s, 256)
		f.Add(s, 1)
	}
	f.Add("a,b,c", 2)
	f.Add("a,b,a,b", 2)
	f.Add("a", 0)
	f.Add("a", -1)
	f.Fuzz(func(t *testing.T, list string, max int) {
		max = 1 + int(uint(max)%300) // MAX_ROOMS: greater than zero, checked at start
		rooms, err := wire.ParseRooms(list, max)

		var want []string
		allValid := true
		for _, r := range strings.Split(list, ",") {
			allValid = allValid && validName(r)
			if !slices.Contains(want, r) {
				want = append(want, r)
			}
		}
		if !allValid || len(want) > max {
			if err == nil {
				t.Fatalf("%q (max %d) accepted as %q; all valid %v, %d names", list, max, rooms, allValid, len(want))
			}
			return
		}
		if err != nil {
			t.Fatalf("%q (max %d) refused: %v", list, max, err)
		}
		if !slices.Equal(rooms, want) {
			t.Fatalf("%q (max %d): %q, want %q", list, max, rooms, want)
		}
	})
}

// FuzzParseControl: an accepted control message has a valid user, a known
// op, a valid room when it joins or leaves one, and re-marshals unchanged.
func FuzzParseControl(f *testing.F) {
	for _, s := range []string{
		`{"op":"join","user":"alice","room":"team-7"}`, `{"op":"leave","user":"alice","room":"team-7"}`,
		`{"op":"logout","user":"alice"}`, `{"op":"logout","user":"alice","room":"not a room"}`,
		`{"op":"join","user":"alice"}`, `{"op":"join","user":"alice","room":""}`, `{"op":"JOIN","user":"a","room":"r"}`,
		`{"op":"kick","user":"a"}`, `{"op":"logout","user":""}`, `{"op":"logout","user":42}`, `{"op":"logout"}`,
		`{"OP":"logout","USER":"a"}`, `{"op":"join","op":"logout","user":"a"}`, `{"op":"logout","user":"a\nb"}`,
		`null`, `[]`, ``, `{"op":"logout","user":"a"} x`, `{"op":"join","user":"a","room":"` + strings.Repeat("r", 129) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := wire.ParseControl(raw)
		if err != nil {
			if !errors.Is(err, wire.ErrBadControl) {
				t.Fatalf("%q: error %v is not ErrBadControl", raw, err)
			}
			return
		}
		if !isJSONObject(raw) {
			t.Fatalf("%q is not a JSON object, yet accepted as %+v", raw, c)
		}
		if !validName(c.User) {
			t.Fatalf("%q: accepted user %q", raw, c.User)
		}
		switch c.Op {
		case "join", "leave":
			if !validName(c.Room) {
				t.Fatalf("%q: accepted %s of room %q", raw, c.Op, c.Room)
			}
		case "logout":
		default:
			t.Fatalf("%q: accepted op %q", raw, c.Op)
		}
		again, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if c2, err := wire.ParseControl(again); err != nil || c2 != c {
			t.Fatalf("%q: %+v re-marshalled as %s parses as %+v, %v", raw, c, again, c2, err)
		}
	})
}
