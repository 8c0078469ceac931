// Package lowprio runs work at background priority: on Linux, the OS
// thread running it gets the idle I/O scheduling class (ioprio_set,
// IOPRIO_CLASS_IDLE) and the idle CPU scheduling policy (sched_setattr,
// SCHED_IDLE), or where that is refused a nice value of at least Nice
// (setpriority). These are per-thread attributes, so the goroutine is locked to its
// thread while lowered, and the thread is handed back to the Go runtime
// only once both are restored; a thread whose priority cannot be restored
// (restoring a nice value needs CAP_SYS_NICE) stays locked, and ends with
// its goroutine (the runtime terminates a thread whose goroutine exits
// while locked), so no other goroutine ever runs on a lowered thread.
// Threads the runtime starts while a lowered goroutine runs do not inherit
// its priority: the runtime creates threads from its template thread when
// the current one is locked.
package lowprio

import (
	"runtime"
)

// Nice is the least nice value of a lowered thread where SCHED_IDLE is
// refused (a thread already nicer keeps its own).
const Nice = 10

// Run runs fn on the calling goroutine, locked to its OS thread, with the
// thread's I/O priority and CPU policy idle (or, where SCHED_IDLE is
// refused, its nice value at least Nice), and restores them before it returns (or panics on, if fn panics). Where
// lowering is not supported, or fails, fn runs at the thread's priority.
func Run(fn func()) {
	runtime.LockOSThread()
	restore := lower()
	defer func() {
		if restore() {
			runtime.UnlockOSThread()
		}
		// else: left locked; the thread dies with the goroutine.
	}()
	fn()
}
