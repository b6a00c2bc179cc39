package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/internal/ssetest"
)

// TestClusterWaitReplicas: with DURABLE_WAIT_REPLICAS=1 in cluster mode,
// POST /publish waits for a replica of the master of the event's slot.
// While that master's replica is down, publishes on its slot answer 503
// (the event is published all the same, and delivered), while publishes
// on another master's slot, whose replica is up, answer 200. WAIT sent to
// any other node than the slot's master would count that node's replicas,
// and answer 200 here.
func TestClusterWaitReplicas(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	rc := redistest.StartClusterReplicas(t, 3, 1)
	cc := rc.Client()
	const parts = 16
	p := startBinary(t, map[string]string{
		"REDIS_CLUSTER_ADDRS":   rc.Addrs(),
		"PUBLISH_TOKEN":         "pub",
		"DURABLE_WAIT_REPLICAS": "1",
		"DURABLE_WAIT_TIMEOUT":  "200ms",
	})
	url := "http://" + p.addr

	// Two rooms on different masters.
	lobby := "room:lobby"
	lobbySlot := slotOf(t, cc, lobby, parts)
	other := ""
	for i := 0; other == ""; i++ {
		if c := fmt.Sprintf("room:r%d", i); rc.NodeOfSlot(slotOf(t, cc, c, parts)) != rc.NodeOfSlot(lobbySlot) {
			other = c
		}
	}
	v, _ := json.Marshal(map[string]any{"user": "alice", "rooms": []string{"lobby", strings.TrimPrefix(other, "room:")}})
	if err := cc.Set(context.Background(), "session:wait", v, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	s, err := ssetest.Open(context.Background(), url+"/events", bearer("wait"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ev, err := s.NextEvent(5 * time.Second); err != nil || ev.Event != "ready" {
		t.Fatalf("want ready, got %+v %v", ev, err)
	}

	publish := func(channel, data string) int {
		t.Helper()
		body := fmt.Sprintf(`{"channel":%q,"event":"n","data":%q}`, channel, data)
		req, _ := http.NewRequest("POST", url+"/publish", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer pub")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := publish(lobby, "both up"); code != http.StatusOK {
		t.Fatalf("publish with every replica up: %d, want 200", code)
	}
	want(t, s, "n", "both up")

	replicas := rc.ReplicasOfSlot(lobbySlot)
	if len(replicas) != 1 {
		t.Fatalf("the lobby's master has %d online replicas, want 1", len(replicas))
	}
	replicas[0].Stop()
	for i := range 5 {
		data := fmt.Sprintf("lobby %d", i)
		if code := publish(lobby, data); code != http.StatusServiceUnavailable {
			t.Fatalf("publish %d on %s with its master's replica down: %d, want 503", i, lobby, code)
		}
		want(t, s, "n", data) // published, not known to be replicated
		data = fmt.Sprintf("other %d", i)
		if code := publish(other, data); code != http.StatusOK {
			t.Fatalf("publish %d on %s, whose master's replica is up: %d, want 200", i, other, code)
		}
		want(t, s, "n", data)
	}
	p.awaitLog(t, "on 0 replicas of the 1 wanted", 5*time.Second)
}
