package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/wire"
)

// Position is where a stream starts, or up to where a replay reads: the
// instance's vector, once it has delivered every event each partition had
// when this was called. It reads each partition's position, then waits for
// a ping on each partition's connection to come back: whatever was
// published on a subscribed channel before the read came before the pong,
// so was delivered.
//
// Calls that arrive together share one round of reads and pings (a mass
// reconnect costs rounds, not P reads and P pings per stream): a call
// joins the next round to start, never one already under way, so the
// round's reads follow the call.
func (c *Cluster) Position(ctx context.Context) (wire.Cursor, error) {
	c.rounds.Lock()
	r := c.next
	if r == nil {
		r = &positionRound{done: make(chan struct{})}
		c.next = r
	}
	if !c.running {
		c.running, c.next = true, nil
		go c.runRounds(r)
	}
	c.rounds.Unlock()
	select {
	case <-r.done:
		return r.pos, r.err
	case <-ctx.Done():
		return wire.Cursor{}, ctx.Err()
	}
}

// positionRound is one shared round of Position.
type positionRound struct {
	done chan struct{} // closed when pos and err are set
	pos  wire.Cursor
	err  error
}

// positionTimeout bounds one round of Position.
const positionTimeout = 10 * time.Second

// runRounds runs r, then the rounds that callers joined meanwhile, one
// after the other, and returns when none is waiting.
func (c *Cluster) runRounds(r *positionRound) {
	for r != nil {
		ctx, cancel := context.WithTimeout(context.Background(), positionTimeout)
		r.pos, r.err = c.position(ctx)
		cancel()
		close(r.done)
		c.rounds.Lock()
		r, c.next = c.next, nil
		if r == nil {
			c.running = false
		}
		c.rounds.Unlock()
	}
}

// position is one round of Position: every partition's cursor read on
// its master, then a ping answered on every partition's connection, then
// the instance's vector, moved on to what was read.
func (c *Cluster) position(ctx context.Context) (wire.Cursor, error) {
	reads, err := c.readCursors(ctx)
	if err != nil {
		return wire.Cursor{}, err
	}
	if err := c.awaitPongs(ctx); err != nil {
		return wire.Cursor{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, r := range reads {
		if c.epochs[k] != "" && c.epochs[k] != r.epoch {
			// The partition lost its data and its feed has not met the new
			// epoch yet: its gap recovery deals with the streams.
			continue
		}
		c.adoptLocked(k, r.epoch, r.n)
	}
	return wire.VectorCursor(c.stampLocked(-1)), nil
}

// cursorRead is a partition's epoch and position as a round read them.
type cursorRead struct {
	epoch string
	n     uint64
}

// readCursors reads every partition's cursor (cursorScript).
func (c *Cluster) readCursors(ctx context.Context) ([]cursorRead, error) {
	// Each cursor is read on its slot's master as the slot map has it, the
	// node the partition's connection is subscribed on, and an ASK or MOVED
	// is not followed: while a slot migrates, its events go out on the node
	// that has its keys, and a position read on the target (through ASK)
	// would take the instance past events published there, which reach it
	// only once the slot is handed over, by the gap recovery, which starts
	// from that position. The round fails instead; streams retry.
	nodes, err := c.partitionsByMaster(ctx)
	if err != nil {
		return nil, err
	}
	cmds := c.runCursorScripts(ctx, nodes)
	reads := make([]cursorRead, c.parts)
	for k, cmd := range cmds {
		s, err := cmd.Text()
		if redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK") {
			// The slot moved, or is moving: the next round reads the map again.
			c.cc.ReloadState(ctx)
		}
		if err != nil {
			return nil, fmt.Errorf("reading partition %d's position: %w", k, err)
		}
		e, n, _, err := parsePosition(k, s)
		if err != nil {
			return nil, err
		}
		reads[k] = cursorRead{e, n}
	}
	return reads, nil
}

// partitionsByMaster groups the partitions by the master of their slot,
// as the slot map has it.
func (c *Cluster) partitionsByMaster(ctx context.Context) (map[*redis.Client][]int, error) {
	nodes := map[*redis.Client][]int{}
	for k := range c.parts {
		node, err := c.cc.MasterForKey(ctx, c.tagOf(k)+"cursor")
		if err != nil {
			return nil, fmt.Errorf("reading partition %d's position: %w", k, err)
		}
		nodes[node] = append(nodes[node], k)
	}
	return nodes, nil
}

// runCursorScripts runs cursorScript for every partition on the node
// given, one pipeline per node, the nodes at once; the replies are by
// partition.
func (c *Cluster) runCursorScripts(ctx context.Context, nodes map[*redis.Client][]int) []*redis.Cmd {
	cmds := make([]*redis.Cmd, c.parts)
	var wg sync.WaitGroup
	for node, ks := range nodes {
		wg.Go(func() {
			_, _ = node.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range ks {
					cmds[k] = c.cursor.EvalSha(ctx, p, []string{c.tagOf(k) + "cursor"})
				}
				return nil
			})
			for _, k := range ks {
				if redis.HasErrorPrefix(cmds[k].Err(), "NOSCRIPT") {
					// A node without the script (new, or restarted): with its text.
					cmds[k] = c.cursor.Run(ctx, node, []string{c.tagOf(k) + "cursor"})
				}
			}
		})
	}
	wg.Wait()
	return cmds
}

// awaitPongs writes a barrier ping on every partition's connection and
// waits for every answer: whatever was published on a subscribed channel
// before the ping has then been delivered.
func (c *Cluster) awaitPongs(ctx context.Context) error {
	waits := make([]<-chan error, c.parts)
	for k, f := range c.feeds {
		done, err := f.ping(ctx)
		if err != nil {
			return fmt.Errorf("partition %d: %w", k, err)
		}
		waits[k] = done
	}
	for k, done := range waits {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("partition %d: %w", k, err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
