package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of masters only, on loopback, owned by one
// test: each node a redis-server with --cluster-enabled yes in its own
// directory, with AOF so that a restarted node comes back with its data.
type Cluster struct {
	t     testing.TB
	Nodes []*ClusterNode
}

// ClusterNode is one master of a Cluster.
type ClusterNode struct {
	t    testing.TB
	Port int
	Addr string
	dir  string
	cmd  *exec.Cmd
	// exited is closed once the process is gone.
	exited chan struct{}
}

// StartCluster runs n masters, joins them with redis-cli --cluster create
// (the slots split evenly), and waits until every node says cluster_state:ok.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartClusterReplicas(t, n, 0)
}

// StartClusterReplicas runs n masters with replicas replicas each (the
// first n nodes are the masters), and waits until every replica is in sync.
func StartClusterReplicas(t testing.TB, n, replicas int) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatal("redis-cli is not installed (apt-get install -y redis-tools)")
	}
	c := &Cluster{t: t}
	var addrs []string
	for range n * (1 + replicas) {
		// The cluster bus listens on port+10000, which may be taken: a
		// node that cannot start is tried again on another port.
		var node *ClusterNode
		for try := 0; node == nil; try++ {
			port := freePort(t)
			if port+10000 > 65535 {
				continue
			}
			node = &ClusterNode{t: t, Port: port, Addr: fmt.Sprintf("127.0.0.1:%d", port), dir: t.TempDir()}
			if err := node.start(); err != nil {
				node.Stop()
				if try == 4 {
					t.Fatal(err)
				}
				node = nil
			}
		}
		t.Cleanup(node.Stop)
		c.Nodes = append(c.Nodes, node)
		addrs = append(addrs, node.Addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitOK()
	if replicas > 0 {
		deadline := time.Now().Add(20 * time.Second)
		for _, node := range c.Nodes {
			cl := redis.NewClient(&redis.Options{Addr: node.Addr})
			for {
				info, _ := cl.Info(context.Background(), "replication").Result()
				if strings.Contains(info, "role:master") || strings.Contains(info, "master_link_status:up") {
					break
				}
				if time.Now().After(deadline) {
					cl.Close()
					t.Fatalf("replica %s not in sync within 20s", node.Addr)
				}
				time.Sleep(50 * time.Millisecond)
			}
			cl.Close()
		}
	}
	return c
}

// Addrs is the nodes' addresses as REDIS_CLUSTER_ADDRS takes them.
func (c *Cluster) Addrs() string {
	var a []string
	for _, n := range c.Nodes {
		a = append(a, n.Addr)
	}
	return strings.Join(a, ",")
}

// WaitOK waits until every node reports cluster_state:ok and agrees on
// every slot's master.
func (c *Cluster) WaitOK() {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr, MaxRetries: -1})
		for {
			info, err := cl.ClusterInfo(context.Background()).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				cl.Close()
				c.t.Fatalf("cluster node %s not ok within 20s: %v %s", n.Addr, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
		cl.Close()
	}
}

// Client returns a cluster client for the test's own commands.
func (c *Cluster) Client() *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(c.Addrs(), ","),
		// A backend's client: it must find a promoted replica within
		// seconds, not at go-redis's default minute.
		ClusterStateReloadInterval: time.Second})
	c.t.Cleanup(func() { cc.Close() })
	return cc
}

// NodeOfSlot returns the node that serves slot.
func (c *Cluster) NodeOfSlot(slot int) *ClusterNode {
	c.t.Helper()
	if nodes := c.nodesOfSlot(slot, "master"); len(nodes) > 0 {
		return nodes[0]
	}
	c.t.Fatalf("no node serves slot %d", slot)
	return nil
}

// ReplicasOfSlot returns the replicas of the master of slot that are not
// failed. (Redis 7.0 reports an in-sync replica as "loading" as long as
// its replication offset has not been gossiped.)
func (c *Cluster) ReplicasOfSlot(slot int) []*ClusterNode {
	c.t.Helper()
	return c.nodesOfSlot(slot, "replica")
}

// nodesOfSlot returns the online nodes of a role ("master", "replica") in
// the shard of slot.
func (c *Cluster) nodesOfSlot(slot int, role string) []*ClusterNode {
	c.t.Helper()
	// Asked of the first node that answers: one may be down.
	var shards []redis.ClusterShard
	var err error
	for _, n := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr, MaxRetries: -1})
		shards, err = cl.ClusterShards(context.Background()).Result()
		cl.Close()
		if err == nil {
			break
		}
	}
	if err != nil {
		c.t.Fatal(err)
	}
	var out []*ClusterNode
	for _, s := range shards {
		for _, r := range s.Slots {
			if r.Start > int64(slot) || int64(slot) > r.End {
				continue
			}
			for _, sn := range s.Nodes {
				if sn.Role != role || sn.Health == "fail" || role == "master" && sn.Health != "online" {
					continue
				}
				for _, n := range c.Nodes {
					if sn.Port == int64(n.Port) {
						out = append(out, n)
					}
				}
			}
		}
	}
	return out
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start starts the node again after Stop, with its data and its cluster
// config.
func (n *ClusterNode) Start() {
	n.t.Helper()
	if err := n.start(); err != nil {
		n.t.Fatal(err)
	}
}

func (n *ClusterNode) start() error {
	n.cmd = exec.Command("redis-server",
		"--port", strconv.Itoa(n.Port), "--bind", "127.0.0.1",
		"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", "2000",
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", n.dir,
		"--logfile", "redis.log")
	n.cmd.Stdout, n.cmd.Stderr = os.Stderr, os.Stderr
	if err := n.cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	exited := make(chan struct{})
	n.exited = exited
	go func(cmd *exec.Cmd) {
		_ = cmd.Wait()
		close(exited)
	}(n.cmd)
	c := redis.NewClient(&redis.Options{Addr: n.Addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		select {
		case <-exited:
			log, _ := os.ReadFile(n.dir + "/redis.log")
			return fmt.Errorf("redis-server on %s exited: %s", n.Addr, log)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s did not answer within 10s", n.Addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// Stop kills the node (SIGKILL) and waits for it.
func (n *ClusterNode) Stop() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.exited
	n.cmd = nil
}

// Freeze stops the node's process (SIGSTOP): it keeps its TCP connections
// and the kernel still accepts new ones, but it answers nothing, as a
// master hung or swapped out does. Thaw lets it go on; Stop kills it
// frozen or not.
func (n *ClusterNode) Freeze() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		n.t.Fatal(err)
	}
}

// Thaw lets a frozen node go on (SIGCONT).
func (n *ClusterNode) Thaw() {
	if n.cmd != nil {
		_ = n.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Client returns a plain client of this node (CLIENT LIST and the like).
func (n *ClusterNode) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: n.Addr})
	n.t.Cleanup(func() { c.Close() })
	return c
}

// ID is the node's cluster node id.
func (n *ClusterNode) ID() string {
	n.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: n.Addr})
	defer c.Close()
	id, err := c.Do(context.Background(), "CLUSTER", "MYID").Text()
	if err != nil {
		n.t.Fatal(err)
	}
	return id
}

// MoveSlot migrates slot, with its keys, from the node serving it to to,
// as redis-cli --cluster reshard does for each slot: IMPORTING on the
// target, MIGRATING on the source, MIGRATE of its keys, then SETSLOT NODE
// on every node.
func (c *Cluster) MoveSlot(slot int, to *ClusterNode) {
	c.t.Helper()
	m := c.StartMove(slot, to)
	m.Migrate()
	m.Finish()
}

// SlotMove is a migration of one slot under way, for a test that acts
// between its steps (MoveSlot runs all of them).
type SlotMove struct {
	c        *Cluster
	slot     int
	from, to *ClusterNode
	src      *redis.Client
}

// StartMove marks slot IMPORTING on to and MIGRATING on the node serving
// it: from then on the source serves only the keys it still has.
func (c *Cluster) StartMove(slot int, to *ClusterNode) *SlotMove {
	c.t.Helper()
	ctx := context.Background()
	from := c.NodeOfSlot(slot)
	if from == to {
		c.t.Fatalf("slot %d is on %s already", slot, to.Addr)
	}
	m := &SlotMove{c: c, slot: slot, from: from, to: to, src: redis.NewClient(&redis.Options{Addr: from.Addr})}
	c.t.Cleanup(func() { m.src.Close() })
	dst := redis.NewClient(&redis.Options{Addr: to.Addr})
	defer dst.Close()
	m.must(dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", from.ID()).Err())
	m.must(m.src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", to.ID()).Err())
	return m
}

func (m *SlotMove) must(err error) {
	m.c.t.Helper()
	if err != nil {
		m.c.t.Fatal(err)
	}
}

// Migrate moves keys to the target with MIGRATE, or, given none, every
// key the source still has in the slot (100 a MIGRATE).
func (m *SlotMove) Migrate(keys ...string) {
	m.c.t.Helper()
	ctx := context.Background()
	all := len(keys) == 0
	for {
		if all {
			var err error
			keys, err = m.src.ClusterGetKeysInSlot(ctx, m.slot, 100).Result()
			m.must(err)
		}
		if len(keys) == 0 {
			return
		}
		args := []any{"MIGRATE", "127.0.0.1", m.to.Port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		m.must(m.src.Do(ctx, args...).Err())
		if !all {
			return
		}
	}
}

// Finish assigns the slot to the target on every node.
func (m *SlotMove) Finish() {
	m.c.t.Helper()
	ctx := context.Background()
	for _, n := range m.c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr})
		m.must(cl.Do(ctx, "CLUSTER", "SETSLOT", m.slot, "NODE", m.to.ID()).Err())
		cl.Close()
	}
}
