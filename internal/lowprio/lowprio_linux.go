package lowprio

import (
	"golang.org/x/sys/unix"
)

// The ioprio ABI (linux/ioprio.h).
const (
	ioprioWhoProcess = 1
	ioprioClassShift = 13
	ioprioClassNone  = 0
	ioprioClassIdle  = 3
)

func ioprioGet(tid int) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(tid), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func ioprioSet(tid, prio int) error {
	if _, _, e := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(tid), uintptr(prio)); e != 0 {
		return e
	}
	return nil
}

// niceOf returns the nice value of thread tid (getpriority(2) returns
// 20-nice as the raw system call).
func niceOf(tid int) (int, error) {
	p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return 0, err
	}
	return 20 - p, nil
}

// lower lowers the calling thread's priorities and returns what restores
// them, reporting whether it did (true when nothing was changed). The CPU
// priority is the SCHED_IDLE policy, which runs the thread only on a CPU
// that nothing else wants (a weight of 3 against a normal thread's 1024;
// nice 10 alone still takes a tenth of a busy CPU); where that is refused
// (a seccomp profile, say), nice Nice.
func lower() (restore func() bool) {
	tid := unix.Gettid()
	oldIO, ioErr := ioprioGet(tid)
	ioSet := ioErr == nil && ioprioSet(tid, ioprioClassIdle<<ioprioClassShift) == nil
	oldSched, schedErr := unix.SchedGetAttr(tid, 0)
	schedSet := false
	if schedErr == nil && oldSched.Policy != unix.SCHED_IDLE {
		idle := *oldSched
		idle.Policy = unix.SCHED_IDLE
		idle.Flags = 0
		schedSet = unix.SchedSetAttr(tid, &idle, 0) == nil
	}
	niceSet := false
	var oldNice int
	if !schedSet {
		var niceErr error
		oldNice, niceErr = niceOf(tid)
		niceSet = niceErr == nil && oldNice < Nice && unix.Setpriority(unix.PRIO_PROCESS, tid, Nice) == nil
	}
	return func() bool {
		ok := true
		// Leaving SCHED_IDLE needs CAP_SYS_NICE (or RLIMIT_NICE 20), as
		// does undoing a nice value.
		if schedSet && unix.SchedSetAttr(tid, oldSched, 0) != nil {
			ok = false
		}
		if niceSet && unix.Setpriority(unix.PRIO_PROCESS, tid, oldNice) != nil {
			ok = false
		}
		if ioSet {
			// A thread with no I/O priority of its own reads as class
			// none with the level its nice value implies, which
			// ioprio_set refuses: none is set as 0.
			if oldIO>>ioprioClassShift == ioprioClassNone {
				oldIO = 0
			}
			if ioprioSet(tid, oldIO) != nil {
				ok = false
			}
		}
		return ok
	}
}
