// Package store is everything ssebridge says to Redis: sessions (read, and
// written for the try-out), the pub/sub feed, and the durable history with
// its two scripts. It holds Redis I/O only; what the bytes mean is package
// wire's, and what to do with them is package stream's.
//
// State and its owners:
//   - Feed owns the process's one pub/sub connection and the set of channels
//     it must be subscribed to. It keeps no counts: the hub decides when a
//     channel is first needed and last left, and calls Subscribe and
//     Unsubscribe serialised per channel; Feed writes the commands in that
//     order, confirms them with Sync, and resubscribes the whole set after a
//     lost connection. Run is its only reader goroutine.
//   - History owns nothing in memory: every read and write is one script
//     call or one command, atomic on the Redis side.
//   - Sessions owns nothing either: the backend writes sessions, ssebridge
//     reads them.
package store
