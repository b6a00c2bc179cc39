package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// TestConcurrentLookups: lookups made at the same time, which go out
// pipelined in batches, each get their own session or error.
func TestConcurrentLookups(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client()
	const n = 300
	for i := range n {
		var v string
		switch i % 3 {
		case 0:
			v = fmt.Sprintf(`{"user":"u%d","rooms":["r%d"]}`, i, i)
		case 1:
			v = "not json"
		default:
			continue // no session
		}
		if err := rdb.Set(ctx, fmt.Sprintf("session:t%d", i), v, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	sessions := store.NewSessions(rdb, "session:", 1024)
	var lookups sync.WaitGroup
	for i := range n {
		lookups.Go(func() {
			s, err := sessions.Lookup(ctx, fmt.Sprintf("t%d", i))
			switch i % 3 {
			case 0:
				if err != nil || s.User != fmt.Sprintf("u%d", i) || len(s.Rooms) != 1 || s.Rooms[0] != fmt.Sprintf("r%d", i) {
					t.Errorf("session t%d: %+v, %v", i, s, err)
				}
			case 1:
				if !errors.Is(err, wire.ErrBadSession) {
					t.Errorf("session t%d, malformed: %v, want ErrBadSession", i, err)
				}
			default:
				if !errors.Is(err, wire.ErrNoSession) {
					t.Errorf("session t%d, missing: %v, want ErrNoSession", i, err)
				}
			}
		})
	}
	lookups.Wait()
}
