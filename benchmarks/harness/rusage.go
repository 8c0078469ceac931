package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Peak RSS needs a detour. Go starts child processes with vfork
// (CLONE_VM), so at execve the child's address space is still the
// harness's, and Linux carries that address space's high-water mark into
// the child's ru_maxrss. Measured directly, every child would report at
// least the harness's own peak RSS, which with a 100k-file manifest in
// memory is over 150 MiB. So each measured command runs under a small
// helper: the harness binary re-executed in helper mode, which starts the
// command, waits for it and reports the command's wall time and rusage on
// file descriptor 3. The command's ru_maxrss then starts from the helper's
// few MiB (see the README for the floor), not from the harness's.

// rusageHelperEnv, when set, makes the harness binary act as the helper:
// it runs its arguments as a command.
const rusageHelperEnv = "BACKUPD_BENCH_RUSAGE_HELPER"

// helperReport is what the helper writes to file descriptor 3.
type helperReport struct {
	WallNS int64  `json:"wall_ns"` // start to exit of the command
	UserNS int64  `json:"user_ns"`
	SysNS  int64  `json:"sys_ns"`
	MaxRSS int64  `json:"max_rss"` // bytes
	Exit   int    `json:"exit"`
	Err    string `json:"err,omitempty"` // the command could not be started
}

// rusageHelper runs args as a command with the helper's stdin, stdout and
// stderr, reports on descriptor 3, and returns the command's exit code.
func rusageHelper(args []string) int {
	report := os.NewFile(3, "report")
	var rep helperReport
	if len(args) == 0 {
		rep.Err, rep.Exit = "no command", 127
	} else {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.Env = withoutEnv(os.Environ(), rusageHelperEnv)
		start := time.Now()
		err := cmd.Run()
		rep.WallNS = time.Since(start).Nanoseconds()
		var exitErr *exec.ExitError
		switch {
		case err == nil || errors.As(err, &exitErr):
			ps := cmd.ProcessState
			rep.UserNS, rep.SysNS = ps.UserTime().Nanoseconds(), ps.SystemTime().Nanoseconds()
			if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
				rep.MaxRSS = int64(ru.Maxrss) * 1024 // KiB on Linux
				if runtime.GOOS == "darwin" {
					rep.MaxRSS = int64(ru.Maxrss) // bytes on macOS
				}
			}
			rep.Exit = ps.ExitCode()
			if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				rep.Exit = 128 + int(ws.Signal())
			}
		default:
			rep.Err, rep.Exit = err.Error(), 127
		}
	}
	if err := json.NewEncoder(report).Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, "rusage helper:", err)
		return 125
	}
	return rep.Exit
}

func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
