package main

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"testing"

	"github.com/ssebridge/ssebridge/internal/ssetest"
)

// TestEmbeddedTryOut runs ssebridge as the README's first command does: no
// REDIS_URL, so an embedded Redis, and the /dev routes for the demo page.
func TestEmbeddedTryOut(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // where the try-out file goes
	cfg, err := loadConfig(map[string]string{"LISTEN_ADDR": "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr, done := make(chan string, 1), make(chan error, 1)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	go func() { done <- run(ctx, cfg, log, func(a string) { addr <- a }) }()
	base := "http://" + <-addr
	defer func() { cancel(); <-done }()

	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar}
	resp, err := client.PostForm(base+"/dev/login", url.Values{"user": {"alice"}, "rooms": {"lobby"}})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("login: %v %v", resp, err)
	}
	resp.Body.Close()
	u, _ := url.Parse(base)
	var cookie string
	for _, c := range jar.Cookies(u) {
		if c.Name == "sse_session" {
			cookie = c.Name + "=" + c.Value
		}
	}
	if cookie == "" {
		t.Fatal("login set no sse_session cookie")
	}
	s, err := ssetest.Open(ctx, base+"/events", http.Header{"Cookie": {cookie}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want(t, s, "ready", `{"user":"alice","rooms":["lobby"]}`)

	resp, err = client.PostForm(base+"/dev/publish", url.Values{"channel": {"room:lobby"}, "payload": {`{"event":"chat","data":"hi"}`}})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("publish: %v %v", resp, err)
	}
	resp.Body.Close()
	want(t, s, "chat", "hi")

	for path, status := range map[string]int{"/": 200, "/ssebridge.js": 200, "/healthz": 200} {
		resp, err := http.Get(base + path)
		if err != nil || resp.StatusCode != status {
			t.Errorf("GET %s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
}

func TestDevRoutesOffWithRealRedis(t *testing.T) {
	a := startApp(t, nil, nil)
	for _, path := range []string{"/dev/login", "/dev/publish"} {
		resp, err := http.PostForm(a.url+path, url.Values{"user": {"mallory"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Errorf("POST %s answered 200 with REDIS_URL set", path)
		}
	}
}
