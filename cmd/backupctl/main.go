// Command backupctl is the operator's CLI for backupd repositories: back up
// and restore workspaces, list and inspect snapshots, check, forget, prune
// and purge.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

type usageError struct{ error }

func main() {
	// Keep the heap, and so RSS, well below 256 MiB unless told otherwise.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(160 << 20)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "backupctl: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) || isCobraUsageError(err) {
		fmt.Fprintln(os.Stderr, "Run 'backupctl --help' for usage.")
		os.Exit(2)
	}
	os.Exit(1)
}

// isCobraUsageError recognises the usage errors cobra reports as plain
// errors (missing required flags, unknown commands).
func isCobraUsageError(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "required flag(s)") || strings.HasPrefix(msg, "unknown command")
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "backupctl",
		Short: "Back up, restore and inspect backupd workspace repositories",
		Long: `backupctl backs up workspace directories into deduplicated, compressed,
content-addressed repositories and restores them byte for byte.

Each owner's snapshots live in the owner's own repository under a storage
root, given by -r/--repo, else by $BACKUPD_REPO, else a local directory
under the user's data directory (the embedded default).

Locations:
  file:///absolute/path
  s3://BUCKET/PREFIX?region=REGION[&endpoint=URL]
  minio://HOST:PORT/BUCKET/PREFIX[?secure=false]
  gs://BUCKET/PREFIX
  azblob://CONTAINER/PREFIX[?endpoint=URL]
Credentials come from each SDK's usual environment variables or from
--storage-config FILE (YAML; see docs/STORAGE.md), never from the URL.`,
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var cpuProfile string
	var stopProfile func()
	root.PersistentFlags().StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile to `FILE` (for developers)")
	_ = root.PersistentFlags().MarkHidden("cpu-profile")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		if cpuProfile == "" {
			return nil
		}
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
		return nil
	}
	root.PersistentPostRun = func(*cobra.Command, []string) {
		if stopProfile != nil {
			stopProfile()
		}
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newBackupCmd(), newRestoreCmd(), newSnapshotsCmd(), newLsCmd(), newDiffCmd(), newStatsCmd(), newInitCmd(), newCheckCmd(), newRepairCmd(), newForgetCmd(), newDeleteCmd(), newPruneCmd(), newPurgeCmd())
	for _, c := range root.Commands() {
		c.Args = wrapArgs(c.Args)
	}
	return root
}

func wrapArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if check == nil {
			return nil
		}
		if err := check(cmd, args); err != nil {
			return usageError{fmt.Errorf("%s: %w", cmd.CommandPath(), err)}
		}
		return nil
	}
}
