package main

import (
	"bytes"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/ssebridge/ssebridge/internal/version"
)

// TestVersionCommand: ssebridge version, -version and --version print the
// version, the Go version and the VCS revision, and exit 0.
func TestVersionCommand(t *testing.T) {
	for _, name := range []string{"version", "-version", "--version"} {
		var out, errOut strings.Builder
		if code := command(name, nil, &out, &errOut); code != 0 || errOut.Len() != 0 {
			t.Fatalf("ssebridge %s: exit %d, stderr %q", name, code, errOut.String())
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		want := []string{"ssebridge " + version.Version, "go        " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH, "revision  ", "modified  "}
		if len(lines) != len(want) {
			t.Fatalf("ssebridge %s printed %d lines, want %d:\n%s", name, len(lines), len(want), out.String())
		}
		for i, w := range want {
			if !strings.HasPrefix(lines[i], w) {
				t.Errorf("ssebridge %s, line %d: %q, want it to begin %q", name, i+1, lines[i], w)
			}
		}
	}
}

// semver is a version as CHANGELOG.md, pyproject.toml and Version write it.
const semver = `[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?`

// TestVersionInStep: the one version (internal/version.Version) is the
// Django package's (pyproject.toml and ssebridge_django.__version__) and
// CHANGELOG.md's newest release; the package ships the repository's LICENSE.
// docs/RELEASING.md's first step bumps them together.
func TestVersionInStep(t *testing.T) {
	if !regexp.MustCompile(`^` + semver + `$`).MatchString(version.Version) {
		t.Fatalf("internal/version.Version %q is not MAJOR.MINOR.PATCH[-PRE]", version.Version)
	}
	for _, c := range []struct {
		file, pattern string
	}{
		{"clients/django/pyproject.toml", `(?m)^version = "(` + semver + `)"$`},
		{"clients/django/ssebridge_django/__init__.py", `(?m)^__version__ = "(` + semver + `)"$`},
		// The first release heading: "## [0.3.0] - 2026-12-05" (Unreleased has no date).
		{"CHANGELOG.md", `(?m)^## \[(` + semver + `)\] - \d{4}-\d{2}-\d{2}$`},
	} {
		b, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(c.pattern).FindSubmatch(b)
		switch {
		case m == nil:
			t.Errorf("%s: no version found (%s)", c.file, c.pattern)
		case string(m[1]) != version.Version:
			t.Errorf("%s says %s, internal/version.Version %s: bump them together (docs/RELEASING.md)", c.file, m[1], version.Version)
		}
	}
	changelog, err := os.ReadFile("CHANGELOG.md")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^## \[Unreleased\]$`).Match(changelog) {
		t.Error("CHANGELOG.md has no ## [Unreleased] section")
	}
	license, err := os.ReadFile("LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := os.ReadFile("clients/django/LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(license, shipped) {
		t.Error("clients/django/LICENSE differs from LICENSE: cp LICENSE clients/django/")
	}
	for _, want := range []string{"Apache License\n                           Version 2.0, January 2004", "Copyright 2026 the ssebridge authors"} {
		if !bytes.Contains(license, []byte(want)) {
			t.Errorf("LICENSE does not say %q: not the Apache License 2.0's text, or not ours", want)
		}
	}
}

// TestBuildInfoMetric: /metrics serves ssebridge_build_info, 1, labelled
// with the version, the Go version and the revision.
func TestBuildInfoMetric(t *testing.T) {
	body := servedMetrics(t)
	info := version.Get()
	want := `ssebridge_build_info{goversion="` + info.GoVersion + `",revision="` + info.Revision + `",version="` + version.Version + `"} 1`
	if !strings.Contains(string(body), "\n"+want+"\n") {
		t.Errorf("/metrics has no line %s:\n%s", want, grepLines(string(body), "ssebridge_build_info"))
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
