package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestPublishIdempotencyKeyOneEvent: POST /publish twice with the same
// Idempotency-Key, as a backend retrying an answer it never got: one
// event on the stream, and both answers carry its id (the second with
// Idempotent-Replayed). A marker published after both proves nothing else
// came.
func TestPublishIdempotencyKeyOneEvent(t *testing.T) {
	a := startApp(t, nil, map[string]string{"PUBLISH_TOKEN": "s3cret", "IDEMPOTENCY_WINDOW": "1m"})
	s := a.open(a.session("alice", "lobby"), "")
	post := func() (id, replayed string) {
		t.Helper()
		req, _ := http.NewRequest("POST", a.url+"/publish", strings.NewReader(`{"channel":"room:lobby","event":"chat","data":{"text":"once"}}`))
		req.Header.Set("Authorization", "Bearer s3cret")
		req.Header.Set("Idempotency-Key", `"order-17"`)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var res struct{ ID string }
		if resp.StatusCode != 200 || json.Unmarshal(b, &res) != nil || res.ID == "" {
			t.Fatalf("POST /publish: %d %s", resp.StatusCode, b)
		}
		return res.ID, resp.Header.Get("Idempotent-Replayed")
	}
	first, r1 := post()
	second, r2 := post()
	if second != first || r1 != "" || r2 != "true" {
		t.Fatalf("answers %q (replayed %q) and %q (replayed %q): want one id, the second replayed", first, r1, second, r2)
	}
	if ev := want(t, s, "chat", `{"text":"once"}`); ev.ID != first {
		t.Fatalf("event id %q, the answers said %q", ev.ID, first)
	}
	a.publish("room:lobby", `{"data":"marker"}`)
	wantNothingBefore(t, s, "marker")
	if v := a.rdb.HGet(t.Context(), "sse:config", "idemttl").Val(); v != "60" {
		t.Fatalf("config idemttl %q, want 60 (IDEMPOTENCY_WINDOW=1m)", v)
	}
}
