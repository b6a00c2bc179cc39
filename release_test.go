package main

import (
	"bufio"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ssebridge/ssebridge/internal/version"
)

// TestReleaseBinaries runs deploy/release.sh's binaries step, as a release
// does, and checks what it made: for linux/amd64 and linux/arm64, a static
// ELF executable of that machine (no interpreter, no dynamic section), with
// the version set by -ldflags, and SHA256SUMS that match. It compiles the
// program twice (about 40 s on two cores with a cold build cache, a few
// seconds with a warm one: docs/RELEASING.md); -short skips it.
func TestReleaseBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: TestReleaseBinaries compiles ssebridge for two architectures")
	}
	t.Parallel()
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh to run deploy/release.sh")
	}
	dir := t.TempDir()

	// A version other than the source's is refused before anything is built.
	cmd := exec.Command("sh", "deploy/release.sh", "-o", dir, "-s", "binaries", version.Version+"-not")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "is not the source's version") {
		t.Errorf("release.sh with another version: %v\n%s", err, out)
	}

	start := time.Now()
	cmd = exec.Command("sh", "deploy/release.sh", "-o", dir, "-s", "binaries", version.Version)
	out, err := cmd.CombinedOutput()
	t.Logf("deploy/release.sh -s binaries %s: %v\n%s", version.Version, time.Since(start).Round(100*time.Millisecond), out)
	if err != nil {
		t.Fatalf("deploy/release.sh: %v", err)
	}

	sums := map[string]string{}
	f, err := os.Open(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for sc := bufio.NewScanner(f); sc.Scan(); {
		if sum, name, ok := strings.Cut(sc.Text(), "  "); ok {
			sums[name] = sum
		}
	}

	for arch, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		name := "ssebridge-" + version.Version + "-linux-" + arch
		path := filepath.Join(dir, name)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Error(err)
			continue
		}
		if h := sha256.Sum256(b); sums[name] != hex.EncodeToString(h[:]) {
			t.Errorf("SHA256SUMS says %q for %s; its SHA-256 is %x", sums[name], name, h)
		}
		e, err := elf.Open(path)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if e.Machine != machine || e.Class != elf.ELFCLASS64 || e.Type != elf.ET_EXEC || e.OSABI != elf.ELFOSABI_NONE {
			t.Errorf("%s: %v %v %v %v, want %v ELFCLASS64 ET_EXEC", name, e.Machine, e.Class, e.Type, e.OSABI, machine)
		}
		for _, p := range e.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("%s has a %v program header: not a static binary", name, p.Type)
			}
		}
		for _, s := range []string{".interp", ".dynamic"} {
			if e.Section(s) != nil {
				t.Errorf("%s has a %s section: not a static binary", name, s)
			}
		}
		if e.Section(".symtab") != nil {
			t.Errorf("%s has a symbol table: not stripped (-s)", name)
		}
		e.Close()

		// What the toolchain recorded of the build.
		mod, err := exec.Command("go", "version", "-m", path).CombinedOutput()
		if err != nil {
			t.Errorf("go version -m %s: %v\n%s", name, err, mod)
			continue
		}
		for _, want := range []string{
			"-X github.com/ssebridge/ssebridge/internal/version.Version=" + version.Version,
			"build\tCGO_ENABLED=0", "build\t-trimpath=true", "build\tGOARCH=" + arch, "build\tGOOS=linux",
		} {
			if !strings.Contains(string(mod), want) {
				t.Errorf("%s was not built with %q:\n%s", name, want, mod)
			}
		}
		if arch == runtime.GOARCH && runtime.GOOS == "linux" {
			v, err := exec.Command(path, "version").Output()
			if err != nil || !strings.HasPrefix(string(v), "ssebridge "+version.Version+"\n") {
				t.Errorf("%s version: %v\n%s", name, err, v)
			}
		}
	}
}
