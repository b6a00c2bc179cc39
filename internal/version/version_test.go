package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	var b strings.Builder
	Info{Version: "1.2.3", GoVersion: "go1.26.8", Revision: "c127798", Time: "2026-12-05T12:00:00Z", Modified: true, Platform: "linux/arm64"}.Write(&b)
	want := "ssebridge 1.2.3\ngo        go1.26.8 linux/arm64\nrevision  c127798 (2026-12-05T12:00:00Z)\nmodified  true\n"
	if b.String() != want {
		t.Errorf("Write:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	Info{Version: "1.2.3", GoVersion: "go1.26.8", Revision: "unknown", Platform: "linux/amd64"}.Write(&b)
	if want := "revision  unknown\nmodified  false\n"; !strings.HasSuffix(b.String(), want) {
		t.Errorf("Write without VCS information:\n%s\nwant it to end:\n%s", b.String(), want)
	}
}

// TestGet: what a test binary knows of itself (go test stamps no VCS
// information: the revision is unknown).
func TestGet(t *testing.T) {
	i := Get()
	if i.Version != Version || i.GoVersion != runtime.Version() || i.Platform != runtime.GOOS+"/"+runtime.GOARCH || i.Revision == "" {
		t.Errorf("Get() = %+v", i)
	}
}
