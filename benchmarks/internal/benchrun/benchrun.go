// Package benchrun runs a command for the scale benchmarks (prunescale,
// indexscale) and reports what it cost.
package benchrun

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
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
