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
