package stream

import (
	"context"
	"io"
	"log/slog"
	"slices"
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
	h := NewHub(backendOf(&commands{t: t, subs: map[string]bool{}}, hist), testOpts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry()))
	s, err := h.Open(ctx, Spec{User: "alice", Session: "t", Rooms: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	s.startAt(hist.now, hist.now)
	h.goLive(s, hist.now, 0)
	h.noteDelivered(hist.now) // what the feed had delivered when its connection was lost

	hist.publish("room:a", 20, "in-the-gap")
	// While the recovery runs (its channels looked up, not yet read), the
	// backend publishes on the user's channel, quiet until then, and on the
	// room. The feed reads both live copies after the recovery.
	var meanwhile []wire.Durable
	hist.afterActive = func() {
		meanwhile = append(meanwhile, hist.publish("user:alice", 30, "woke"), hist.publish("room:a", 40, "after"))
	}
	h.recoverLog(ctx, hist)
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

// pagedHistory returns one event a page, and with More the channels that
// have nothing left up to the bound (as store.History does); it records
// the channels of every read.
type pagedHistory struct {
	history
	reads [][]string
}

func (p *pagedHistory) Read(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, maxBytes int) (wire.Page, error) {
	p.reads = append(p.reads, slices.Clone(channels))
	page, err := p.history.Read(ctx, channels, after, until, maxBytes)
	if len(page.Events) > 1 {
		rest := page.Events[1:]
		page.Events, page.More = page.Events[:1], true
		for _, c := range channels {
			if !slices.ContainsFunc(rest, func(ev wire.Durable) bool { return ev.Channel == c }) {
				page.Finished = append(page.Finished, c)
			}
		}
	}
	return page, err
}

// TestReplaySkipsFinishedChannels: a replay's later pages read only the
// channels an earlier page left unfinished. A finished channel would be
// checked again, and a busy one trimmed meanwhile of events past the
// bound (which arrive live) would reset the stream for nothing.
func TestReplaySkipsFinishedChannels(t *testing.T) {
	hist := &pagedHistory{history: history{now: wire.Cursor{Epoch: "e", MS: 10}}}
	h := NewHub(backendOf(&commands{t: t, subs: map[string]bool{}}, hist), testOpts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry()))
	hist.publish("room:busy", 20, "busy")
	hist.publish("room:quiet", 30, "quiet")
	s, err := h.Open(context.Background(), Spec{User: "alice", Session: "t", Rooms: []string{"busy", "quiet"}, Resume: "e:10-0"})
	if err != nil {
		t.Fatal(err)
	}
	out := &frames{}
	if why := h.opening(context.Background(), s, out); why != "" {
		t.Fatalf("opening ended the stream: %s", why)
	}
	if got := strings.Join(out.out, ""); !strings.Contains(got, "data: busy\n") || !strings.Contains(got, "data: quiet\n") {
		t.Fatalf("replay wrote %q, want both events", got)
	}
	var pages [][]string // the reads of channels: the pass's bound is a read of none
	for _, r := range hist.reads {
		if len(r) > 0 {
			pages = append(pages, r)
		}
	}
	if len(pages) != 2 || !slices.Equal(pages[1], []string{"room:quiet"}) {
		t.Fatalf("reads %q: want the second page to read room:quiet alone", hist.reads)
	}
}

// TestReplayTooLarge: a pass of replay over ReplayMaxBytes writes its
// reset and none of its events, though the pass takes several pages and
// its first page alone is under the limit; one at the limit is written
// whole.
func TestReplayTooLarge(t *testing.T) {
	bound := wire.Cursor{Epoch: "e", MS: 40}
	each := len(`{"event":"n","data":"x"}`) + replayOverhead(bound) // what one event counts
	for _, tt := range []struct {
		name  string
		limit int
		want  string // the frames after ready, joined
	}{
		{"over", 3*each - 1, "id: e:40-0\nevent: reset\ndata: {\"reason\":\"too_large\"}\n\n"},
		{"at", 3 * each, "id: e:20-0\nevent: n\ndata: x\n\nid: e:30-0\nevent: n\ndata: x\n\nid: e:40-0\nevent: n\ndata: x\n\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hist := &pagedHistory{history: history{now: wire.Cursor{Epoch: "e", MS: 10}}}
			opts := testOpts
			opts.ReplayMaxBytes = tt.limit
			h := NewHub(backendOf(&commands{t: t, subs: map[string]bool{}}, hist), opts, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry()))
			for _, ms := range []uint64{20, 30, 40} {
				hist.publish("room:a", ms, "x")
			}
			s, err := h.Open(context.Background(), Spec{User: "alice", Session: "t", Rooms: []string{"a"}, Resume: "e:10-0"})
			if err != nil {
				t.Fatal(err)
			}
			out := &frames{}
			if why := h.opening(context.Background(), s, out); why != "" {
				t.Fatalf("opening ended the stream: %s", why)
			}
			if got := strings.Join(out.out[1:], ""); got != tt.want {
				t.Fatalf("after ready: %q, want %q", got, tt.want)
			}
		})
	}
}

// recoverLog is what a single-log broker does once its feed is connected
// (store.Redis): the gap recovered, then the hub told. Not RecheckSoon:
// these tests run no recheck.
func (h *Hub) recoverLog(ctx context.Context, history LogHistory) {
	upTo, n := RecoverLog(ctx, history, h, h.opts.RedisTimeout, h.log)
	if !upTo.IsZero() {
		h.noteDelivered(upTo)
	}
	h.metrics.Recovered.Add(float64(n))
}
