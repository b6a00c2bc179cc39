package wire

// Durable is one event read back from a channel's history.
type Durable struct {
	Cursor   Cursor
	Channel  string
	Envelope []byte
}

// Page is one read of history for a stream that resumes: the events of its
// channels after their cursors and up to Position, in order, up to a size.
type Page struct {
	// Position bounds the read: every durable event up to it was published
	// before the read began, so pages read against the same Position add up
	// to one consistent snapshot, whatever is published meanwhile.
	Position Cursor
	Events   []Durable
	// More is set when events up to Position remain: read again from the
	// last event's cursor.
	More bool
	// Finished, with More, names channels of the read that have no event
	// left up to Position: a later page need not read them, and must not
	// check them (a busy channel trimmed since of events past Position,
	// which arrive live, has lost nothing). nil: any may have events left.
	Finished []string
	// Reset says why the cursors cannot be honoured; "" when they can.
	Reset string
}

// Reasons a resume cursor cannot be honoured: the reason of a reset event,
// and a label of the resets metric.
const (
	ResetMalformed = "malformed" // not a cursor
	ResetEpoch     = "epoch"     // from before Redis lost its data, or from another Redis
	ResetFuture    = "foreign"   // newer than any event: not from this Redis
	ResetTooOld    = "too_old"   // older than HISTORY_TTL
	ResetTrimmed   = "trimmed"   // events after it were trimmed by HISTORY_MAXLEN
	ResetTooLarge  = "too_large" // more to replay than REPLAY_MAX_BYTES
)
