package store_test

import (
	"context"

	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// funcEvents is the hub's side of Cluster.Run (stream.Events) as the tests
// need it: a delivery, a reconnection with its count, a loss.
type funcEvents struct {
	deliver   func(channel string, m wire.Message, err error)
	connected func(ctx context.Context, recovered int)
	retry     func()
}

func (e funcEvents) Publish(channel string, m wire.Message, err error) { e.deliver(channel, m, err) }
func (e funcEvents) Recovered(channel string, m wire.Message)          { e.deliver(channel, m, nil) }
func (e funcEvents) Lost(wire.Cursor, string)                          { e.retry() }
func (e funcEvents) Reconnected(ctx context.Context, _ wire.Cursor, n int) {
	e.connected(ctx, n)
}
func (e funcEvents) Gap() wire.Cursor   { return wire.Cursor{} }
func (e funcEvents) Channels() []string { return nil }

// runCluster runs c with the tests' callbacks until ctx ends.
func runCluster(ctx context.Context, c *store.Cluster, deliver func(string, wire.Message, error), connected func(context.Context, int), retry func()) {
	c.Run(ctx, funcEvents{deliver, connected, retry})
}
