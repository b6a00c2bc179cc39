package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/ssebridge/ssebridge/internal/version"
)

// command runs a subcommand, publish, tail or presence, or prints the help or the
// version, and
// returns the exit code: 0, 1 when the command failed, 2 for a usage error.
func command(name string, args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch name {
	case "help", "-h", "-help", "--help":
		writeHelp(stdout)
		return 0
	case "version", "-version", "--version":
		version.Get().Write(stdout)
		return 0
	case "publish":
		err = publishCommand(ctx, args, stdout, stderr)
	case "tail":
		err = tailCommand(ctx, args, stdout, stderr)
	case "presence":
		err = presenceCommand(ctx, args, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "ssebridge: unknown command %q\n\n", name)
		writeHelp(stderr)
		return 2
	}
	var usage usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0 // the flag package printed the flags
	case errors.As(err, &usage):
		if !usage.printed {
			fmt.Fprintln(stderr, "ssebridge "+name+":", err)
		}
		return 2
	}
	fmt.Fprintln(stderr, "ssebridge "+name+":", err)
	return 1
}

// usageError is a mistake in a command's arguments: exit code 2. When
// printed is set, the flag package has already said what is wrong.
type usageError struct {
	err     error
	printed bool
}

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// parseFlags parses args into fs, and returns which flags were given.
func parseFlags(fs *flag.FlagSet, args []string) (map[string]bool, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err, true}
	}
	if fs.NArg() > 0 {
		return nil, usageError{err: fmt.Errorf("unexpected argument %q: every value goes with a flag (-h lists them)", fs.Arg(0))}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	return given, nil
}

// envOr is the environment variable name, or def when it is unset or empty.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
