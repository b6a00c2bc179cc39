package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelOptions shape a Sentinel set-up.
type SentinelOptions struct {
	Master           string        // the name the sentinels monitor; default "mymaster"
	Replicas         int           // replicas besides the primary; default 1
	Sentinels        int           // default 3 (quorum: a majority)
	DownAfter        time.Duration // down-after-milliseconds; default 1s
	FailoverTimeout  time.Duration // failover-timeout; default 2s
	Password         string        // requirepass and masterauth of the data nodes; default "data-secret"
	SentinelPassword string        // requirepass of the sentinels; default "sentinel-secret"
}

// Sentinel is a primary, its replicas and the sentinels that monitor them,
// real processes on free loopback ports, all killed when the test ends.
type Sentinel struct {
	SentinelOptions
	t testing.TB
	// Nodes are the data nodes: Nodes[0] starts as the primary.
	Nodes []*Node
	// Watchers are the sentinel processes.
	Watchers []*Node
}

// Node is one redis-server process (a data node or a sentinel).
type Node struct {
	t        testing.TB
	Port     int
	Addr     string
	Dir      string
	args     []string
	password string
	cmd      *exec.Cmd
}

// StartSentinel starts the data nodes, replicas replicating from the
// primary, and the sentinels, and returns once every sentinel knows the
// primary, every replica in sync, and the other sentinels (a failover
// needs them to agree).
func StartSentinel(t testing.TB, o SentinelOptions) *Sentinel {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is not installed: the integration tests need a real one (apt-get install -y redis-server; .ci/run does it)")
	}
	s := &Sentinel{SentinelOptions: o.withDefaults(), t: t}
	s.startNodes()
	s.startWatchers()
	s.awaitWatchers()
	return s
}

// withDefaults fills in the options left zero.
func (o SentinelOptions) withDefaults() SentinelOptions {
	if o.Master == "" {
		o.Master = "mymaster"
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Sentinels == 0 {
		o.Sentinels = 3
	}
	if o.DownAfter == 0 {
		o.DownAfter = time.Second
	}
	if o.FailoverTimeout == 0 {
		o.FailoverTimeout = 2 * time.Second
	}
	if o.Password == "" {
		o.Password = "data-secret"
	}
	if o.SentinelPassword == "" {
		o.SentinelPassword = "sentinel-secret"
	}
	return o
}

// startNodes starts the primary, then the replicas replicating from it.
func (s *Sentinel) startNodes() {
	s.t.Helper()
	for i := 0; i <= s.Replicas; i++ {
		n := newNode(s.t, s.Password)
		n.args = []string{
			"--port", strconv.Itoa(n.Port), "--bind", "127.0.0.1", "--dir", n.Dir, "--logfile", "redis.log",
			// AOF, as a production node would have: a primary that comes
			// back after a crash comes back with its data (and is then
			// turned into a replica by the sentinels).
			"--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
			"--requirepass", s.Password, "--masterauth", s.Password,
			// A replica (re)joining is synced at once, not after 5 s.
			"--repl-diskless-sync-delay", "0",
		}
		if i > 0 {
			n.args = append(n.args, "--replicaof", "127.0.0.1", strconv.Itoa(s.Nodes[0].Port))
		}
		n.Start()
		s.Nodes = append(s.Nodes, n)
	}
}

// startWatchers starts the sentinels, each monitoring the primary with a
// quorum of a majority of them.
func (s *Sentinel) startWatchers() {
	s.t.Helper()
	for range s.Sentinels {
		n := newNode(s.t, s.SentinelPassword)
		conf := fmt.Sprintf(`port %d
bind 127.0.0.1
dir %s
logfile sentinel.log
requirepass %s
sentinel sentinel-pass %s
sentinel monitor %s 127.0.0.1 %d %d
sentinel auth-pass %s %s
sentinel down-after-milliseconds %s %d
sentinel failover-timeout %s %d
sentinel parallel-syncs %s 1
`, n.Port, n.Dir, s.SentinelPassword, s.SentinelPassword,
			s.Master, s.Nodes[0].Port, s.Sentinels/2+1, s.Master, s.Password,
			s.Master, s.DownAfter.Milliseconds(), s.Master, s.FailoverTimeout.Milliseconds(), s.Master)
		// Sentinel rewrites its configuration file: it must be its own.
		path := filepath.Join(n.Dir, "sentinel.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			s.t.Fatal(err)
		}
		n.args = []string{path, "--sentinel"}
		n.Start()
		s.Watchers = append(s.Watchers, n)
	}
}

// awaitWatchers waits, 30 s at most, until every sentinel knows the other
// sentinels and every replica in sync. Awaited, not slept on: sentinels
// find the replicas through the primary's INFO and each other through its
// hello channel (every 2 s).
func (s *Sentinel) awaitWatchers() {
	s.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for _, w := range s.Watchers {
		c := w.Client()
		for {
			peers, _ := c.Do(ctx, "SENTINEL", "SENTINELS", s.Master).Slice()
			replicas, _ := c.Do(ctx, "SENTINEL", "REPLICAS", s.Master).Slice()
			synced := 0
			for _, r := range replicas {
				if m := fieldMap(r); m["master-link-status"] == "ok" && !strings.Contains(m["flags"], "down") {
					synced++
				}
			}
			if len(peers) == s.Sentinels-1 && synced == s.Replicas {
				break
			}
			if time.Now().After(deadline) {
				s.t.Fatalf("sentinel %s: knows %d other sentinels and %d synced replicas after 30s, want %d and %d",
					w.Addr, len(peers), synced, s.Sentinels-1, s.Replicas)
			}
			time.Sleep(50 * time.Millisecond)
		}
		c.Close()
	}
}

// fieldMap reads one entry of SENTINEL REPLICAS or SENTINELS (a flat list
// of names and values, or a map with RESP3).
func fieldMap(v any) map[string]string {
	m := map[string]string{}
	switch v := v.(type) {
	case []any:
		for i := 0; i+1 < len(v); i += 2 {
			m[fmt.Sprint(v[i])] = fmt.Sprint(v[i+1])
		}
	case map[any]any:
		for k, x := range v {
			m[fmt.Sprint(k)] = fmt.Sprint(x)
		}
	case map[string]any:
		for k, x := range v {
			m[k] = fmt.Sprint(x)
		}
	}
	return m
}

func newNode(t testing.TB, password string) *Node {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	n := &Node{t: t, Port: port, Addr: fmt.Sprintf("127.0.0.1:%d", port), Dir: t.TempDir(), password: password}
	t.Cleanup(n.Kill)
	return n
}

// SentinelAddrs are the sentinels' addresses, as REDIS_SENTINEL_ADDRS takes them.
func (s *Sentinel) SentinelAddrs() []string {
	var a []string
	for _, w := range s.Watchers {
		a = append(a, w.Addr)
	}
	return a
}

// FailoverClient returns go-redis's failover client for the set-up, closed
// when the test ends; opts may change its options before it is made.
func (s *Sentinel) FailoverClient(opts func(*redis.FailoverOptions)) *redis.Client {
	o := &redis.FailoverOptions{
		MasterName: s.Master, SentinelAddrs: s.SentinelAddrs(),
		SentinelPassword: s.SentinelPassword, Password: s.Password,
	}
	if opts != nil {
		opts(o)
	}
	c := redis.NewFailoverClient(o)
	s.t.Cleanup(func() { c.Close() })
	return c
}

// MasterAddr is where the first sentinel that answers says the primary is.
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	var err error
	for _, w := range s.Watchers {
		c := w.Client()
		var a []string
		a, err = c.Do(ctx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.Master).StringSlice()
		c.Close()
		if err == nil && len(a) == 2 {
			return net.JoinHostPort(a[0], a[1]), nil
		}
	}
	return "", fmt.Errorf("no sentinel named the primary: %v", err)
}

// Node returns the data node at addr, or nil.
func (s *Sentinel) Node(addr string) *Node {
	for _, n := range s.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// Start starts the node's process (again, with its data), and waits until
// it answers.
func (n *Node) Start() {
	n.t.Helper()
	n.cmd = exec.Command("redis-server", n.args...)
	n.cmd.Stdout, n.cmd.Stderr = os.Stderr, os.Stderr
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal("starting redis-server:", err)
	}
	c := redis.NewClient(&redis.Options{Addr: n.Addr, Password: n.password, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			n.t.Fatalf("redis-server %s did not answer within 10s", n.Addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Kill kills the process with SIGKILL, as abrupt as a crash, and waits for it.
func (n *Node) Kill() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	_ = n.cmd.Wait()
	n.cmd = nil
}

// Client returns a plain client for this one node (with its password); the
// caller closes it.
func (n *Node) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: n.Addr, Password: n.password})
}
