package stream

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssebridge/ssebridge/wire"
)

// TestRecoverKeepsEventsPublishedDuringIt: a gap recovery does not lose
// an event published while it runs on a channel that had none in the gap.
// Its live copy comes after the recovery; if the recovery had read past it
// (on a channel it did read), the stream would drop that copy as replayed.
// (TestSentinelFailover lost four events of one channel so, once in about
// eight runs: the feed came back on the promoted replica as publishing
// resumed.)
func TestRecoverKeepsEventsPublishedDuringIt(t *testing.T) {
	ctx := context.Background()
	hist := &history{now: wire.Cursor{Epoch: "e", MS: 10}}
	h := NewHub(&commands{t: t, subs: map[string]bool{}}, hist, testOpts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry()))
	s, err := h.Open(ctx, Spec{User: "alice", Session: "t", Rooms: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	s.startAt(hist.now)
	h.goLive(s, hist.now, 0)
	h.saw(hist.now) // what the feed had delivered when its connection was lost

	hist.publish("room:a", 20, "in-the-gap")
	// While the recovery runs (its channels looked up, not yet read), the
	// backend publishes on the user's channel, quiet until then, and on the
	// room. The feed reads both live copies after the recovery.
	var meanwhile []wire.Durable
	hist.afterActive = func() {
		meanwhile = append(meanwhile, hist.publish("user:alice", 30, "woke"), hist.publish("room:a", 40, "after"))
	}
	h.Recover(ctx)
	for _, ev := range meanwhile {
		h.Publish(ev.Channel, wire.Message{Cursor: ev.Cursor, Body: ev.Envelope}, nil)
	}

	batch, ending, _ := s.take(nil)
	var got []string
	for _, f := range batch {
		for _, want := range []string{"in-the-gap", "woke", "after"} {
			if strings.Contains(string(f), "data: "+want+"\n") {
				got = append(got, want)
			}
		}
	}
	if ending != "" || strings.Join(got, " ") != "in-the-gap woke after" {
		t.Fatalf("stream got %q (ending %q), want in-the-gap woke after, once each, in order", got, ending)
	}
}
