package stream

import (
	"errors"
	"time"
)

// ErrTooManyResumes means the user resumed more than MaxResumesPerUser
// times in the last minute. Open and Admits return it in a
// *ResumeLimitError, which says when the next resume is let through.
var ErrTooManyResumes = errors.New("too many resumes for this user")

// ResumeLimitError is ErrTooManyResumes with the wait until the user's
// next resume is let through.
type ResumeLimitError struct{ Wait time.Duration }

func (e *ResumeLimitError) Error() string { return ErrTooManyResumes.Error() }
func (e *ResumeLimitError) Unwrap() error { return ErrTooManyResumes }

// resumeLimit bounds the resumes (opens with a Last-Event-ID) of each user
// on this instance: each costs a replay of up to REPLAY_MAX_BYTES, so a
// client that resumes in a loop, or many streams of one user at once,
// would be an amplifier. A user has a budget of per resumes, refilled at
// per a minute (GCRA): a burst of per, then one every minute/per.
//
// Memory is bounded: a user's entry is needed for a minute at most after
// its last resume (its budget is whole again by then), so entries live in
// two generations turned every minute, the older dropped whole; and at
// most capacity users are tracked; past that, a user not tracked is let
// through untracked (a mass reconnect is when honest users resume).
// Guarded by the hub's mu.
type resumeLimit struct {
	per      int // resumes per user per minute; 0: no limit
	capacity int
	// cur and old map a user to when its budget is whole again (GCRA's
	// theoretical arrival time); an entry in the past is as good as none.
	cur, old map[string]time.Time
	turned   time.Time // when cur was begun
}

func newResumeLimit(per, capacity int) *resumeLimit {
	return &resumeLimit{per: per, capacity: capacity, cur: make(map[string]time.Time), old: make(map[string]time.Time)}
}

// turn begins a new generation each minute. Entries of the one dropped
// were last set more than a minute ago: their budgets are whole.
func (l *resumeLimit) turn(now time.Time) {
	if now.Sub(l.turned) >= time.Minute {
		l.old, l.cur, l.turned = l.cur, make(map[string]time.Time), now
	}
}

// allow says whether user may resume at now, and if not, how long until
// it may; take also spends one resume of the budget when it may.
func (l *resumeLimit) allow(user string, now time.Time, take bool) (wait time.Duration, ok bool) {
	if l.per <= 0 {
		return 0, true
	}
	l.turn(now)
	full, tracked := l.cur[user]
	if !tracked {
		full, tracked = l.old[user]
	}
	if full.Before(now) {
		full = now
	}
	next := full.Add(time.Minute / time.Duration(l.per))
	if over := next.Sub(now) - time.Minute; over > 0 {
		return over, false
	}
	if !take {
		return 0, true
	}
	if !tracked && len(l.cur)+len(l.old) >= l.capacity {
		return 0, true
	}
	delete(l.old, user)
	l.cur[user] = next
	return 0, true
}

// users is how many users are tracked.
func (l *resumeLimit) users() int { return len(l.cur) + len(l.old) }
