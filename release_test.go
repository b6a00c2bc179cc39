package main

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"io"
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
// the flags the toolchain recorded, the version set by -ldflags (running
// the binary of this machine's architecture), the Django package's wheel
// and sdist (version, licence) where Debian's pip, setuptools and wheel
// are, and SHA256SUMS that match. It compiles the program and its
// dependencies twice, with -trimpath (a cache of its own): 4.5 min of CPU
// with a cold build cache, 6 s warm (docs/RELEASING.md). It runs only with
// SSEBRIDGE_RELEASE set, as a step of the release procedure: on a fresh
// machine it would add minutes to every CI run for what a release needs.
func TestReleaseBinaries(t *testing.T) {
	if os.Getenv("SSEBRIDGE_RELEASE") == "" {
		t.Skip("SSEBRIDGE_RELEASE unset: TestReleaseBinaries compiles ssebridge for two architectures (minutes with a cold build cache); docs/RELEASING.md runs it before a release")
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

	// The Django package too, where Debian's pip, setuptools and wheel are
	// (.ci/run installs them).
	steps := "binaries"
	check := exec.Command("/usr/bin/python3", "-c", "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('pip', 'setuptools', 'wheel')))")
	if err := check.Run(); err == nil {
		steps += ",python"
	} else {
		t.Logf("no /usr/bin/python3 with pip, setuptools and wheel: the Django package's wheel and sdist are not built (%v)", err)
	}
	start := time.Now()
	cmd = exec.Command("sh", "deploy/release.sh", "-o", dir, "-s", steps, version.Version)
	out, err := cmd.CombinedOutput()
	t.Logf("deploy/release.sh -s %s %s: %v\n%s", steps, version.Version, time.Since(start).Round(100*time.Millisecond), out)
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

	if strings.Contains(steps, "python") {
		checkWheel(t, dir, sums)
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
		// (With -trimpath the toolchain does not record -ldflags: the
		// version is checked by running the binary, below.)
		for _, want := range []string{"build\tCGO_ENABLED=0", "build\t-trimpath=true", "build\tGOARCH=" + arch, "build\tGOOS=linux"} {
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

// checkWheel checks the Django package's wheel and sdist release.sh built:
// the version, the licence declared and its text shipped, and their sums.
func checkWheel(t *testing.T, dir string, sums map[string]string) {
	t.Helper()
	license, err := os.ReadFile("LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	wheel := "django_ssebridge-" + version.Version + "-py3-none-any.whl"
	z, err := zip.OpenReader(filepath.Join(dir, wheel))
	if err != nil {
		t.Fatalf("the wheel: %v", err)
	}
	defer z.Close()
	files := map[string]string{}
	for _, f := range z.File {
		r, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		files[f.Name] = string(b)
	}
	info := "django_ssebridge-" + version.Version + ".dist-info/"
	meta := files[info+"METADATA"]
	for _, want := range []string{"\nVersion: " + version.Version + "\n", "\nLicense: Apache-2.0\n", "\nClassifier: License :: OSI Approved :: Apache Software License\n"} {
		if !strings.Contains(meta, want) {
			t.Errorf("%s: METADATA lacks %q:\n%s", wheel, strings.TrimSpace(want), meta)
		}
	}
	if files[info+"LICENSE"] != string(license) {
		t.Errorf("%s does not ship LICENSE as %sLICENSE", wheel, info)
	}
	sdists, _ := filepath.Glob(filepath.Join(dir, "django?ssebridge-"+version.Version+".tar.gz"))
	if len(sdists) != 1 {
		t.Fatalf("no sdist, or several: %v", sdists)
	}
	for _, name := range []string{wheel, filepath.Base(sdists[0])} {
		if sums[name] == "" {
			t.Errorf("SHA256SUMS has no line for %s", name)
		}
	}
	f, err := os.Open(sdists[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	shipped := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(h.Name, "/LICENSE") && strings.Count(h.Name, "/") == 1 {
			b, _ := io.ReadAll(tr)
			shipped = string(b) == string(license)
		}
	}
	if !shipped {
		t.Errorf("%s does not ship LICENSE at its top", filepath.Base(sdists[0]))
	}
}
