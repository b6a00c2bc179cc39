package wire

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSession(t *testing.T) {
	tests := []struct {
		raw   string
		user  string
		rooms int
		bad   bool
	}{
		{`{"user":"diegoug"}`, "diegoug", 0, false},
		{`{"user":"alice","rooms":["lobby","team-7"],"extra":{"x":1}}`, "alice", 2, false},
		{`{"user":42}`, "42", 0, false},
		// A JSON integer must fit int64 (ssebridge_django applies the same
		// rule: clients/django/tests/test_sessions.py); a string of digits
		// is a name like any other.
		{`{"user":-5}`, "-5", 0, false},
		{`{"user":9223372036854775807}`, "9223372036854775807", 0, false},
		{`{"user":-9223372036854775808}`, "-9223372036854775808", 0, false},
		{`{"user":9223372036854775808}`, "", 0, true},
		{`{"user":-9223372036854775809}`, "", 0, true},
		{`{"user":18446744073709551616}`, "", 0, true},
		{`{"user":1e3}`, "", 0, true},
		{`{"user":"9223372036854775808"}`, "9223372036854775808", 0, false},
		{`{"user":"a@b.c:d_e-f"}`, "a@b.c:d_e-f", 0, false},
		{`{"user":""}`, "", 0, true},
		{`{"user":null}`, "", 0, true},
		{`{"user":1.5}`, "", 0, true},
		{`{"user":true}`, "", 0, true},
		{`{"user":"has space"}`, "", 0, true},
		{`{"user":"` + strings.Repeat("u", 129) + `"}`, "", 0, true},
		{`{"user":"a","rooms":"lobby"}`, "", 0, true},
		{`{"user":"a","rooms":["ok","not ok"]}`, "", 0, true},
		{`{"user":"a"} trailing`, "", 0, true},
		{`["user","a"]`, "", 0, true},
		{`not json`, "", 0, true},
		// Keys are matched exactly: encoding/json would fold case (Unicode
		// too: "ſ" is "s") and let the last match win, where the backend
		// reads only "user" and "rooms".
		{`{"user":"alice","uſer":"bob"}`, "alice", 0, false},
		{`{"user":"alice","USER":"bob"}`, "alice", 0, false},
		{`{"user":"alice","rooms":["lobby"],"ROOMS":["secret","x"]}`, "alice", 1, false},
		{`{"User":"bob"}`, "", 0, true},
	}
	for _, tt := range tests {
		s, err := ParseSession([]byte(tt.raw))
		if tt.bad {
			if !errors.Is(err, ErrBadSession) {
				t.Errorf("%s: want ErrBadSession, got %v", tt.raw, err)
			}
			continue
		}
		if err != nil || s.User != tt.user || len(s.Rooms) != tt.rooms {
			t.Errorf("%s: got %+v %v", tt.raw, s, err)
		}
	}
}

func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{
		"alice": true, "team-7": true, "a.b:c@d_e": true, strings.Repeat("x", 128): true,
		"": false, strings.Repeat("x", 129): false, "a b": false, "a/b": false, "é": false, "a\nb": false, "a,b": false,
	} {
		if got := CheckName(name) == nil; got != ok {
			t.Errorf("CheckName(%q) ok=%v, want %v", name, got, ok)
		}
	}
}

func TestCheckGrant(t *testing.T) {
	for grant, ok := range map[string]bool{
		"": true, "18c2f0a:1733380000000-0": true, "e1:17": true,
		"e1": false, ":17": false, "e1:": false, "e1:x": false, "e 1:17": false, "e1:17-": false,
		"e1:99999999999999999": false, " e1:17": false, "e1:17 ": false,
	} {
		if got := CheckGrant(grant) == nil; got != ok {
			t.Errorf("CheckGrant(%q) ok=%v, want %v", grant, got, ok)
		}
	}
}

// TestAfterGrant: on one Redis, a replay of a room reads after the later
// of its position and the room's grant, when both are of one epoch.
func TestAfterGrant(t *testing.T) {
	at := func(s string) Cursor {
		c, err := ParseCursor(s)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		after, grant, want string
	}{
		{"e:5-0", "e:9-2", "e:9-2"},   // resuming from before the grant
		{"e:9-3", "e:9-2", "e:9-3"},   // after it: unchanged
		{"e:5-0", "old:9-2", "e:5-0"}, // a grant of an earlier epoch: before all of e's history
		{"e:5-0", "", "e:5-0"},        // no history when granted
		{"e:5-0", "e:9", "e:5-0"},     // a Cluster partition's position: not this mode's
		{"", "e:9-2", "e:9-2"},        // no position yet: from the grant
	}
	for _, tt := range tests {
		var after Cursor
		if tt.after != "" {
			after = at(tt.after)
		}
		if got := AfterGrant(after, "room:r", tt.grant); got.String() != tt.want {
			t.Errorf("AfterGrant(%q, %q) = %q, want %q", tt.after, tt.grant, got, tt.want)
		}
	}
}

// TestSessionID: a session's id is fixed for its token, differs between
// tokens, is 22 base64url characters (a valid name, safe in a lock's name)
// and does not hold the token.
func TestSessionID(t *testing.T) {
	a, b := SessionID("tok-a", "alice"), SessionID("tok-b", "alice")
	if a != SessionID("tok-a", "alice") || a == b {
		t.Fatalf("SessionID: %q, %q", a, b)
	}
	// The session rewritten to another user under the same token is another.
	if c := SessionID("tok-a", "bob"); c == a {
		t.Fatalf("SessionID of tok-a as alice and as bob: both %q", a)
	}
	if len(a) != 22 || strings.Trim(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
		t.Fatalf("SessionID %q: want 22 base64url characters", a)
	}
	long := strings.Repeat("secret", 20)
	if id := SessionID(long, "alice"); strings.Contains(long, id) || strings.Contains(id, "secret") {
		t.Fatalf("SessionID(%q) = %q", long, id)
	}
}
