package store

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"

	"github.com/ssebridge/ssebridge/wire"
)

//go:embed size.lua
var sizeScript string

// One call of the size script counts at most this much (it may overshoot
// by one XRANGE batch), so that it stays short, as a page of Read does:
// Redis runs nothing else meanwhile.
const (
	sizeCallBytes   = 512 << 10
	sizeCallEntries = 4096
)

// Size counts the durable events of channels, each after its own cursor in
// after, up to until, as Read would return them (a page's More and
// Finished aside), each as its envelope's length plus overhead; it stops
// once the count passes limit, so it reads at most about limit bytes,
// inside Redis: nothing but the count crosses the network. A replay asks it
// before writing anything, so that one over REPLAY_MAX_BYTES is refused
// whole. The cursors must be ones Read accepted (no reset).
func (h *History) Size(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, overhead, limit int) (int, error) {
	if len(after) != len(channels) {
		return 0, fmt.Errorf("sizing history: %d cursors for %d channels", len(after), len(channels))
	}
	keys := make([]string, len(channels))
	starts := make([]string, len(channels))
	for i, ch := range channels {
		keys[i] = h.prefix + "{" + ch + "}:history"
		starts[i] = wire.Cursor{MS: after[i].MS, N: after[i].N + 1}.EntryID()
	}
	return countRange(func(keys []string, args []any) ([]any, error) {
		return h.size.Run(ctx, h.rdb, keys, args...).Slice()
	}, keys, starts, until.EntryID(), overhead, limit)
}

// Size is History.Size on Redis Cluster: one script call per partition
// (its keys share the partition's slot), each channel counted after its
// partition's position in its own cursor, up to until's.
func (c *Cluster) Size(ctx context.Context, channels []string, after []wire.Cursor, until wire.Cursor, overhead, limit int) (int, error) {
	if len(after) != len(channels) {
		return 0, fmt.Errorf("sizing history: %d cursors for %d channels", len(after), len(channels))
	}
	u := until.Vector()
	if u == nil || len(u.Pos) != c.parts {
		return 0, fmt.Errorf("sizing history: %s is not a position of %d partitions", until, c.parts)
	}
	keys := make([][]string, c.parts)
	starts := make([][]string, c.parts)
	for i, ch := range channels {
		k, _, _, hist, _, _ := c.keys(ch)
		v := after[i].Vector()
		if v == nil || len(v.Pos) != c.parts {
			return 0, fmt.Errorf("sizing history: %s is not a position of %d partitions", after[i], c.parts)
		}
		keys[k] = append(keys[k], hist)
		starts[k] = append(starts[k], strconv.FormatUint(v.Pos[k]+1, 10)+"-0")
	}
	total := 0
	for k := range c.parts {
		if len(keys[k]) == 0 {
			continue
		}
		n, err := countRange(func(keys []string, args []any) ([]any, error) {
			return c.size.Run(ctx, c.cc, keys, args...).Slice()
		}, keys[k], starts[k], strconv.FormatUint(u.Pos[k], 10), overhead, limit-total)
		total += n
		if err != nil || total > limit {
			return total, err
		}
	}
	return total, nil
}

// countRange calls the size script (run) over keys, each from its start
// up to end, until every key is counted or the count passes budget.
func countRange(run func(keys []string, args []any) ([]any, error), keys, starts []string, end string, overhead, budget int) (int, error) {
	total := 0
	for len(keys) > 0 && total <= budget {
		args := []any{budget - total, overhead, sizeCallBytes, sizeCallEntries, end}
		for _, s := range starts {
			args = append(args, s)
		}
		res, err := run(keys, args)
		if err != nil {
			return total, fmt.Errorf("sizing history: %w", err)
		}
		if len(res) != 2 {
			return total, fmt.Errorf("sizing history: unexpected answer from the script: %v", res)
		}
		n, _ := res[0].(int64)
		next, _ := res[1].([]any)
		if len(next) != len(keys) {
			return total, fmt.Errorf("sizing history: unexpected answer from the script: %v", res)
		}
		total += int(n)
		var k, s []string
		for i, v := range next {
			if id, _ := v.(string); id != "" {
				k, s = append(k, keys[i]), append(s, id)
			}
		}
		keys, starts = k, s
	}
	return total, nil
}
