// Package wire holds ssebridge's protocol as values: the names of channels,
// sessions as the backend stores them, the envelopes it publishes, the
// framing of durable events, cursors (event ids) and the SSE encoding.
//
// It does no I/O and keeps no state, so that store (Redis I/O) and stream
// (the hub) share one definition of each without depending on each other.
// Everything that parses untrusted bytes lives here, beside its fuzz test.
package wire
