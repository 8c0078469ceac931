package sync

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"
)

// openFDsUnder counts this process's descriptors of dir or what is below.
func openFDsUnder(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	must(t, err)
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && (target == dir || strings.HasPrefix(target, dir+"/")) {
			n++
		}
	}
	return n
}

// TestCancelledBackupClosesEverything: a backup cancelled while files wait
// in its queue (more than the queue holds) leaves no descriptor of the
// source open: each queued file held its directory.
func TestCancelledBackupClosesEverything(t *testing.T) {
	src := t.TempDir()
	for i := range 400 {
		writeFile(t, filepath.Join(src, "d", fmt.Sprintf("f%03d", i)), []byte("x"), 0o644, time.Unix(1e9, 0))
	}
	r, _ := newMemRepo(t)
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	var once gosync.Once
	testHookBeforeOpen = func(string) {
		once.Do(func() { close(started) })
		<-ctx.Done() // every reader stops at its first file until cancelled
	}
	t.Cleanup(func() { testHookBeforeOpen = nil })
	done := make(chan error, 1)
	go func() {
		_, err := Backup(ctx, r, src, BackupOptions{Owner: "owner1", Workspace: "ws1"})
		done <- err
	}()
	<-started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: %v", err)
	}
	if n := openFDsUnder(t, src); n != 0 {
		t.Fatalf("%d descriptors under the source left open after a cancelled backup", n)
	}
}
