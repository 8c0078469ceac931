// Package usage is how backupctl and backupd report a command line they
// cannot use: an unknown flag, a flag value of the wrong form, a missing
// or extra argument, a malformed storage URL. Such errors are usage
// errors: the binaries print them on one line, add one line pointing to
// --help, and exit with status 2 (every other error: one line, status 1).
// The package rewrites cobra's and pflag's messages into that form, with
// no Go type or function names in them.
package usage

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/pkg/storage/location"
)

// ExitUsage is the exit status of a usage error; ExitFailure of every
// other error.
const (
	ExitUsage   = 2
	ExitFailure = 1
)

// Error marks err as a usage error.
type Error struct{ Err error }

func (e Error) Error() string { return e.Err.Error() }

// Unwrap returns the error marked.
func (e Error) Unwrap() error { return e.Err }

// Errorf is a usage error with a formatted message.
func Errorf(format string, args ...any) error { return Error{fmt.Errorf(format, args...)} }

// Is reports whether err is a usage error: marked with Error, a storage
// URL that cannot be used (location.URLError), or one of cobra's own
// (a missing required flag, an unknown command).
func Is(err error) bool {
	var ue Error
	var le *location.URLError
	if errors.As(err, &ue) || errors.As(err, &le) {
		return true
	}
	msg := err.Error()
	return strings.HasPrefix(msg, "required flag(s)") || strings.HasPrefix(msg, "unknown command")
}

// ExitCode is the exit status for err: 0, ExitUsage or ExitFailure.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case Is(err):
		return ExitUsage
	}
	return ExitFailure
}

var (
	invalidArg   = regexp.MustCompile(`^invalid argument "(.*)" for "(.*)" flag: (.*)$`)
	requiredFlag = regexp.MustCompile(`^required flag\(s\) (.*) not set$`)
)

// Message is the one line to print for err: cobra's and pflag's messages
// rewritten (flag values described, not the Go function that refused
// them; suggestions kept on the same line), everything else as it is,
// its lines joined.
func Message(err error) string {
	msg := strings.TrimSpace(err.Error())
	if m := invalidArg.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("%s %q: want %s", m[2], m[1], flagWant(m[3]))
	}
	if m := requiredFlag.FindStringSubmatch(msg); m != nil {
		var flags []string
		for _, f := range strings.Split(m[1], ",") {
			flags = append(flags, "--"+strings.Trim(strings.TrimSpace(f), `"`))
		}
		if len(flags) == 1 {
			return "missing required flag " + flags[0]
		}
		return "missing required flags " + strings.Join(flags, ", ")
	}
	if head, sugg, ok := strings.Cut(msg, "\n\nDid you mean this?\n"); ok {
		var names []string
		for _, l := range strings.Split(sugg, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				names = append(names, l)
			}
		}
		return head + "; did you mean " + strings.Join(names, " or ") + "?"
	}
	return OneLine(msg)
}

// flagWant describes what a flag wants from the parse error pflag got.
func flagWant(parseErr string) string {
	switch {
	case strings.Contains(parseErr, "ParseInt"), strings.Contains(parseErr, "ParseUint"):
		return "a whole number"
	case strings.Contains(parseErr, "ParseBool"):
		return "true or false"
	case strings.Contains(parseErr, "ParseFloat"):
		return "a number"
	case strings.Contains(parseErr, "duration"):
		return "a duration such as 30s, 10m or 2h"
	}
	return "a value of the documented form (see --help)"
}

// OneLine joins the lines of s with "; ".
func OneLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	out := lines[:0]
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}

// FlagError is a cobra FlagErrorFunc: every flag parse error is a usage
// error.
func FlagError(_ *cobra.Command, err error) error { return Error{err} }

// Args checks a command's positional arguments against their names, in
// order; a name in brackets ("[PATH]") is optional. Missing and extra
// arguments are usage errors that name what the command takes.
func Args(names ...string) cobra.PositionalArgs {
	required := 0
	for _, n := range names {
		if !strings.HasPrefix(n, "[") {
			required++
		}
	}
	return func(cmd *cobra.Command, args []string) error {
		who := "" // a subcommand names itself; the binary's name is already there
		if cmd.HasParent() {
			who = cmd.Name() + ": "
		}
		switch {
		case len(args) < required:
			missing := names[len(args):required]
			noun := "argument"
			if len(missing) > 1 {
				noun = "arguments"
			}
			return Errorf("%smissing %s %s", who, noun, strings.Join(missing, " "))
		case len(args) > len(names):
			if len(names) == 0 {
				return Errorf("%sunexpected argument %q (%s takes no arguments, only flags)", who, args[0], cmd.Name())
			}
			return Errorf("%sunexpected argument %q (want %s)", who, args[len(names)], strings.Join(names, " "))
		}
		return nil
	}
}
