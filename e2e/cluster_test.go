package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/internal/ssetest"
	"github.com/ssebridge/ssebridge/store"
	"github.com/ssebridge/ssebridge/wire"
)

// startClusterApp runs ssebridge (startBinary) on the cluster rc.
func startClusterApp(t *testing.T, rc *redistest.Cluster, vars map[string]string) (url string, stop func()) {
	t.Helper()
	environ := map[string]string{"REDIS_CLUSTER_ADDRS": rc.Addrs()}
	for k, v := range vars {
		environ[k] = v
	}
	p := startBinary(t, environ)
	return "http://" + p.addr, func() { _ = p.stop() }
}

// clusterPublish runs the cluster publish script as a backend does.
func clusterPublish(cc *redis.ClusterClient, parts int, channel, envelope string) (string, error) {
	k := wire.Partition(channel, parts)
	tag := "sse:{p" + strconv.Itoa(k) + "}:"
	return redis.NewScript(store.ClusterPublishScript).Run(context.Background(), cc,
		[]string{tag + channel + ":history"},
		tag+channel, envelope, parts).Text()
}

// nodeOf is the node that serves a channel's partition.
func nodeOf(t *testing.T, rc *redistest.Cluster, cc *redis.ClusterClient, channel string, parts int) *redistest.ClusterNode {
	t.Helper()
	return rc.NodeOfSlot(slotOf(t, cc, channel, parts))
}

// slotOf is the hash slot of channel's partition.
func slotOf(t *testing.T, cc *redis.ClusterClient, channel string, parts int) int {
	t.Helper()
	slot, err := cc.ClusterKeySlot(context.Background(), "sse:{p"+strconv.Itoa(wire.Partition(channel, parts))+"}:cursor").Result()
	if err != nil {
		t.Fatal(err)
	}
	return int(slot)
}

// TestClusterChaos: a three-master Redis Cluster, two instances (separate
// processes), 30 streams that keep dropping and
// resuming on either instance with their last id while durable events are
// published on user, room and broadcast channels spread over all three
// masters; a master is killed and restarted with its data, and the
// separate instance is killed with SIGKILL and started again. Every
// stream must get every event of its channels once, in order per channel.
func TestClusterChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the cluster chaos run")
	}
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	const parts = 16
	all := churnChannels()
	nodes := map[string]map[string]bool{} // node → kinds of channel on it
	for _, ch := range all {
		n := nodeOf(t, rc, cc, ch, parts).Addr
		if nodes[n] == nil {
			nodes[n] = map[string]bool{}
		}
		kind, _, _ := strings.Cut(ch, ":")
		nodes[n][kind] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("the channels are on %d masters, want all 3: %v", len(nodes), nodes)
	}
	t.Logf("channels per master: %v", nodes)

	vars := map[string]string{"REDIS_CLUSTER_ADDRS": rc.Addrs(), "MAX_STREAMS_PER_USER": "100", "HISTORY_MAXLEN": "100000"}
	inproc, _ := startClusterApp(t, rc, vars)
	var mu sync.Mutex
	bin := startBinary(t, vars)
	targets := func() []string {
		mu.Lock()
		defer mu.Unlock()
		urls := []string{inproc}
		if bin != nil {
			urls = append(urls, "http://"+bin.addr)
		}
		return urls
	}
	// The master of the broadcast channel: every stream has it.
	victim := nodeOf(t, rc, cc, "broadcast", parts)
	c := churn{
		rdb: cc, publish: func(ch, env string) error { _, err := clusterPublish(cc, parts, ch, env); return err },
		retryFor: 15 * time.Second, grace: 40 * time.Second,
		targets: targets, streams: 30, duration: 10 * time.Second,
		faults: []fault{
			{2 * time.Second, "the broadcast channel's master killed (SIGKILL) and restarted with its data", func() {
				victim.Stop()
				victim.Start()
			}},
			{5 * time.Second, "the separate instance killed with SIGKILL", func() {
				mu.Lock()
				p := bin
				bin = nil
				mu.Unlock()
				p.kill()
			}},
			{7 * time.Second, "the separate instance started again", func() {
				p := startBinary(t, vars)
				mu.Lock()
				bin = p
				mu.Unlock()
			}},
		},
	}
	lost, dup, disorder, resets, published, delivered := c.runCluster(t)
	fmt.Printf("cluster chaos: published=%d delivered=%d lost=%d duplicated=%d out_of_order=%d resets=%d\n", published, delivered, lost, dup, disorder, resets)
	if lost != 0 || dup != 0 || disorder != 0 || resets != 0 || published == 0 {
		t.Fatalf("lost %d, duplicated %d, out of order %d, resets %d (of %d published): want none", lost, dup, disorder, resets, published)
	}
}

// runCluster is churn.run for cluster mode: order is checked per channel
// (ids are vectors, ordered per partition), and an event a retried publish
// sent twice may arrive twice.
func (c churn) runCluster(t *testing.T) (lost, dup, disorder, resets, published, delivered int) {
	r := c.drive(t)
	published = len(r.acked)
	twice := 0
	for i := range c.streams {
		mine := churnChannelsOf(i)
		seen := map[msg]int{}
		prev := map[string]int{}
		for _, d := range r.got[i] {
			if d.resets > 0 {
				resets++
				continue
			}
			delivered++
			m := msg{d.ch, d.seq}
			if seen[m]++; seen[m] > 1 {
				if seen[m] == 2 && r.retried[m] {
					twice++ // published twice, not delivered twice
				} else {
					dup++
				}
				continue
			}
			if p, ok := prev[m.ch]; ok && m.seq < p {
				disorder++
				t.Errorf("stream %d: %s event %d after %d", i, m.ch, m.seq, p)
			}
			prev[m.ch] = m.seq
		}
		for _, m := range r.acked {
			if mine[m.ch] && seen[m] == 0 {
				lost++
			}
		}
	}
	t.Logf("cluster churn: %d streams, %d events published, %d deliveries, %d lost, %d duplicated, %d resets; %d deliveries of events a retried publish sent twice",
		c.streams, published, delivered, lost, dup, resets, twice)
	return lost, dup, disorder, resets, published, delivered
}

// openCluster opens a stream for a new session of user with rooms on the
// instance at url, and waits for its ready event.
func openCluster(t *testing.T, cc *redis.ClusterClient, url, user string, rooms ...string) *ssetest.Stream {
	t.Helper()
	token := fmt.Sprintf("tok-%s-%d", user, time.Now().UnixNano())
	setSession(t, cc, "session:"+token, user, rooms...)
	s, _, err := openReady(context.Background(), url, bearer(token))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// resumer is one client's stream that, as EventSource does, opens again
// with the last id it saw whenever the server ends it.
type resumer struct {
	ctx   context.Context
	url   string // the instance's
	token string
	last  string          // the id to resume from
	cur   *ssetest.Stream // nil between streams
	opens int
}

// openResumer stores a session of alice in the lobby at session:<token>,
// opens its first stream and reads the ready event: the stream starts
// there, so every event published afterwards is owed to it.
func openResumer(t *testing.T, cc *redis.ClusterClient, url, token string) *resumer {
	t.Helper()
	setSession(t, cc, "session:"+token, "alice", "lobby")
	ctx := context.Background()
	s, id, err := openReady(ctx, url, bearer(token))
	if err != nil {
		t.Fatalf("the first stream: %v", err)
	}
	r := &resumer{ctx: ctx, url: url, token: token, last: id, cur: s, opens: 1}
	t.Cleanup(r.drop)
	return r
}

// next reads the next event within d (heartbeats skipped), first opening a
// stream from the last id if none is open. An error other than a timeout
// ends the stream; a refused open is returned after a pause, as a
// browser's retry waits.
func (r *resumer) next(d time.Duration) (ssetest.Event, error) {
	if r.cur == nil {
		h := bearer(r.token)
		h.Set("Last-Event-ID", r.last)
		s, err := ssetest.Open(r.ctx, r.url+"/events", h)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			return ssetest.Event{}, err
		}
		r.cur, r.opens = s, r.opens+1
	}
	ev, err := r.cur.NextEvent(d)
	if err != nil {
		if err != ssetest.ErrTimeout {
			r.drop()
		}
		return ev, err
	}
	if ev.HasID {
		r.last = ev.ID
	}
	return ev, nil
}

// drop closes the stream open now, if any.
func (r *resumer) drop() {
	if r.cur != nil {
		r.cur.Close()
		r.cur = nil
	}
}

// ssebridgeConns counts, per node, the connections named ssebridge, and
// those of them in pub/sub.
func ssebridgeConns(t *testing.T, rc *redistest.Cluster) (all, pubsub []int) {
	t.Helper()
	for _, n := range rc.Nodes {
		list, err := n.Client().ClientList(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		a, p := 0, 0
		for _, line := range strings.Split(list, "\n") {
			if !strings.Contains(line, " name=ssebridge ") {
				continue
			}
			a++
			if strings.Contains(line, " flags=P ") {
				p++
			}
		}
		all, pubsub = append(all, a), append(pubsub, p)
	}
	return all, pubsub
}

// TestClusterConnections: CLIENT LIST on each master shows the same
// number of an instance's connections with 10 streams and with 500 (each
// with a user and a room of its own: a thousand channels), pub/sub
// included: connections are per node and partition, not per stream or
// channel.
func TestClusterConnections(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	// Without presence: its flush, a pipeline per node beside the
	// openings' session reads, may take one more of the pool's
	// connections (never past REDIS_POOL_SIZE) once there are streams
	// enough to overlap, which this count would take for growth.
	url, _ := startClusterApp(t, rc, map[string]string{"PRESENCE": "false"})
	for i := range 10 {
		openCluster(t, cc, url, fmt.Sprintf("c%d", i), fmt.Sprintf("room%d", i))
	}
	all10, ps10 := ssebridgeConns(t, rc)
	for i := 10; i < 500; i++ {
		openCluster(t, cc, url, fmt.Sprintf("c%d", i), fmt.Sprintf("room%d", i))
	}
	all500, ps500 := ssebridgeConns(t, rc)
	t.Logf("connections per master (pub/sub of them): 10 streams %v (%v), 500 streams %v (%v)", all10, ps10, all500, ps500)
	fmt.Printf("cluster connections per master: 10 streams %v (pub/sub %v); 500 streams %v (pub/sub %v)\n", all10, ps10, all500, ps500)
	for i := range all10 {
		if all10[i] != all500[i] || ps10[i] != ps500[i] {
			t.Fatalf("master %d: %d connections (%d pub/sub) with 10 streams, %d (%d) with 500", i, all10[i], ps10[i], all500[i], ps500[i])
		}
	}
}

// TestClusterGapRecovery cuts the instance's pub/sub connections on every
// master and keeps them from coming back while durable events are
// published on channels of all three: once they are back, the open stream
// gets every one, once, in order per channel, without reconnecting.
func TestClusterGapRecovery(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	const parts = 16
	url, _ := startClusterApp(t, rc, map[string]string{"HEARTBEAT_INTERVAL": "100ms"})
	channels := []string{"user:alice", "room:lobby", "room:r0", "room:r1", "room:r2", "broadcast"}
	masters := map[string]bool{}
	nodes := map[string]string{} // channel → its master, known before the cut
	for _, ch := range channels {
		nodes[ch] = nodeOf(t, rc, cc, ch, parts).Addr
		masters[nodes[ch]] = true
	}
	if len(masters) != 3 {
		t.Fatalf("the channels are on %d masters, want 3", len(masters))
	}
	s := openCluster(t, cc, url, "alice", "lobby", "r0", "r1", "r2")
	if _, err := clusterPublish(cc, parts, "room:lobby", `{"event":"n","data":"0"}`); err != nil {
		t.Fatal(err)
	}
	want(t, s, "n", "0")

	ctx := context.Background()
	admins := map[string]*redis.Conn{}
	for _, n := range rc.Nodes {
		admin := n.Client().Conn()
		t.Cleanup(func() { admin.Close() })
		admins[n.Addr] = admin
		if err := admin.ConfigSet(ctx, "requirepass", "gap").Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, admin := range admins {
		if err := admin.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "readyz to report the gap", func() bool {
		resp, err := http.Get(url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 503
	})
	var sent []string
	for i := 1; i <= 30; i++ {
		ch := channels[i%len(channels)]
		k := wire.Partition(ch, parts)
		tag := "sse:{p" + strconv.Itoa(k) + "}:"
		admin := admins[nodes[ch]]
		data := fmt.Sprintf("%s/%d", ch, i)
		err := redis.NewScript(store.ClusterPublishScript).Run(ctx, admin,
			[]string{tag + ch + ":history"},
			tag+ch, fmt.Sprintf(`{"event":"n","data":%q}`, data), parts).Err()
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, data)
	}
	for _, admin := range admins {
		if err := admin.ConfigSet(ctx, "requirepass", "").Err(); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]int{}
	prev := map[string]int{}
	for range sent {
		ev, err := s.NextEvent(15 * time.Second)
		if err != nil || ev.Event != "n" {
			t.Fatalf("got %+v %v; want the events published during the gap (%d of %d so far)", ev, err, len(got), len(sent))
		}
		ch, n, _ := strings.Cut(ev.Data, "/")
		i, _ := strconv.Atoi(n)
		if i <= prev[ch] {
			t.Fatalf("%s: event %d after %d", ch, i, prev[ch])
		}
		prev[ch] = i
		got[ev.Data]++
	}
	for _, d := range sent {
		if got[d] != 1 {
			t.Errorf("%s delivered %d times", d, got[d])
		}
	}
	// A partition's recovery counts its events once it has delivered them
	// all: the count may come just after the last event.
	eventually(t, 5*time.Second, fmt.Sprintf("ssebridge_events_recovered_total to reach %d", len(sent)), func() bool {
		return metricAt(t, url, "ssebridge_events_recovered_total") == float64(len(sent))
	})
	if _, err := clusterPublish(cc, parts, "room:lobby", `{"event":"n","data":"after"}`); err != nil {
		t.Fatal(err)
	}
	want(t, s, "n", "after")
}

// TestClusterIDSize measures the Last-Event-ID of streams with 1, 10 and
// 100 rooms, each sent an event on every one of its channels: on a fresh
// deployment, where partitions without events are at 0 (far from the
// newest position: long), and once every partition has had an event (the
// usual case of a deployment in use: short distances).
func TestClusterIDSize(t *testing.T) {
	for _, warm := range []bool{false, true} {
		t.Run(fmt.Sprintf("every partition used %v", warm), func(t *testing.T) {
			rc := redistest.StartCluster(t, 3)
			cc := rc.Client()
			const parts = 16
			url, _ := startClusterApp(t, rc, nil)
			if warm {
				for k, i := 0, 0; k < parts; i++ {
					if ch := fmt.Sprintf("room:warm%d", i); wire.Partition(ch, parts) == k {
						if _, err := clusterPublish(cc, parts, ch, `{"data":0}`); err != nil {
							t.Fatal(err)
						}
						k++
					}
				}
			}
			deployment := "fresh"
			if warm {
				deployment = "every partition used"
			}
			for _, n := range []int{1, 10, 100} {
				var rooms []string
				for i := range n {
					rooms = append(rooms, fmt.Sprintf("r%d-%d", n, i))
				}
				user := fmt.Sprintf("size%d", n)
				s := openCluster(t, cc, url, user, rooms...)
				channels := []string{"user:" + user, "broadcast"}
				for _, r := range rooms {
					channels = append(channels, "room:"+r)
				}
				for _, ch := range channels {
					if _, err := clusterPublish(cc, parts, ch, `{"event":"n","data":1}`); err != nil {
						t.Fatal(err)
					}
				}
				var id string
				for range channels {
					ev, err := s.NextEvent(5 * time.Second)
					if err != nil {
						t.Fatal(err)
					}
					id = ev.ID
				}
				t.Logf("%d rooms: %d bytes: %s", n, len(id), id)
				fmt.Printf("cluster id size, %s, %d rooms: %d bytes\n", deployment, n, len(id))
			}
		})
	}
}

// TestClusterPublishCommand: `ssebridge publish -cluster` publishes a
// durable event that a stream on the cluster gets; CLUSTER_PARTITIONS
// other than the deployment's is refused.
func TestClusterPublishCommand(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	url, _ := startClusterApp(t, rc, nil)
	s := openCluster(t, cc, url, "alice", "lobby")
	stdout, stderr, code := runCommand(t, nil, "publish", "-cluster", rc.Addrs(), "-channel", "room:lobby", "-event", "chat", "-data", `{"text":"hi"}`)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := wire.ParseCursor(strings.TrimSpace(stdout)); err != nil {
		t.Fatalf("printed %q: %v", stdout, err)
	}
	want(t, s, "chat", `{"text":"hi"}`)
	if _, stderr, code := runCommand(t, nil, "publish", "-cluster", rc.Addrs(), "-partitions", "8", "-channel", "room:lobby", "-data", "x"); code != 1 ||
		!strings.Contains(stderr, "partitions") {
		t.Fatalf("with -partitions 8: exit %d: %s", code, stderr)
	}
	// An instance with another partition count does not start.
	_, stderr, code = runCommand(t, map[string]string{"REDIS_CLUSTER_ADDRS": rc.Addrs(), "LISTEN_ADDR": "127.0.0.1:0", "CLUSTER_PARTITIONS": "8"})
	if code != 1 || !strings.Contains(stderr, store.ErrPartitions.Error()) {
		t.Fatalf("an instance with CLUSTER_PARTITIONS=8 on a deployment of 16: exit %d: %s", code, stderr)
	}
}

// TestClusterSlotMove: the slot of a stream's channels moves to another
// master, keys and all, while durable events are published on them. Redis
// unsubscribes the instance from the slot's shard channels itself; the
// instance subscribes again on the new master and recovers what it missed,
// so the stream (resuming by its id if it was told to) gets every event
// once, in order, and events published after the move arrive live.
func TestClusterSlotMove(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	const parts = 16
	url, _ := startClusterApp(t, rc, nil)
	slot := slotOf(t, cc, "room:lobby", parts)
	from := rc.NodeOfSlot(slot)
	to := rc.Nodes[0]
	if to == from {
		to = rc.Nodes[1]
	}
	r := openResumer(t, cc, url, "slotmove")

	var refused atomic.Int64
	publish := func(i int) {
		t.Helper()
		for try := 0; ; try++ {
			_, err := clusterPublish(cc, parts, "room:lobby", fmt.Sprintf(`{"event":"n","data":%d}`, i))
			if err == nil {
				return
			}
			refused.Add(1)
			t.Logf("publish %d refused: %v", i, err)
			if try > 100 {
				t.Fatalf("publish %d: %v", i, err)
			}
			time.Sleep(20 * time.Millisecond) // keys between nodes: a backend retries
		}
	}
	var got []int
	read := func(upTo int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for len(got) == 0 || got[len(got)-1] < upTo {
			if time.Now().After(deadline) {
				t.Fatalf("got %d events, the last %v; want up to %d", len(got), got[max(0, len(got)-3):], upTo)
			}
			ev, err := r.next(10 * time.Second)
			if err != nil {
				r.drop() // told to reconnect (or silent too long): resume by the id
				continue
			}
			if ev.Event == "n" {
				i, _ := strconv.Atoi(ev.Data)
				got = append(got, i)
			}
		}
	}

	for i := 1; i <= 50; i++ {
		publish(i)
	}
	read(50)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 51; i <= 150; i++ {
			publish(i)
		}
	}()
	rc.MoveSlot(slot, to)
	<-done
	if n := rc.NodeOfSlot(slot); n != to {
		t.Fatalf("slot %d is on %s, want %s", slot, n.Addr, to.Addr)
	}
	read(150)
	before := r.opens
	for i := 151; i <= 160; i++ {
		publish(i)
	}
	read(160)
	if r.opens != before {
		t.Errorf("the stream reconnected to get the events published after the move: they did not arrive live")
	}
	t.Logf("streams opened: %d; publishes refused: %d", r.opens, refused.Load())
	for i, n := range got {
		if n != i+1 {
			t.Fatalf("event %d is %d: want 1..160 once, in order (%v)", i, n, got[max(0, i-3):min(len(got), i+3)])
		}
	}
	if len(got) != 160 {
		t.Fatalf("got %d events, want 160", len(got))
	}
}

// TestClusterFailover: three masters with a replica each; the master of a
// stream's room is killed (SIGKILL) and its replica promoted by the
// cluster while durable events are published on the stream's channels.
// The open stream (resuming by its id when told to) gets every event
// acknowledged after the failover once, in order per channel, none twice;
// it measures how long publishing on the lost slot was refused.
func TestClusterFailover(t *testing.T) {
	t.Parallel() // mostly waiting: see e2e/README.md
	if testing.Short() {
		t.Skip("-short: skipping the failover")
	}
	rc := redistest.StartClusterReplicas(t, 3, 1)
	cc := rc.Client()
	const parts = 16
	url, _ := startClusterApp(t, rc, nil)
	slot := slotOf(t, cc, "room:lobby", parts)
	victim := rc.NodeOfSlot(slot)

	type acked struct {
		m     msg
		after bool // acknowledged after the failover was over
	}
	var (
		mu        sync.Mutex
		sent      []acked
		got       []msg
		recovered atomic.Bool
		killedAt  time.Time
		downFor   time.Duration
	)
	// The stream starts before the first event: every one is owed to it.
	r := openResumer(t, cc, url, "failover")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		channels := []string{"room:lobby", "user:alice", "broadcast"}
		for seq := 0; ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			ch := channels[seq%len(channels)]
			for try := 0; ; try++ {
				_, err := clusterPublish(cc, parts, ch, fmt.Sprintf(`{"event":"n","data":{"c":%q,"s":%d}}`, ch, seq))
				if err == nil {
					break
				}
				if try > 600 {
					t.Errorf("publish failed for 30s: %v", err)
					return
				}
				if try%40 == 39 {
					t.Logf("publish on %s still refused: %v", ch, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			mu.Lock()
			if !killedAt.IsZero() && ch == "room:lobby" && !recovered.Load() {
				downFor = time.Since(killedAt)
				recovered.Store(true)
			}
			sent = append(sent, acked{msg{ch, seq}, recovered.Load()})
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	})

	readUntil := func(done func() bool, within time.Duration) {
		deadline := time.Now().Add(within)
		for !done() && time.Now().Before(deadline) {
			ev, err := r.next(500 * time.Millisecond)
			if err != nil {
				continue
			}
			if ev.Event == "n" {
				var d struct {
					C string
					S int
				}
				_ = json.Unmarshal([]byte(ev.Data), &d)
				mu.Lock()
				got = append(got, msg{d.C, d.S})
				mu.Unlock()
			}
		}
	}
	readUntil(func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 30 }, 10*time.Second)
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	victim.Stop()
	t.Logf("killed the master %s of slot %d", victim.Addr, slot)
	readUntil(func() bool { return recovered.Load() }, 30*time.Second)
	if !recovered.Load() {
		t.Fatal("no publish on the lost slot went through within 30s")
	}
	readUntil(func() bool { return false }, 2*time.Second)
	close(stop)
	wg.Wait()
	mu.Lock()
	want := len(sent)
	mu.Unlock()
	seen := map[msg]bool{}
	readUntil(func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, a := range sent {
			if a.after && !contains(got, a.m) {
				return false
			}
		}
		return true
	}, 15*time.Second)

	mu.Lock()
	defer mu.Unlock()
	prev := map[string]int{}
	for _, m := range got {
		if seen[m] {
			t.Errorf("%v delivered twice", m)
		}
		if p, ok := prev[m.ch]; ok && m.seq < p {
			t.Errorf("%s: %d after %d", m.ch, m.seq, p)
		}
		seen[m], prev[m.ch] = true, m.seq
	}
	lostAfter, lostBefore, after := 0, 0, 0
	for _, a := range sent {
		if a.after {
			after++
		}
		if !seen[a.m] {
			if a.after {
				lostAfter++
			} else {
				lostBefore++
			}
			t.Logf("lost: %v (acknowledged after the failover: %v)", a.m, a.after)
		}
	}
	t.Logf("failover: publishing on the lost slot refused for %v; %d events acknowledged (%d after the failover), %d delivered; lost: %d acknowledged before the failover, %d after",
		downFor.Round(time.Millisecond), want, after, len(got), lostBefore, lostAfter)
	fmt.Printf("cluster failover: slot refused for %v, acknowledged=%d after=%d delivered=%d lost_before=%d lost_after=%d\n",
		downFor.Round(time.Millisecond), want, after, len(got), lostBefore, lostAfter)
	if lostAfter != 0 || after == 0 {
		t.Fatalf("%d of the %d events acknowledged after the failover lost", lostAfter, after)
	}
}

func contains(ms []msg, m msg) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

// TestClusterRefusedPartitionsWriteNothing: an instance started with
// another CLUSTER_PARTITIONS (and other history settings) than a running
// deployment of 16 exits non-zero, and leaves every partition's config
// byte for byte as it was: it reads them all before writing any.
func TestClusterRefusedPartitionsWriteNothing(t *testing.T) {
	rc := redistest.StartCluster(t, 3)
	cc := rc.Client()
	ctx := context.Background()
	const parts = 16
	startClusterApp(t, rc, nil)
	dump := func() map[string]string {
		t.Helper()
		out := map[string]string{}
		for k := range 2 * parts { // the partitions of P=32 too
			key := "sse:{p" + strconv.Itoa(k) + "}:config"
			v, err := cc.Dump(ctx, key).Result()
			if err != nil && err != redis.Nil {
				t.Fatal(err)
			}
			out[key] = v
		}
		return out
	}
	before := dump()
	for k := range parts {
		if before["sse:{p"+strconv.Itoa(k)+"}:config"] == "" {
			t.Fatalf("partition %d has no config", k)
		}
	}
	for _, p := range []string{"8", "32"} {
		t.Run("CLUSTER_PARTITIONS="+p, func(t *testing.T) {
			_, stderr, code := runCommand(t, map[string]string{"REDIS_CLUSTER_ADDRS": rc.Addrs(), "LISTEN_ADDR": "127.0.0.1:0",
				"CLUSTER_PARTITIONS": p, "HISTORY_MAXLEN": "7", "HISTORY_TTL": "77s", "MAX_EVENT_BYTES": "777"})
			if code == 0 || !strings.Contains(stderr, store.ErrPartitions.Error()) {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			after := dump()
			for key, v := range before {
				if after[key] != v {
					t.Errorf("%s changed (DUMP differs): now %v", key, cc.HGetAll(ctx, key).Val())
				}
			}
		})
	}
}
