package usage

import (
	"errors"
	"testing"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/pkg/storage/location"
)

func TestMessage(t *testing.T) {
	for _, c := range []struct{ err, want string }{
		{`invalid argument "x" for "--connections" flag: strconv.ParseInt: parsing "x": invalid syntax`, `--connections "x": want a whole number`},
		{`invalid argument "y" for "--json" flag: strconv.ParseBool: parsing "y": invalid syntax`, `--json "y": want true or false`},
		{`invalid argument "1" for "--queue-timeout" flag: time: missing unit in duration "1"`, `--queue-timeout "1": want a duration such as 30s, 10m or 2h`},
		{`required flag(s) "owner" not set`, `missing required flag --owner`},
		{`required flag(s) "owner", "workspace" not set`, `missing required flags --owner, --workspace`},
		{"unknown command \"snapshot\" for \"backupctl\"\n\nDid you mean this?\n\tsnapshots\n", `unknown command "snapshot" for "backupctl"; did you mean snapshots?`},
		{"a\nb\n", "a; b"},
	} {
		if got := Message(errors.New(c.err)); got != c.want {
			t.Errorf("Message(%q) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestExitCode(t *testing.T) {
	if ExitCode(nil) != 0 || ExitCode(errors.New("x")) != ExitFailure || ExitCode(Errorf("x")) != ExitUsage ||
		ExitCode(errors.New(`required flag(s) "owner" not set`)) != ExitUsage {
		t.Fatal("exit codes")
	}
	err := (location.Config{URL: "ftp://x"}).Validate()
	if ExitCode(err) != ExitUsage {
		t.Fatalf("a bad URL (%v) is not a usage error", err)
	}
}

func TestArgs(t *testing.T) {
	root := &cobra.Command{Use: "tool"}
	sub := &cobra.Command{Use: "ls"}
	root.AddCommand(sub)
	for _, c := range []struct {
		names []string
		cmd   *cobra.Command
		args  []string
		want  string
	}{
		{[]string{"DIR"}, sub, nil, "ls: missing argument DIR"},
		{[]string{"A", "B"}, sub, nil, "ls: missing arguments A B"},
		{[]string{"A", "[B]"}, sub, []string{"a", "b", "c"}, `ls: unexpected argument "c" (want A [B])`},
		{nil, sub, []string{"x"}, `ls: unexpected argument "x" (ls takes no arguments, only flags)`},
		{nil, root, []string{"x"}, `unexpected argument "x" (tool takes no arguments, only flags)`},
		{[]string{"A", "[B]"}, sub, []string{"a"}, ""},
	} {
		err := Args(c.names...)(c.cmd, c.args)
		got := ""
		if err != nil {
			got = err.Error()
			if ExitCode(err) != ExitUsage {
				t.Errorf("%v %v: not a usage error", c.names, c.args)
			}
		}
		if got != c.want {
			t.Errorf("%v %v: %q, want %q", c.names, c.args, got, c.want)
		}
	}
}
