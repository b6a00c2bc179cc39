// Package stream is the hub: open streams, which channels each receives,
// fan-out of published messages, bounded queues, catch-up from history,
// and the writer that puts SSE bytes on each connection.
//
// An event's way through: store.Feed reads it from Redis and hands it to
// Hub.Publish on the feed's one goroutine; Publish encodes it once (package
// wire) and fanOut queues the same bytes on every stream of its channel
// without waiting; each stream's writer writes its queue out: one of the
// hub's event loops (loop_linux.go) for a live HTTP/1.1 stream on plain
// TCP, else a goroutine of the stream's.
//
// Who owns what, and the concurrency rules:
//
//   - Hub.mu guards the indexes by user and by session, the open count, the
//     control log, the recheck count, the control messages of streams
//     being attached and each Stream's attaching/removed/authorized. It is
//     never held across I/O.
//   - Channel membership (membership.go) is the hub's alone: a channel is
//     subscribed when its first stream attaches and unsubscribed when its
//     last detaches, under the channel's stripe lock, so a subscribe and an
//     unsubscribe of one channel are written to Redis in the order the set
//     changed. The feed executes, confirms (Sync) and resubscribes after a
//     reconnection; it keeps no counts.
//   - A Stream's members lock guards its channel set and is only taken
//     inside a stripe lock. Its mu guards its queue, its catch-up state and
//     why it is ending; nothing else is locked while mu is held.
//   - The writer owns the connection: it alone writes, including the
//     opening and every replay (resume.go). Hub.Serve (takeover.go) has
//     it from the handler's authorized request to the stream's Close: it
//     takes an HTTP/1.1 connection over and writes the response head, then
//     chooses the writer. An HTTP/2 stream is written on the request's
//     goroutine (serveResponse), a connection taken over by a goroutine of
//     its own (serveConn), or, a plain TCP one, by the stream's goroutine
//     while Redis is read (serveUntilLoop), then by a loop, which calls Close when
//     the stream ends. The loops are the hub's: each runs while it has
//     streams, and Hub.Wait waits for the streams and the loops.
//   - Control messages are applied at once on the feed's goroutine
//     (control.go); nothing there waits for Redis. Hub.Recheck holds open
//     streams to their sessions as Redis has them now (recheck.go).
//
// On Redis Cluster (store.Cluster) the same code runs with vector ids: a
// cursor's Before and Max work per partition (wire/vector.go), and
// Options.ParseCursor reads them; nothing else in the hub knows the mode.
//
// A stream never slows another: fan-out only appends to queues bounded in
// events and bytes, and a stream over its bounds is ended with a retry
// hint, to resume from its last id.
package stream
