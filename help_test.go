package main

import (
	"strings"
	"testing"
)

// TestHelpListsConfig: the help lists every variable of Config, with its
// default and one line of meaning (its help tag). It lists nothing that
// Config lacks: the lines come from Config's own fields.
func TestHelpListsConfig(t *testing.T) {
	var out strings.Builder
	writeHelp(&out)
	help := out.String()
	for _, v := range configVars() {
		if v.Help == "" {
			t.Errorf("%s has no help tag in Config", v.Name)
			continue
		}
		def := v.Default
		if def == "" {
			def = "(unset)"
		}
		found := false
		for _, line := range strings.Split(help, "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[0] == v.Name && f[1] == def && strings.HasSuffix(line, v.Help) {
				found = true
			}
		}
		if !found {
			t.Errorf("no help line %q, default %q, %q in:\n%s", v.Name, def, v.Help, help)
		}
	}
	for _, want := range []string{"ssebridge publish", "ssebridge tail", "ssebridge version", "serve", "embedded Redis"} {
		if !strings.Contains(help, want) {
			t.Errorf("help does not mention %q", want)
		}
	}
}

func TestHelpCommand(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // no try-out file
	for _, tt := range []struct {
		name           string
		args           []string
		code           int
		outHas, errHas string
	}{
		{"help", nil, 0, "LISTEN_ADDR", ""},
		{"--help", nil, 0, "LISTEN_ADDR", ""},
		{"nope", nil, 2, "", "unknown command"},
		{"publish", []string{"-h"}, 0, "", "-channel"},
		{"tail", []string{"--help"}, 0, "", "-last-event-id"},
		{"publish", []string{"-chanel", "x"}, 2, "", "flag provided but not defined: -chanel"},
		{"publish", []string{"-channel", "broadcast"}, 2, "", "-data is required"},
		{"publish", []string{"-channel", "broadcast", "-data", "x", "extra"}, 2, "", `unexpected argument "extra"`},
		{"tail", nil, 2, "", "-token is required"},
	} {
		t.Run(tt.name+" "+strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errOut strings.Builder
			code := command(tt.name, tt.args, &out, &errOut)
			if code != tt.code || !strings.Contains(out.String(), tt.outHas) || !strings.Contains(errOut.String(), tt.errHas) {
				t.Fatalf("exit %d, stdout:\n%s\nstderr:\n%s\nwant exit %d, %q on stdout, %q on stderr", code, out.String(), errOut.String(), tt.code, tt.outHas, tt.errHas)
			}
			if n := strings.Count(errOut.String(), "flag provided but not defined"); n > 1 {
				t.Errorf("the flag error said %d times", n)
			}
		})
	}
}
