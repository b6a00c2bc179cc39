package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The command line as a person meets it: help, and a configuration error.

// TestHelpBinary runs the built binary: help is on stdout with exit 0, an
// unknown command gets it on stderr with exit 2.
func TestHelpBinary(t *testing.T) {
	for _, tt := range []struct {
		args       []string
		code       int
		outHas     string
		errHas     string
		outIsEmpty bool
	}{
		{[]string{"-h"}, 0, "HEARTBEAT_INTERVAL", "", false},
		{[]string{"--help"}, 0, "ssebridge publish", "", false},
		{[]string{"help"}, 0, "REDIS_URL", "", false},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`, true},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := exec.Command(binary, tt.args...)
			var out, errOut strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &errOut
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.code || !strings.Contains(out.String(), tt.outHas) || !strings.Contains(errOut.String(), tt.errHas) {
				t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s\nwant exit %d, %q on stdout, %q on stderr", code, out.String(), errOut.String(), tt.code, tt.outHas, tt.errHas)
			}
			if tt.outIsEmpty && out.Len() != 0 {
				t.Errorf("stdout not empty: %s", out.String())
			}
			if tt.code == 2 && !strings.Contains(errOut.String(), "HEARTBEAT_INTERVAL") {
				t.Errorf("no help on stderr: %s", errOut.String())
			}
		})
	}
}

// TestLoadConfigREADME: the configuration error the README quotes is the
// one the binary prints.
func TestLoadConfigREADME(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary)
	cmd.Env = []string{"HEARTBEAT_INTERVAL=soon"}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v, want 2; output %s", err, out)
	}
	msg := strings.TrimSpace(string(out))
	if !strings.Contains(string(readme), "`"+msg+"`") {
		t.Fatalf("README.md does not quote the real message:\n%s", msg)
	}
}
