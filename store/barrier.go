package store

import (
	"context"
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"
)

// barrier matches PING replies to the callers waiting for them.
type barrier struct {
	mu      sync.Mutex
	seq     uint64
	waiters map[uint64]chan error
}

// send writes a PING carrying a new sequence number and returns a channel
// that gets nil when its reply arrives, or an error when the connection is
// lost first. Each waiter is released by its own reply: writers do not
// hold a lock across the write, so a later number may be written first.
func (b *barrier) send(ctx context.Context, ps *redis.PubSub) (<-chan error, error) {
	done := make(chan error, 1)
	if err := b.sendOn(ctx, ps, done); err != nil {
		return nil, err
	}
	return done, nil
}

// sendOn is send with the caller's channel (buffered, one slot), which
// gets nothing if the write fails.
func (b *barrier) sendOn(ctx context.Context, ps *redis.PubSub, done chan error) error {
	b.mu.Lock()
	b.seq++
	seq := b.seq
	if b.waiters == nil {
		b.waiters = make(map[uint64]chan error)
	}
	b.waiters[seq] = done
	b.mu.Unlock()
	if err := ps.Ping(ctx, strconv.FormatUint(seq, 10)); err != nil {
		b.mu.Lock()
		delete(b.waiters, seq)
		b.mu.Unlock()
		return err
	}
	return nil
}

func (b *barrier) release(seq uint64, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ch, ok := b.waiters[seq]; ok {
		ch <- err
		delete(b.waiters, seq)
	}
}

func (b *barrier) releaseAll(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for seq, ch := range b.waiters {
		ch <- err
		delete(b.waiters, seq)
	}
}
