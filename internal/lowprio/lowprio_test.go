//go:build linux

package lowprio

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRunLowersTheThreadAndRestoresIt checks with the system calls that
// fn runs with the idle I/O class and SCHED_IDLE on its own thread, and
// that the thread is back to its priorities afterwards, or, when they
// cannot be restored (no CAP_SYS_NICE), still locked so that it dies.
func TestRunLowersTheThreadAndRestoresIt(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Locked by the test too, so that after Run this goroutine is
		// still on the thread Run lowered (locks nest).
		runtime.LockOSThread()
		tid := unix.Gettid()
		io0, err := ioprioGet(tid)
		if err != nil {
			t.Errorf("ioprio_get: %v", err)
			return
		}
		nice0, err := niceOf(tid)
		if err != nil {
			t.Errorf("getpriority: %v", err)
			return
		}
		sched0, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			t.Errorf("sched_getattr: %v", err)
			return
		}
		var inTid, inIO int
		var inSched *unix.SchedAttr
		Run(func() {
			inTid = unix.Gettid()
			inIO, _ = ioprioGet(inTid)
			inSched, _ = unix.SchedGetAttr(inTid, 0)
		})
		if inTid != tid {
			t.Errorf("fn ran on thread %d, want the locked %d", inTid, tid)
		}
		if inIO>>ioprioClassShift != ioprioClassIdle {
			t.Errorf("ioprio during Run = %#x, want class idle (%d)", inIO, ioprioClassIdle)
		}
		if inSched == nil || inSched.Policy != unix.SCHED_IDLE {
			t.Errorf("scheduling policy during Run = %+v, want SCHED_IDLE (%d)", inSched, unix.SCHED_IDLE)
		}
		io1, _ := ioprioGet(tid)
		sched1, _ := unix.SchedGetAttr(tid, 0)
		nice1, _ := niceOf(tid)
		if sched1 == nil || sched1.Policy != sched0.Policy || nice1 != nice0 {
			// Not restorable without CAP_SYS_NICE: then the thread must
			// stay locked (and so end with this goroutine).
			t.Logf("priority not restored (%+v, nice %d; was %+v, nice %d): the thread must die with its goroutine", sched1, nice1, sched0, nice0)
			if unix.Geteuid() == 0 {
				t.Errorf("as root the priority must be restored")
			}
			return
		}
		if io1>>ioprioClassShift != io0>>ioprioClassShift || (io0>>ioprioClassShift != ioprioClassNone && io1 != io0) {
			t.Errorf("ioprio after Run = %#x, want %#x as before", io1, io0)
		}
		runtime.UnlockOSThread()
	}()
	<-done
}

// TestRunRestoresOnPanic checks that a panic in fn leaves the thread
// restored and passes on.
func TestRunRestoresOnPanic(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		tid := unix.Gettid()
		nice0, _ := niceOf(tid)
		func() {
			defer func() {
				if recover() == nil {
					t.Error("the panic of fn did not pass through Run")
				}
			}()
			Run(func() { panic("boom") })
		}()
		if n, _ := niceOf(tid); n != nice0 && unix.Geteuid() == 0 {
			t.Errorf("nice after a panic in Run = %d, want %d", n, nice0)
		}
		if a, _ := unix.SchedGetAttr(tid, 0); a != nil && a.Policy == unix.SCHED_IDLE && unix.Geteuid() == 0 {
			t.Errorf("scheduling policy after a panic in Run: still SCHED_IDLE")
		}
		if io, _ := ioprioGet(tid); io>>ioprioClassShift == ioprioClassIdle && unix.Geteuid() == 0 {
			t.Errorf("ioprio after a panic in Run = %#x, still idle", io)
		}
		runtime.UnlockOSThread()
	}()
	<-done
}
