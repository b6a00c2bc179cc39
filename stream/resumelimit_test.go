package stream

import (
	"testing"
	"time"
)

// TestResumeLimit steps a limit of 3 a minute, tracking 2 users at most,
// through a clock of its own.
func TestResumeLimit(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	l := newResumeLimit(3, 2)
	for i, st := range []struct {
		at    time.Duration
		user  string
		take  bool
		ok    bool
		wait  time.Duration // when refused
		users int           // tracked afterwards
	}{
		{0, "a", true, true, 0, 1},
		{0, "a", true, true, 0, 1},
		{time.Second, "a", true, true, 0, 1},                  // a burst of 3
		{time.Second, "a", false, false, 19 * time.Second, 1}, // a peek says so
		{time.Second, "a", true, false, 19 * time.Second, 1},  // refused: one back every 20 s
		{time.Second, "b", true, true, 0, 2},                  // another user is not held by a's
		{20 * time.Second, "a", true, true, 0, 2},             // one came back
		{20 * time.Second, "a", true, false, 20 * time.Second, 2},
		{20 * time.Second, "c", true, true, 0, 2}, // the table is full: let through, untracked
		{20 * time.Second, "c", true, true, 0, 2},
		{20 * time.Second, "c", true, true, 0, 2},
		{20 * time.Second, "c", true, true, 0, 2},
		{61 * time.Second, "b", false, true, 0, 2}, // a new generation; b's whole again, a's not yet
		{61 * time.Second, "a", false, true, 0, 2},
		{130 * time.Second, "b", true, true, 0, 1},  // the old generation dropped; b again
		{250 * time.Second, "a", false, true, 0, 1}, // b's entry, whole by 190 s, waits for a turn
		{310 * time.Second, "a", false, true, 0, 0}, // dropped with its generation
	} {
		wait, ok := l.allow(st.user, t0.Add(st.at), st.take)
		if ok != st.ok || (!ok && wait != st.wait) || l.users() != st.users {
			t.Fatalf("step %d (%+v): ok %v, wait %v, %d users tracked", i, st, ok, wait, l.users())
		}
	}
	if _, ok := newResumeLimit(0, 1).allow("a", t0, true); !ok {
		t.Fatal("no limit (0) refused a resume")
	}
}
