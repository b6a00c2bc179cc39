package store

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Publisher publishes live events into Redis as a backend would.
type Publisher struct {
	rdb    *redis.Client
	prefix string
}

// NewPublisher returns a publisher for channels named prefix+name.
func NewPublisher(rdb *redis.Client, prefix string) *Publisher {
	return &Publisher{rdb: rdb, prefix: prefix}
}

// Publish sends payload live (at most once) on a logical channel.
func (p *Publisher) Publish(ctx context.Context, channel string, payload []byte) error {
	if err := p.rdb.Publish(ctx, p.prefix+channel, payload).Err(); err != nil {
		return fmt.Errorf("publishing on %s: %w", channel, err)
	}
	return nil
}
