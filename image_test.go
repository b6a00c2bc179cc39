package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/redistest"
	"github.com/ssebridge/ssebridge/internal/version"
)

// TestContainerImage builds the Dockerfile's image and runs it: a non-root
// user, port 8080, ssebridge version naming the version given as a build
// argument, and the server against a Redis answering /healthz with it. It
// needs a container engine (`docker info` succeeds); without one it skips
// with that message, under CI=true too, as the CI machines have none
// (docs/RELEASING.md).
func TestContainerImage(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: TestContainerImage builds an image")
	}
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Skip("no container engine (no docker command): TestContainerImage needs one to build and run the image; skipped, under CI=true too")
	}
	// docker info prints the client's part, then the server's or the error.
	if out, err := exec.Command(docker, "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Skipf("no container engine (docker info: %v: %s): TestContainerImage needs one to build and run the image; skipped, under CI=true too", err, strings.TrimSpace(lines[len(lines)-1]))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, docker, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	v := version.Version + "-imagetest"
	tag := "ssebridge-test:" + v
	run("build", "--build-arg", "VERSION="+v, "-t", tag, ".")
	t.Cleanup(func() { _ = exec.Command(docker, "image", "rm", "-f", tag).Run() })

	if got := run("image", "inspect", "--format", "{{.Config.User}} {{range $p, $_ := .Config.ExposedPorts}}{{$p}}{{end}}", tag); got != "65532:65532 8080/tcp" {
		t.Errorf("the image's user and ports: %q, want 65532:65532 8080/tcp", got)
	}
	if got := run("run", "--rm", tag, "version"); !strings.HasPrefix(got, "ssebridge "+v+"\n") {
		t.Errorf("ssebridge version in the image:\n%s\nwant it to begin ssebridge %s", got, v)
	}

	// The server, on the host's network, against a Redis of the test's.
	r := redistest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	id := run("run", "-d", "--rm", "--network", "host", "-e", "REDIS_URL="+r.URL(), "-e", "LISTEN_ADDR="+addr, tag)
	t.Cleanup(func() { _ = exec.Command(docker, "rm", "-f", id).Run() })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := `{"status":"ok","version":"` + v + `"}`; resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != want {
				t.Fatalf("GET /healthz: %d %s, want 200 %s", resp.StatusCode, body, want)
			}
			return
		}
		if time.Now().After(deadline) {
			logs, _ := exec.Command(docker, "logs", id).CombinedOutput()
			t.Fatalf("the container did not answer /healthz within 30s: %v\n%s", err, logs)
		}
	}
}
