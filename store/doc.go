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
//   - Cluster (Redis Cluster mode, docs/CLUSTER.md) is Feed and History in
//     one: a pub/sub connection per partition (partFeed, each read by its
//     own goroutine, which also fills that partition's gaps), the cluster
//     publish script, history reads, and the instance's vector of partition
//     positions that makes the ids. Cluster.mu guards the vector and is held
//     across taking an event's id and handing it to the hub, so ids grow in
//     every partition for every stream. Position's shared rounds run on one
//     goroutine at a time, which ends when no caller waits.
package store
