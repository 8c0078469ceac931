package sync

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/internal/lowprio"
)

// TestWorkerWrapRunsTheReaders: with WorkerWrap set to lowprio.Run, every
// file is opened on a thread at idle I/O priority, and the wrap runs for
// each reader and compressor.
func TestWorkerWrapRunsTheReaders(t *testing.T) {
	src := t.TempDir()
	for i := range 20 {
		writeFile(t, filepath.Join(src, "d", string(rune('a'+i))), genData(uint64(i), 1000), 0o644, time.Unix(1e9, 0))
	}
	r, _ := newMemRepo(t)
	var notIdle, opened atomic.Int64
	testHookBeforeOpen = func(string) {
		opened.Add(1)
		prio, _, e := unix.Syscall(unix.SYS_IOPRIO_GET, 1 /* IOPRIO_WHO_PROCESS */, uintptr(unix.Gettid()), 0)
		if e != 0 || prio>>13 != 3 /* IOPRIO_CLASS_IDLE */ {
			notIdle.Add(1)
		}
	}
	t.Cleanup(func() { testHookBeforeOpen = nil })
	var wraps atomic.Int64
	_, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1", Readers: 2, Compressors: 3,
		WorkerWrap: func(fn func()) { wraps.Add(1); lowprio.Run(fn) }})
	must(t, err)
	if opened.Load() != 20 || notIdle.Load() != 0 || wraps.Load() < 5 {
		t.Fatalf("%d files opened, %d not at idle I/O priority; %d wraps (want at least 5)", opened.Load(), notIdle.Load(), wraps.Load())
	}
}
