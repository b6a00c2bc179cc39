package e2e

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/ssetest"
)

func TestControl(t *testing.T) {
	a := startApp(t, nil, map[string]string{"SESSION_RECHECK_INTERVAL": "200ms", "UNSUBSCRIBE_DELAY": "200ms"})

	t.Run("join", func(t *testing.T) {
		s := a.open(a.session("alice"), "")
		a.publish("control", `{"op":"join","user":"alice","room":"team-7"}`)
		// The join is applied asynchronously; once the room is subscribed an
		// event published to it arrives.
		eventually(t, 5*time.Second, "the room to be subscribed in Redis", func() bool {
			return a.rdb.PubSubNumSub(context.Background(), "sse:room:team-7").Val()["sse:room:team-7"] == 1
		})
		a.publish("room:team-7", "welcome")
		want(t, s, "message", "welcome")
	})

	t.Run("leave", func(t *testing.T) {
		tok := a.session("bob", "lobby")
		s := a.open(tok, "")
		// As the backend does: the session loses the room, then the leave
		// is published (a session that still lists it has the recheck
		// join it again). The room is unsubscribed after UNSUBSCRIBE_DELAY.
		setSession(t, a.rdb, a.cfg.SessionPrefix+tok, "bob")
		a.publish("control", `{"op":"leave","user":"bob","room":"lobby"}`)
		eventually(t, 5*time.Second, "the room to be unsubscribed in Redis", func() bool {
			return a.rdb.PubSubNumSub(context.Background(), "sse:room:lobby").Val()["sse:room:lobby"] == 0
		})
		a.publish("room:lobby", "gone")
		a.publish("user:bob", "marker")
		wantNothingBefore(t, s, "marker")
	})

	t.Run("logout", func(t *testing.T) {
		s1 := a.open(a.session("carol"), "")
		s2 := a.open(a.session("carol"), "")
		other := a.open(a.session("dave"), "")
		a.publish("control", `{"op":"logout","user":"carol"}`)
		for _, s := range []*ssetest.Stream{s1, s2} {
			want(t, s, "logout", "{}")
			if _, err := s.NextEvent(5 * time.Second); !errors.Is(err, io.EOF) {
				t.Fatalf("after logout the stream must end, got %v", err)
			}
		}
		a.publish("user:dave", "still open")
		want(t, other, "message", "still open")
	})

	t.Run("session key deleted", func(t *testing.T) {
		tok := a.session("erin")
		s := a.open(tok, "")
		if err := a.rdb.Del(context.Background(), a.cfg.SessionPrefix+tok).Err(); err != nil {
			t.Fatal(err)
		}
		// SESSION_RECHECK_INTERVAL is 200ms: the stream ends well within 5s.
		want(t, s, "logout", "{}")
		if _, err := s.NextEvent(5 * time.Second); !errors.Is(err, io.EOF) {
			t.Fatalf("the stream must end, got %v", err)
		}
		if se := a.refusal(bearer(tok), ""); se.Response.StatusCode != 401 {
			t.Fatalf("reopening with the deleted session: %d", se.Response.StatusCode)
		}
		if got := a.metric(`ssebridge_streams_closed_total{reason="session"}`); got != 1 {
			t.Errorf("closed{reason=session} = %v", got)
		}
	})
}

func TestStreamsPerUserLimit(t *testing.T) {
	a := startApp(t, nil, map[string]string{"MAX_STREAMS_PER_USER": "2", "MAX_STREAMS": "3"})
	tok := a.session("alice")
	a.open(tok, "")
	a.open(tok, "")
	se := a.refusal(bearer(tok), "")
	if se.Response.StatusCode != 429 || se.Response.Header.Get("Retry-After") == "" || !strings.Contains(se.Body, "this user") {
		t.Fatalf("third stream of one user: %d %v %s", se.Response.StatusCode, se.Response.Header, se.Body)
	}
	a.open(a.session("bob"), "")
	se = a.refusal(bearer(a.session("carol")), "")
	if se.Response.StatusCode != 429 || !strings.Contains(se.Body, "this instance") {
		t.Fatalf("fourth stream in total: %d %s", se.Response.StatusCode, se.Body)
	}
	if got := a.metric(`ssebridge_handshakes_refused_total{reason="user_limit"}`); got != 1 {
		t.Errorf("user_limit refusals: %v", got)
	}
}
