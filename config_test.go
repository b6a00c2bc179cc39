package main

import (
	"errors"
	"os"
	"os/exec"
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
		{map[string]string{"LISTEN_ADDR": ":9000"}, ":9000"},
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

// TestLoadConfigREADME: the configuration error the README quotes is the
// one the binary prints.
func TestLoadConfigREADME(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary)
	cmd.Env = []string{"HEARTBEAT_INTERVAL=soon"}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v, want 2; output %s", err, out)
	}
	msg := strings.TrimSpace(string(out))
	if !strings.Contains(string(readme), "`"+msg+"`") {
		t.Fatalf("README.md does not quote the real message:\n%s", msg)
	}
}
