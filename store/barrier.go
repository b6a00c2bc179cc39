package store

import (
	"context"
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"
)

// barrier matches PING replies to the callers waiting for them. Callers
// that arrive while a PING is being written share the next one (a group
// commit): a mass reconnect's thousands of openings, three barriers each,
// cost Redis and the pub/sub connection's lock a few writes, not one each.
// Each caller's PING is still written after it called, so it still
// follows whatever the caller wrote before.
type barrier struct {
	mu      sync.Mutex
	seq     uint64
	waiters map[uint64][]chan error // by the sequence number of their PING, written
	queued  []chan error            // for the next PING, not yet written
	writing bool                    // a caller is writing PINGs for queued
}

// send writes a PING (or has one written) after this call began and
// returns a channel that gets nil when its reply arrives, or an error when
// the write fails or the connection is lost first.
func (b *barrier) send(ctx context.Context, ps *redis.PubSub) <-chan error {
	done := make(chan error, 1)
	b.sendOn(ctx, ps, done)
	return done
}

// sendOn is send with the caller's channel (buffered, one slot). If no
// other caller is writing, this one writes PINGs, each for the callers
// queued by then, until none is queued; ctx bounds those writes, and must
// not end with the caller's request (the others' PINGs are in it).
func (b *barrier) sendOn(ctx context.Context, ps *redis.PubSub, done chan error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.queued = append(b.queued, done)
	if b.writing {
		return
	}
	b.writing = true
	for len(b.queued) > 0 {
		batch := b.queued
		b.queued = nil
		b.seq++
		seq := b.seq
		if b.waiters == nil {
			b.waiters = make(map[uint64][]chan error)
		}
		b.waiters[seq] = batch
		b.mu.Unlock()
		err := ps.Ping(ctx, strconv.FormatUint(seq, 10))
		b.mu.Lock()
		if err != nil {
			b.releaseLocked(seq, err)
		}
	}
	b.writing = false
}

func (b *barrier) release(seq uint64, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.releaseLocked(seq, err)
}

func (b *barrier) releaseLocked(seq uint64, err error) {
	for _, ch := range b.waiters[seq] {
		select {
		case ch <- err:
		default: // told already (a partition's stale op)
		}
	}
	delete(b.waiters, seq)
}

func (b *barrier) releaseAll(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for seq := range b.waiters {
		b.releaseLocked(seq, err)
	}
}
