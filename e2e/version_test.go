package e2e

import (
	"io"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/ssebridge/ssebridge/internal/version"
)

// TestVersionBinary: the built program says its version, and the revision
// the toolchain stamped it with, in ssebridge version, GET /healthz and
// ssebridge_build_info.
func TestVersionBinary(t *testing.T) {
	out, err := exec.Command(binary, "version").Output()
	if err != nil {
		t.Fatalf("ssebridge version: %v", err)
	}
	lines := strings.Split(string(out), "\n")
	if lines[0] != "ssebridge "+version.Version {
		t.Errorf("ssebridge version:\n%s\nwant it to begin ssebridge %s", out, version.Version)
	}
	// The revision as the toolchain recorded it: go build stamps it in a
	// git checkout (not in a git worktree, whose .git is a file, nor with
	// GOFLAGS=-buildvcs=false), else there is none.
	mod, err := exec.Command("go", "version", "-m", binary).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	revision := "unknown"
	for _, l := range strings.Split(string(mod), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "build\tvcs.revision="); ok {
			revision = v
		}
	}
	if len(lines) < 3 || !strings.HasPrefix(lines[2], "revision  "+revision) {
		t.Errorf("ssebridge version:\n%s\nwant revision %s (go version -m)", out, revision)
	}

	a := startApp(t, nil, nil)
	resp, err := http.Get(a.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `{"status":"ok","version":"` + version.Version + `"}`; resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != want {
		t.Errorf("GET /healthz: %d %s, want 200 %s", resp.StatusCode, body, want)
	}
	series := `ssebridge_build_info{goversion="` + runtime.Version() + `",revision="` + revision + `",version="` + version.Version + `"}`
	if v := a.metric(series); v != 1 {
		t.Errorf("/metrics: %s is %v, want 1", series, v)
	}
}
