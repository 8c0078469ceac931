// Package benchrun holds what the scale benchmarks (prunescale,
// indexscale) share: running a command and reporting what it cost, and
// creating the repository they fill.
package benchrun

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/local"
)

// Run runs the command args (after an optional "--") with the caller's
// stdout and stderr, and prints its wall time, CPU time, peak RSS and exit
// code to stderr, prefixed by prog.
func Run(prog string, args []string) error {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		return fmt.Errorf("run: no command")
	}
	start := time.Now()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err := cmd.Run()
	wall := time.Since(start)
	if cmd.ProcessState == nil {
		return err
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	fmt.Fprintf(os.Stderr, "%s: wall %.2f s, cpu %.2f s, peak RSS %d MiB, exit %d\n",
		prog, wall.Seconds(), time.Duration(ru.Utime.Nano()+ru.Stime.Nano()).Seconds(), ru.Maxrss>>10, cmd.ProcessState.ExitCode())
	return err
}

// InitRepo creates a new repository of owner "bench" under the local
// store at dir, with the default config, and returns it with the owner's
// storage.
func InitRepo(ctx context.Context, dir string) (*repo.Repository, storage.Storage, error) {
	root, err := local.New(dir)
	if err != nil {
		return nil, nil, err
	}
	st, err := placement.NewPrefixPerOwner(root).Owner(ctx, "bench", true)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := repo.NewConfig(0, 0)
	if err != nil {
		return nil, nil, err
	}
	r, err := repo.Init(ctx, st, cfg)
	return r, st, err
}
