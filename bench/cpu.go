package main

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// clockTick is the unit of /proc/<pid>/stat's times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuTime is the CPU a process has used, user and system, from
// /proc/<pid>/stat; 0 if unknown.
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces: fields are counted after its ')'.
	f := bytes.Fields(b[bytes.LastIndexByte(b, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(string(f[11]), 10, 64)
	stime, _ := strconv.ParseInt(string(f[12]), 10, 64)
	return time.Duration(utime+stime) * clockTick
}

// selfCPU is the CPU this load generator has used, user and system.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisInfo reads the numeric fields of one INFO section.
func redisInfo(ctx context.Context, rdb *redis.Client, section string) map[string]float64 {
	out := map[string]float64{}
	text, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return out
	}
	for _, line := range strings.Split(text, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseFloat(v, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// redisCPU is the CPU Redis has used, user and system (its own threads and
// children).
func redisCPU(ctx context.Context, rdb *redis.Client) time.Duration {
	m := redisInfo(ctx, rdb, "cpu")
	return time.Duration((m["used_cpu_user"] + m["used_cpu_sys"]) * float64(time.Second))
}

// cpuMeter measures the CPU of the server, this generator and Redis over a
// window.
type cpuMeter struct {
	pid                   int
	server, bench, redisT time.Duration
}

func startCPU(ctx context.Context, pid int, rdb *redis.Client) cpuMeter {
	return cpuMeter{pid: pid, server: cpuTime(pid), bench: selfCPU(), redisT: redisCPU(ctx, rdb)}
}

// stop returns the CPU used since start by the server, the generator and
// Redis.
func (m cpuMeter) stop(ctx context.Context, rdb *redis.Client) (server, bench, redisT time.Duration) {
	return cpuTime(m.pid) - m.server, selfCPU() - m.bench, redisCPU(ctx, rdb) - m.redisT
}
