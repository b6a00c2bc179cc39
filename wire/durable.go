package wire

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrForged labels a message that starts like a durable event but does not
// carry this deployment's marker: a raw PUBLISH posing as the publish
// script, for example a backend relaying a user's text as it is. Taken for
// durable, it would set a forged id and make streams drop every later
// durable event as already seen; so it is refused and counted.
var ErrForged = errors.New("forged_durable")

// Message is what arrives on a Redis channel, once its framing is read.
type Message struct {
	// Cursor is set for a durable event (and for a mark, whose Body is
	// empty); zero for a live publish.
	Cursor Cursor
	// Body is the envelope or the live payload.
	Body []byte
}

// Durable reports whether m came from the publish script.
func (m Message) Durable() bool { return !m.Cursor.IsZero() }

// DurableFrame is how the publish script frames a durable event on a
// channel: NUL, the deployment's marker, a space, the cursor, LF, then the
// envelope. The marker is a random value kept in Redis that only the script
// and ssebridge read, so no payload published raw can pass for it.
func DurableFrame(marker string, c Cursor, envelope []byte) []byte {
	b := make([]byte, 0, len(marker)+len(envelope)+48)
	b = append(b, 0)
	b = append(b, marker...)
	b = append(b, ' ')
	b = append(b, c.String()...)
	b = append(b, '\n')
	return append(b, envelope...)
}

// ParseMessage reads a payload from Redis. A payload that starts with NUL
// must be durable framing with marker; anything else is a live publish.
func ParseMessage(payload []byte, marker string) (Message, error) {
	if len(payload) == 0 || payload[0] != 0 {
		return Message{Body: payload}, nil
	}
	rest, ok := bytes.CutPrefix(payload[1:], []byte(marker+" "))
	if marker == "" || !ok {
		return Message{}, fmt.Errorf("%w: a payload that starts with NUL must come from the publish script", ErrForged)
	}
	head, envelope, found := bytes.Cut(rest, []byte{'\n'})
	if !found {
		return Message{}, fmt.Errorf("%w: durable message without an envelope", ErrBadCursor)
	}
	c, err := ParseCursor(string(head))
	if err != nil {
		return Message{}, err
	}
	return Message{Cursor: c, Body: envelope}, nil
}
