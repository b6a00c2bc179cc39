// Package version says which ssebridge this is: the release version, and
// what the Go toolchain recorded of the build (its Go version, the VCS
// revision and whether the tree had changes).
package version

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Version is ssebridge's release version, the one place it is written:
// the Django package (clients/django) and CHANGELOG.md's newest release
// must say the same (TestVersionInStep, in the module's root). A release
// build may set it at link time,
//
//	go build -ldflags "-X github.com/ssebridge/ssebridge/internal/version.Version=0.3.0"
//
// which is why it is a variable, not a constant: package-level state, but
// written only by the linker, before main runs, and never after (nothing
// in the program assigns it), so nothing can race on it.
var Version = "0.3.0"

// Info is what a binary knows of its own build.
type Info struct {
	Version   string // Version
	GoVersion string // the toolchain's, e.g. go1.26.8
	Revision  string // the VCS revision built, "unknown" without VCS stamping (-buildvcs=false, no .git)
	Time      string // the revision's commit time (RFC 3339), "" when unknown
	Modified  bool   // the tree had changes beside the revision
	Platform  string // GOOS/GOARCH
}

// Get reads the build's information from runtime/debug.ReadBuildInfo.
func Get() Info {
	info := Info{Version: Version, GoVersion: runtime.Version(), Revision: "unknown", Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// Write prints the information, one fact a line, as ssebridge -version does:
//
//	ssebridge 0.3.0
//	go        go1.26.8 linux/amd64
//	revision  c127798b… (2026-12-05T12:00:00Z)
//	modified  false
func (i Info) Write(w io.Writer) {
	rev := i.Revision
	if i.Time != "" {
		rev += " (" + i.Time + ")"
	}
	fmt.Fprintf(w, "ssebridge %s\ngo        %s %s\nrevision  %s\nmodified  %t\n", i.Version, i.GoVersion, i.Platform, rev, i.Modified)
}
