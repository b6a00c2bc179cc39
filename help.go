package main

import (
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"
)

// configVar is one environment variable of Config, as its tags say.
type configVar struct{ Name, Default, Help string }

// configVars lists Config's environment variables in the order of its
// fields, each with its envDefault and help tags: the help text and
// TestDocsConfiguration read them here, so a variable is described in
// one place, beside its field.
func configVars() []configVar {
	t := reflect.TypeFor[Config]()
	vars := make([]configVar, 0, t.NumField())
	for f := range t.Fields() {
		name := f.Tag.Get("env")
		if name == "" {
			continue
		}
		vars = append(vars, configVar{Name: name, Default: f.Tag.Get("envDefault"), Help: f.Tag.Get("help")})
	}
	return vars
}

const helpHead = `ssebridge carries a backend's events from Redis to browsers over Server-Sent Events.

Usage:
  ssebridge                   serve: the server mode, configured by the environment below
  ssebridge publish [flags]   publish a durable event (ssebridge publish -h for the flags)
  ssebridge tail [flags]      print a stream's events, resuming after a drop (ssebridge tail -h)
  ssebridge presence [flags]  who is in a room (-room), where a user is (-user) (ssebridge presence -h)
  ssebridge version           the version, Go version and VCS revision of this build (also -version)
  ssebridge help              this text (also -h, --help)

Without REDIS_URL the server starts an embedded Redis for trying out, on
loopback only (REDIS_URL set but empty is an error), and publish, tail and
presence on the same machine find it by themselves.

Environment (server mode; a bad value stops the start, naming the variable):
`

// writeHelp writes the help text.
func writeHelp(w io.Writer) {
	var b strings.Builder
	b.WriteString(helpHead)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, v := range configVars() {
		def := v.Default
		if def == "" {
			def = "(unset)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.Name, def, v.Help)
	}
	tw.Flush()
	b.WriteString("\nSee docs/protocol.md for the contract (sessions, channels, events, HTTP routes) and docs/configuration.md for these settings.\n")
	io.WriteString(w, b.String())
}
