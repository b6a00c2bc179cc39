package ratelog

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(0, 0)
	l := New(time.Minute, func() time.Time { return now })
	type step struct {
		advance    time.Duration
		key        string
		ok         bool
		suppressed int
	}
	for i, s := range []step{
		{0, "a", true, 0},
		{0, "a", false, 0},
		{30 * time.Second, "a", false, 0},
		{0, "b", true, 0}, // keys are independent
		{29 * time.Second, "a", false, 0},
		{time.Second, "a", true, 3}, // a minute after the last line: the three held back
		{0, "a", false, 0},
		{time.Minute, "a", true, 1},
		{time.Hour, "a", true, 0},
	} {
		now = now.Add(s.advance)
		ok, n := l.Allow(s.key)
		if ok != s.ok || n != s.suppressed {
			t.Fatalf("step %d (%+v): Allow = %v, %d", i, s, ok, n)
		}
	}
}

func TestLimiterBoundsKeys(t *testing.T) {
	l := New(time.Minute, nil)
	for i := range maxKeys + 10 {
		l.Allow(fmt.Sprint(i))
	}
	if len(l.keys) != maxKeys {
		t.Fatalf("%d keys tracked, want %d", len(l.keys), maxKeys)
	}
	if ok, _ := l.Allow("one more"); !ok {
		t.Fatal("an untracked key was held back")
	}
}
