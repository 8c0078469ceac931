// Command backupctl is the operator's CLI for backupd repositories: back up
// and restore workspaces, list and inspect snapshots, check, forget, prune
// and purge.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/internal/usage"
)

// usageError marks an error as a usage error (exit status 2).
type usageError = usage.Error

func main() {
	setMemoryLimit(defaultMemoryLimit)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd()
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return
	}
	stop()
	os.Exit(report(os.Stderr, cmd, err))
}

// Soft memory limits of the Go runtime, which keep the heap, and so RSS,
// below 256 MiB (the brief's bound) unless $GOMEMLIMIT says otherwise.
const (
	defaultMemoryLimit = 160 << 20
	// backupMemoryLimit is a backup's. Its buffers alone (the packs being
	// filled and uploaded in parallel, chunk buffers, zstd windows) take
	// about 190 MiB of heap in a backup of a workspace with large files.
	// Under 160 MiB the collector ran back to back, some 800 times in a
	// first backup of the generated 653 MiB workspace, without lowering
	// its peak RSS below that working set. At 208 MiB that backup took
	// 4.7 s instead of 6.7 s (peak RSS 235-244 MiB, was 223-227), a
	// 1M-file one 17-21 s instead of 26-27 s (231-238 MiB, was 211-223):
	// benchmarks/RESULTS.md, section 23. A restore gains nothing from it.
	backupMemoryLimit = 208 << 20
)

// setMemoryLimit sets the runtime's soft memory limit to n bytes, unless
// $GOMEMLIMIT is set.
func setMemoryLimit(n int64) {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(n)
	}
}

// report prints err on one line, and for a usage error a second line
// pointing to the command's help; it returns the exit status.
func report(w io.Writer, cmd *cobra.Command, err error) int {
	msg := usage.Message(err)
	if strings.HasPrefix(msg, "missing required flag") && cmd != nil && cmd.HasParent() {
		msg = cmd.Name() + ": " + msg
	}
	fmt.Fprintf(w, "backupctl: %s\n", msg)
	code := usage.ExitCode(err)
	if code == usage.ExitUsage {
		path := "backupctl"
		if cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(w, "Run '%s --help' for usage.\n", path)
	}
	return code
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
	var cpuProfile, execTrace string
	var stops []func()
	root.PersistentFlags().StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile to `FILE` (for developers)")
	root.PersistentFlags().StringVar(&execTrace, "exec-trace", "", "write a Go execution trace to `FILE` (for developers; go tool trace reads it)")
	_ = root.PersistentFlags().MarkHidden("cpu-profile")
	_ = root.PersistentFlags().MarkHidden("exec-trace")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		for _, o := range []struct {
			path  string
			start func(io.Writer) error
			stop  func()
		}{{cpuProfile, pprof.StartCPUProfile, pprof.StopCPUProfile}, {execTrace, trace.Start, trace.Stop}} {
			if o.path == "" {
				continue
			}
			f, err := os.Create(o.path)
			if err != nil {
				return err
			}
			if err := o.start(f); err != nil {
				f.Close()
				return err
			}
			stops = append(stops, func() { o.stop(); f.Close() })
		}
		return nil
	}
	root.PersistentPostRun = func(*cobra.Command, []string) {
		for _, stop := range stops {
			stop()
		}
	}
	root.SetFlagErrorFunc(usage.FlagError)
	root.AddCommand(newBackupCmd(), newRestoreCmd(), newSnapshotsCmd(), newLsCmd(), newDiffCmd(), newStatsCmd(), newInitCmd(), newCheckCmd(), newRepairCmd(), newForgetCmd(), newDeleteCmd(), newPruneCmd(), newPurgeCmd())
	return root
}
