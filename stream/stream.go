package stream

import (
	"sync"
	"sync/atomic"

	"github.com/ssebridge/ssebridge/wire"
)

// Why a stream ended. Each is a label of the streams-closed metric.
const (
	ReasonClient   = "client"   // the browser went away
	ReasonSlow     = "slow"     // its queue overflowed
	ReasonLate     = "late"     // its queue overflowed with a burst of live events while the feed was late
	ReasonLogout   = "logout"   // the backend logged the user out
	ReasonSession  = "session"  // the session key is gone or now names another user
	ReasonShutdown = "shutdown" // this instance is stopping
	ReasonWrite    = "write"    // a write failed or timed out
	ReasonRedis    = "redis"    // history could not be read, or a subscription not confirmed
	ReasonUpload   = "upload"   // the client sent bytes on the stream's connection
)

// memberFlags are a stream's membership flags, in one byte: a Stream is
// kept to 256 bytes.
type memberFlags uint8

const (
	flagClosed  memberFlags = 1 << iota // Close has run: attach nothing more
	flagCounted                         // presence counts its channels, from Open's confirmation on (one refused never arrived nor left)
)

// Stream is one open EventSource connection. The hub queues encoded events
// on it without ever waiting; one writer (a goroutine, or an event loop:
// Hub.Serve chooses) writes them out. Streams are made by Hub.Open.
//
// Its fields have three owners. members guards the membership fields and
// is only taken inside a channel's stripe lock (membership.go), or alone
// (Hub.count). mu guards the queue and the catch-up state, and is never
// held while taking another lock. The writer alone touches the connection.
type Stream struct {
	User    string
	session string
	resume  string // the Last-Event-ID it was opened with
	hub     *Hub

	// Guarded by the hub's mu: whether Open is still attaching it (control
	// messages for it wait in the hub's pending meanwhile), and whether
	// Close ran.
	attaching bool
	removed   bool

	allRooms bool        // opened with all of its session's rooms (no ?rooms=)
	flags    memberFlags // guarded by members
	// authorized is the hub's recheck count (Hub.rechecks) when Open
	// registered the stream, under the hub's mu; its session was read
	// before. A recheck judges the stream only by a read it began after
	// that (recheck.go). Four bytes, in what was the padding before
	// members: the struct stays 256 bytes.
	authorized uint32

	// An idle stream is held by the thousand: its fields are kept to what
	// every stream needs (256 bytes), and what only some need is made when
	// needed (catching, wake, done).

	members  sync.Mutex
	channels []string // logical channels the stream is attached to: a few, MaxRooms+2 at most

	mu       sync.Mutex
	queue    [][]byte      // frames shared with every other stream they go to
	queued   int           // bytes in queue
	ending   string        // why the stream is ending; "" while it is open
	final    []byte        // written after everything else once ending is set
	last     wire.Cursor   // the newest durable event queued or replayed: one at or before it is a duplicate
	catching *catchUp      // while set, the writer replays history and live events wait in held
	gen      uint64        // counts joins and skips, so that a pass of catch-up knows it must run again
	done     chan struct{} // closed once ending is set, for waits that must not outlast it; made by doneChan

	onLoop atomic.Pointer[loopConn]      // the stream's place on an event loop, while it is on one
	wake   atomic.Pointer[chan struct{}] // the writer goroutine's (serve), while it runs one
}

func newStream(h *Hub, user, session string) *Stream {
	return &Stream{
		User:    user,
		session: session,
		hub:     h,
		// Until its opening is written, a stream only holds.
		catching: &catchUp{},
	}
}

// position is the newest durable event queued or replayed on the stream.
func (s *Stream) position() wire.Cursor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// end asks the writer to stop: what is still queued is dropped, and final
// (if any) is written instead. It reports whether this call ended the
// stream.
func (s *Stream) end(reason string, final []byte) bool {
	return s.stop(reason, final, dropQueued)
}

// finish asks the writer to stop once it has written what is queued, then
// final.
func (s *Stream) finish(reason string, final []byte) bool {
	return s.stop(reason, final, keepQueued)
}

type endMode bool

const (
	dropQueued endMode = false
	keepQueued endMode = true
)

func (s *Stream) stop(reason string, final []byte, mode endMode) bool {
	s.mu.Lock()
	if s.ending != "" {
		s.mu.Unlock()
		return false
	}
	s.ending, s.final = reason, final
	if s.done != nil {
		close(s.done)
	}
	if mode == dropQueued {
		s.queue, s.queued = nil, 0
	}
	if s.catching != nil {
		s.catching.held, s.catching.size = nil, 0
	}
	s.mu.Unlock()
	s.signal()
	return true
}

// ended reports why the stream is ending, or "".
func (s *Stream) ended() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ending
}

// doneChan returns a channel closed once the stream is ending. It is made
// on the first call: few streams ever wait on it.
func (s *Stream) doneChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		s.done = make(chan struct{})
		if s.ending != "" {
			close(s.done)
		}
	}
	return s.done
}

// signal wakes the stream's writer: its loop, or its goroutine. With
// neither (in serveUntilLoop, or before its writer started) there is nobody to
// wake: the writer takes the queue when it starts, or on its loop.
func (s *Stream) signal() {
	if c := s.onLoop.Load(); c != nil {
		c.ready()
		return
	}
	if w := s.wake.Load(); w != nil {
		select {
		case *w <- struct{}{}:
		default:
		}
	}
}
