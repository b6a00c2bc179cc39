package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoadConfig(t *testing.T) {
	cfg, err := loadConfig(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SessionCookie != "sse_session" || cfg.HeartbeatInterval != 15*time.Second || cfg.StreamQueue != 256 ||
		cfg.MaxEventBytes != 65536 || cfg.MaxStreamsPerUser != 16 || cfg.MaxStreams != 100000 || cfg.ListenAddr != "127.0.0.1:8080" {
		t.Errorf("defaults (try-out mode: loopback only): %+v", cfg)
	}
	for _, tt := range []struct {
		environ map[string]string
		listen  string
	}{
		{map[string]string{"REDIS_URL": "redis://127.0.0.1:6379"}, ":8080"},
		{map[string]string{"LISTEN_ADDR": "127.0.0.1:9000"}, "127.0.0.1:9000"},
	} {
		if cfg, err := loadConfig(tt.environ); err != nil || cfg.ListenAddr != tt.listen {
			t.Errorf("%v: LISTEN_ADDR %q, %v; want %q", tt.environ, cfg.ListenAddr, err, tt.listen)
		}
	}
	cfg, err = loadConfig(map[string]string{"SESSION_COOKIE": "nodejskey", "ALLOWED_ORIGINS": "https://a.example,http://b.example:8000"})
	if err != nil || cfg.SessionCookie != "nodejskey" || len(cfg.AllowedOrigins) != 2 {
		t.Errorf("seed setup: %+v %v", cfg, err)
	}

	for _, tt := range []struct{ name, value, wantInErr string }{
		{"HEARTBEAT_INTERVAL", "soon", "HEARTBEAT_INTERVAL"},
		{"MAX_STREAMS", "many", "MAX_STREAMS"},
		{"STREAM_QUEUE", "0", "STREAM_QUEUE must be greater than zero"},
		{"SHUTDOWN_TIMEOUT", "-1s", "SHUTDOWN_TIMEOUT must be greater than zero"},
		{"PRESENCE_GRACE", "-1s", "PRESENCE_GRACE must not be negative"},
		{"PRESENCE_ROOM_INTERVAL", "-1ms", "PRESENCE_ROOM_INTERVAL must not be negative"},
		{"PRESENCE_TTL", "200ms", "PRESENCE_TTL (200ms) must be at least three PRESENCE_FLUSH (100ms)"},
		{"PRESENCE_PAGE_MAX", "0", "PRESENCE_PAGE_MAX must be greater than zero"},
		{"LOG_LEVEL", "chatty", "LOG_LEVEL"},
		{"ALLOWED_ORIGINS", "app.example.com", "ALLOWED_ORIGINS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(map[string]string{tt.name: tt.value})
			if err == nil || !strings.Contains(err.Error(), tt.wantInErr) {
				t.Fatalf("%s=%q: error %v, want it to name %q", tt.name, tt.value, err, tt.wantInErr)
			}
		})
	}
}

func TestSentinelConfig(t *testing.T) {
	cfg, err := loadConfig(map[string]string{"REDIS_SENTINEL_ADDRS": " 10.0.0.1:26379, s2:26379,", "REDIS_SENTINEL_MASTER": "mymaster",
		"REDIS_SENTINEL_PASSWORD": "s", "REDIS_PASSWORD": "d", "DURABLE_WAIT_REPLICAS": "1"})
	if err != nil || !slices.Equal(cfg.RedisSentinelAddrs, []string{"10.0.0.1:26379", "s2:26379"}) || cfg.DurableWaitTimeout != time.Second {
		t.Fatalf("sentinel config: %+v %v", cfg, err)
	}
	for _, tt := range []struct {
		name    string
		environ map[string]string
		errHas  []string
	}{
		{"both", map[string]string{"REDIS_URL": "redis://r:6379", "REDIS_SENTINEL_ADDRS": "s:26379", "REDIS_SENTINEL_MASTER": "m"}, []string{"REDIS_URL", "REDIS_SENTINEL_ADDRS", "exclusive"}},
		{"no master", map[string]string{"REDIS_SENTINEL_ADDRS": "s:26379"}, []string{"REDIS_SENTINEL_MASTER"}},
		{"master alone", map[string]string{"REDIS_SENTINEL_MASTER": "m"}, []string{"REDIS_SENTINEL_ADDRS"}},
		{"not host:port", map[string]string{"REDIS_SENTINEL_ADDRS": "s26379", "REDIS_SENTINEL_MASTER": "m"}, []string{"REDIS_SENTINEL_ADDRS", "s26379"}},
		{"password for the embedded server", map[string]string{"REDIS_PASSWORD": "x"}, []string{"REDIS_PASSWORD"}},
		{"negative wait", map[string]string{"DURABLE_WAIT_REPLICAS": "-1"}, []string{"DURABLE_WAIT_REPLICAS"}},
		{"wait on the embedded server", map[string]string{"DURABLE_WAIT_REPLICAS": "1"}, []string{"DURABLE_WAIT_REPLICAS", "REDIS_URL"}},
		{"zero wait timeout", map[string]string{"REDIS_URL": "redis://r:6379", "DURABLE_WAIT_REPLICAS": "1", "DURABLE_WAIT_TIMEOUT": "0s"}, []string{"DURABLE_WAIT_TIMEOUT"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(tt.environ)
			for _, want := range tt.errHas {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("error %v, want one naming %q", err, want)
				}
			}
		})
	}
}

func TestTLSConfig(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"TLS_CERT_FILE": "/x/cert.pem"}, "TLS_KEY_FILE must be set too"},
		{map[string]string{"TLS_KEY_FILE": "/x/key.pem"}, "TLS_CERT_FILE must be set too"},
	} {
		if _, err := loadConfig(tc.env); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("loadConfig(%v): %v, want an error with %q", tc.env, err, tc.want)
		}
	}
	if cfg, err := loadConfig(map[string]string{}); err != nil || cfg.TLSCertFile != "" {
		t.Fatalf("neither set: %v %+v", err, cfg)
	}
}

// TestClusterConfig: REDIS_CLUSTER_ADDRS is exclusive with the other
// topologies, CLUSTER_PARTITIONS is bounded, DURABLE_WAIT_* are checked as
// with one Redis.
func TestClusterConfig(t *testing.T) {
	for _, c := range []struct {
		vars map[string]string
		want string
	}{
		{map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "REDIS_URL": "redis://x:6379"}, "exclusive"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "REDIS_SENTINEL_ADDRS": "b:2", "REDIS_SENTINEL_MASTER": "m"}, "exclusive"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": "nohost"}, "REDIS_CLUSTER_ADDRS"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "CLUSTER_PARTITIONS": "0"}, "CLUSTER_PARTITIONS"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "CLUSTER_PARTITIONS": "1025"}, "CLUSTER_PARTITIONS"},
		// wire.MaxPartitions: beyond it an id could outgrow a header line (wire's TestVectorIDSize).
		{map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "CLUSTER_PARTITIONS": "257"}, "CLUSTER_PARTITIONS must be between 1 and 256"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "DURABLE_WAIT_REPLICAS": "-1"}, "DURABLE_WAIT_REPLICAS"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "DURABLE_WAIT_REPLICAS": "1", "DURABLE_WAIT_TIMEOUT": "0s"}, "DURABLE_WAIT_TIMEOUT"},
	} {
		if _, err := loadConfig(c.vars); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error naming %s", c.vars, err, c.want)
		}
	}
	cfg, err := loadConfig(map[string]string{"REDIS_CLUSTER_ADDRS": " a:1, b:2 ,"})
	if err != nil || len(cfg.RedisClusterAddrs) != 2 || cfg.ClusterPartitions != 16 || cfg.ListenAddr != ":8080" {
		t.Errorf("%+v %v", cfg.RedisClusterAddrs, err)
	}
	if _, err := loadConfig(map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "CLUSTER_PARTITIONS": "256"}); err != nil {
		t.Errorf("CLUSTER_PARTITIONS=256: %v", err)
	}
	if _, err := loadConfig(map[string]string{"REDIS_CLUSTER_ADDRS": "a:1", "DURABLE_WAIT_REPLICAS": "1"}); err != nil {
		t.Errorf("DURABLE_WAIT_REPLICAS with REDIS_CLUSTER_ADDRS: %v", err)
	}
}

// TestTryOutConfig: the try-out (no Redis named) starts only on purpose: a
// Redis variable set but empty, as a template with a missing secret leaves
// it, stops the start, and so does the try-out on an address beyond
// loopback, since its /dev routes log anyone in.
func TestTryOutConfig(t *testing.T) {
	for _, tt := range []struct {
		name    string
		environ map[string]string
		listen  string   // with no error
		errHas  []string // else
	}{
		{"nothing set", map[string]string{}, "127.0.0.1:8080", nil},
		{"loopback", map[string]string{"LISTEN_ADDR": "127.0.0.1:9000"}, "127.0.0.1:9000", nil},
		{"other loopback address", map[string]string{"LISTEN_ADDR": "127.0.0.2:9000"}, "127.0.0.2:9000", nil},
		{"localhost", map[string]string{"LISTEN_ADDR": "localhost:9000"}, "localhost:9000", nil},
		{"IPv6 loopback", map[string]string{"LISTEN_ADDR": "[::1]:9000"}, "[::1]:9000", nil},
		{"REDIS_URL empty", map[string]string{"REDIS_URL": ""}, "", []string{"REDIS_URL", "empty", "unset"}},
		{"REDIS_URL blank", map[string]string{"REDIS_URL": "  "}, "", []string{"REDIS_URL", "empty"}},
		{"REDIS_SENTINEL_ADDRS empty", map[string]string{"REDIS_SENTINEL_ADDRS": ""}, "", []string{"REDIS_SENTINEL_ADDRS", "empty"}},
		{"REDIS_CLUSTER_ADDRS only commas", map[string]string{"REDIS_CLUSTER_ADDRS": " , "}, "", []string{"REDIS_CLUSTER_ADDRS", "empty"}},
		{"all interfaces", map[string]string{"LISTEN_ADDR": "0.0.0.0:8080"}, "", []string{"LISTEN_ADDR", "loopback", "REDIS_URL"}},
		{"no host", map[string]string{"LISTEN_ADDR": ":9000"}, "", []string{"LISTEN_ADDR", "loopback"}},
		{"IPv6 all interfaces", map[string]string{"LISTEN_ADDR": "[::]:9000"}, "", []string{"LISTEN_ADDR", "loopback"}},
		{"a LAN address", map[string]string{"LISTEN_ADDR": "192.168.1.10:8080"}, "", []string{"LISTEN_ADDR", "loopback"}},
		{"a host name", map[string]string{"LISTEN_ADDR": "devbox:8080"}, "", []string{"LISTEN_ADDR", "loopback"}},
		// With a Redis named there are no /dev routes, and an empty
		// variable of another topology is left over from a template.
		{"REDIS_URL, all interfaces", map[string]string{"REDIS_URL": "redis://r:6379", "LISTEN_ADDR": "0.0.0.0:8080"}, "0.0.0.0:8080", nil},
		{"sentinel, REDIS_URL empty", map[string]string{"REDIS_URL": "", "REDIS_SENTINEL_ADDRS": "s:26379", "REDIS_SENTINEL_MASTER": "m"}, ":8080", nil},
		{"REDIS_URL, REDIS_CLUSTER_ADDRS empty", map[string]string{"REDIS_URL": "redis://r:6379", "REDIS_CLUSTER_ADDRS": ""}, ":8080", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadConfig(tt.environ)
			if tt.errHas == nil {
				if err != nil || cfg.ListenAddr != tt.listen {
					t.Fatalf("LISTEN_ADDR %q, %v; want %q and no error", cfg.ListenAddr, err, tt.listen)
				}
				return
			}
			for _, want := range tt.errHas {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("error %v, want one naming %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error on more than one line: %q", err)
			}
		})
	}
}
