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
// them, reporting whether it did (true when nothing was changed).
func lower() (restore func() bool) {
	tid := unix.Gettid()
	oldIO, ioErr := ioprioGet(tid)
	ioSet := ioErr == nil && ioprioSet(tid, ioprioClassIdle<<ioprioClassShift) == nil
	oldNice, niceErr := niceOf(tid)
	niceSet := niceErr == nil && oldNice < Nice && unix.Setpriority(unix.PRIO_PROCESS, tid, Nice) == nil
	return func() bool {
		ok := true
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
