package stream

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDurableBurstFallsBack (issue 18 item 4): a burst of durable events
// larger than a live stream's queue (a recovery after a gap, a feed that
// was late) does not end the stream as slow: it catches up from history
// and gets every event once, in order. Before, the stream was ended as
// slow, and came back to a reset if history had been trimmed meanwhile.
// A skipped event that follows a pass's bound (delivered while the pass
// waits on its barrier) is not lost either: that pass may not go live.
func TestDurableBurstFallsBack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		during string // publish one more event, and deliver it, at this step of the first pass
	}{
		{"burst", ""},
		{"an event after the bound, skipped during the barrier", "sync"},
		{"an event after the bound, skipped before the barrier", "bound"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, h := newOrderedRedis(t)
			s, out := liveStream(t, r, h)
			n := 3 * testOpts.QueueEvents
			for i := range n {
				r.publish("user:alice", fmt.Sprint("e", i))
			}
			r.deliver()
			if why := s.ended(); why != "" {
				t.Fatalf("stream ended (%s) by a burst of durable events", why)
			}
			want := n
			if tc.during != "" {
				r.on(tc.during, func() {
					r.publish("user:alice", fmt.Sprint("e", n))
					r.deliver()
				})
				want++
			}
			drain(t, h, s, out)
			all := strings.Join(out.out, "")
			at := -1
			for i := range want {
				ev := fmt.Sprintf("data: e%d\n", i)
				if c := strings.Count(all, ev); c != 1 {
					t.Fatalf("event e%d written %d times, want once: %q", i, c, all)
				}
				if j := strings.Index(all, ev); j < at {
					t.Fatalf("event e%d written out of order: %q", i, all)
				} else {
					at = j
				}
			}
			if strings.Contains(all, "event: reset") {
				t.Errorf("a reset: %q", all)
			}
			if s.catchUpState().on {
				t.Error("the stream is still catching up")
			}
			if got := testutil.ToFloat64(h.metrics.FellBack); got != 1 {
				t.Errorf("fell back %v times, want 1", got)
			}
		})
	}
}
