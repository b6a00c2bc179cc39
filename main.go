// Command ssebridge carries a backend's events from Redis to browsers over
// Server-Sent Events. See README.md.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/caarlos0/env/v11"
	"github.com/redis/go-redis/v9"
)

func main() {
	if len(os.Args) > 1 {
		redis.SetLogger(newRedisLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
		os.Exit(command(os.Args[1], os.Args[2:], os.Stdout, os.Stderr))
	}
	cfg, err := loadConfig(env.ToMap(os.Environ()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "ssebridge: configuration:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	// go-redis logs by itself (dial errors); its logger is process-wide.
	redis.SetLogger(newRedisLogger(log))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("ssebridge stopped", "err", err)
		os.Exit(1)
	}
}
