package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The end-to-end tests run the real program: TestMain builds ssebridge once
// (with -race when these tests run under the race detector, so the race
// detector watches the server too), and each test starts it as a process
// with its own environment.

var (
	// repoRoot is the module's root: the program to build, and the files
	// (examples/, clients/, deploy/, README.md) the tests read.
	repoRoot string
	// binary is ssebridge, built once, with -race when this test binary is.
	binary string
	// buildDir holds the binaries; TestMain removes it.
	buildDir string

	plainOnce sync.Once
	plainPath string
	plainErr  error
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	repoRoot = root
	if buildDir, err = os.MkdirTemp("", "ssebridge-e2e"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(buildDir)
	binary = filepath.Join(buildDir, "ssebridge")
	if err := build(binary, raceEnabled); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// build runs go build of the module's root into out.
func build(out string, race bool) error {
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building ssebridge (%s): %v\n%s", strings.Join(cmd.Args, " "), err, b)
	}
	return nil
}

// plainBinary is ssebridge built without the race detector, for the tests
// that measure the process's memory or hold more goroutines than the race
// detector allows (8,128); built on first use. Without -race it is binary.
func plainBinary(t testing.TB) string {
	t.Helper()
	if !raceEnabled {
		return binary
	}
	plainOnce.Do(func() {
		plainPath = filepath.Join(buildDir, "ssebridge-plain")
		plainErr = build(plainPath, false)
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	return plainPath
}

// proc is one ssebridge process (a server or a subcommand).
type proc struct {
	t      testing.TB
	cmd    *exec.Cmd
	addr   string      // where a server listens, from its "ssebridge listening" line
	stdout *syncBuffer // what it printed
	stderr *syncBuffer // its log

	exited  chan struct{} // closed once the process is gone and its output read
	exitErr error         // cmd.Wait's, once exited is closed

	mu     sync.Mutex
	killed bool // ended by SIGKILL on purpose: a non-zero exit is expected
}

var listenRE = regexp.MustCompile(`msg="ssebridge listening" addr=(\S+)`)

// startBinary runs the ssebridge server (built with -race under -race) with
// vars on top of the test's environment, LISTEN_ADDR=127.0.0.1:0 and
// LOG_LEVEL=info and MAX_RESUMES_PER_USER_PER_MINUTE=1000000 unless vars
// say otherwise, and waits until it listens.
// It is stopped with SIGTERM when the test ends (see launch).
func startBinary(t testing.TB, vars map[string]string) *proc {
	t.Helper()
	return startServer(t, binary, vars)
}

// startPlainBinary is startBinary with plainBinary.
func startPlainBinary(t testing.TB, vars map[string]string) *proc {
	t.Helper()
	return startServer(t, plainBinary(t), vars)
}

func startServer(t testing.TB, path string, vars map[string]string) *proc {
	t.Helper()
	env := map[string]string{"LISTEN_ADDR": "127.0.0.1:0", "LOG_LEVEL": "info",
		// Tests resume one user far more often than a browser does (drop,
		// resume, in a loop); TestResumeLimit sets its own.
		"MAX_RESUMES_PER_USER_PER_MINUTE": "1000000"}
	for k, v := range vars {
		env[k] = v
	}
	addr := make(chan string, 1)
	p := launch(t, path, nil, env, func(line string) {
		if m := listenRE.FindStringSubmatch(line); m != nil {
			select {
			case addr <- m[1]:
			default:
			}
		}
	})
	select {
	case p.addr = <-addr:
	case <-p.exited:
		t.Fatalf("ssebridge exited before listening: %v\n%s", p.exitErr, p.stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("ssebridge did not listen within 20s:\n%s", p.stderr.String())
	}
	return p
}

// launch starts the binary at path with args and env on top of the test's
// environment; onLine, if set, sees each line of its stderr. When the test
// ends the process gets SIGTERM (SIGKILL if still there 30s later), and the
// test fails if it reported a data race or exited non-zero without being
// killed on purpose; if the test failed, the process's output is logged.
func launch(t testing.TB, path string, args []string, env map[string]string, onLine func(string)) *proc {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = environ(env)
	p := &proc{t: t, cmd: cmd, stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout = p.stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	verbose := os.Getenv("E2E_VERBOSE") != ""
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.stderr.WriteString(line + "\n")
			if onLine != nil {
				onLine(line)
			}
			if verbose {
				fmt.Fprintf(os.Stderr, "ssebridge[%d]: %s\n", cmd.Process.Pid, line)
			}
		}
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.stop()
		p.check()
	})
	return p
}

// awaitLog waits until the process's log has a line containing s.
func (p *proc) awaitLog(t testing.TB, s string, within time.Duration) {
	t.Helper()
	eventually(t, within, "ssebridge to log "+s, func() bool { return strings.Contains(p.stderr.String(), s) })
}

// environ is the test's environment with env on top, for a process of
// ssebridge. A binary built with -race sleeps a second when it exits (the
// race detector's atexit_sleep_ms, for reports from other threads): a
// second per process, over a minute for the suite, so it is set to 0
// unless GORACE says otherwise. A race found while it runs is reported as
// ever.
func environ(env map[string]string) []string {
	out := os.Environ()
	if gorace := os.Getenv("GORACE"); !strings.Contains(gorace, "atexit_sleep_ms") {
		out = append(out, "GORACE="+strings.TrimSpace(gorace+" atexit_sleep_ms=0"))
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// pid is the process's id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// wait waits up to d for the process to exit and returns whether it did,
// and its exit error.
func (p *proc) wait(d time.Duration) (exited bool, err error) {
	select {
	case <-p.exited:
		return true, p.exitErr
	case <-time.After(d):
		return false, nil
	}
}

// signal sends sig unless the process is gone.
func (p *proc) signal(sig syscall.Signal) {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// stop ends the process as an orchestrator would: SIGTERM, then SIGKILL
// (and a test error) if it is still there after 30s. It returns the exit
// error; calling it again is harmless.
func (p *proc) stop() error {
	p.signal(syscall.SIGTERM)
	if exited, err := p.wait(30 * time.Second); exited {
		return err
	}
	p.t.Errorf("ssebridge (pid %d) still running 30s after SIGTERM; killing it", p.pid())
	p.kill()
	return p.exitErr
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *proc) kill() {
	p.mu.Lock()
	p.killed = true
	p.mu.Unlock()
	p.signal(syscall.SIGKILL)
	<-p.exited
}

// check fails the test if the process reported a data race or exited
// non-zero without being killed on purpose, and logs its output if the
// test failed.
func (p *proc) check() {
	p.t.Helper()
	out := p.stderr.String()
	p.mu.Lock()
	killed := p.killed
	p.mu.Unlock()
	switch {
	case strings.Contains(out, "WARNING: DATA RACE"):
		p.t.Errorf("ssebridge (%s) reported a data race:\n%s", strings.Join(p.cmd.Args, " "), tail(out, 256<<10))
		return
	case p.exitErr != nil && !killed:
		p.t.Errorf("ssebridge (%s) exited: %v", strings.Join(p.cmd.Args, " "), p.exitErr)
	}
	if p.t.Failed() {
		p.t.Logf("ssebridge (%s, pid %d) stderr:\n%s", strings.Join(p.cmd.Args, " "), p.pid(), tail(out, 64<<10))
	}
}

// tail is the last n bytes of s, from a line's start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "[…]\n" + s
}

// runCommand runs `ssebridge args...` (a subcommand) with env on top of the
// test's environment, to its end (at most 30s), and returns what it printed
// and its exit code. A data race it reports fails the test.
func runCommand(t testing.TB, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = environ(env)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("ssebridge %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("ssebridge %s: still running after 30s", strings.Join(args, " "))
	}
	if strings.Contains(errOut.String(), "WARNING: DATA RACE") {
		t.Errorf("ssebridge %s reported a data race:\n%s", strings.Join(args, " "), errOut.String())
	}
	return out.String(), errOut.String(), code
}

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) WriteString(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.WriteString(v)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
