package sync

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/repo"
)

func TestBackupRecordsRecentFilesNewestFirst(t *testing.T) {
	src := t.TempDir()
	for i, name := range []string{"old", "a/newest", "middle"} {
		writeFile(t, filepath.Join(src, name), []byte(name), 0o644, time.Unix(1e9+int64([]int{0, 200, 100}[i]), 0))
	}
	r, _ := newMemRepo(t)
	res := doBackup(t, r, src)
	if want := []string{"a/newest", "middle", "old"}; !slices.Equal(res.Snapshot.Recent, want) {
		t.Fatalf("recent %q, want %q", res.Snapshot.Recent, want)
	}
	snaps, err := r.ListSnapshots(context.Background(), "ws1")
	must(t, err)
	stored, err := r.LoadSnapshot(context.Background(), snaps[0])
	must(t, err)
	if !slices.Equal(stored.Recent, res.Snapshot.Recent) {
		t.Fatalf("stored recent %q, want %q", stored.Recent, res.Snapshot.Recent)
	}
}

func TestRecentFilesKeepsTheNewest(t *testing.T) {
	var rf recentFiles
	n := 3 * repo.MaxRecent
	for i := range n {
		// Offered in a scrambled order: file k has mtime k.
		k := (i * 7919) % n
		rf.add(fmt.Sprintf("d%d/f%d", k%5, k), int64(k))
	}
	got := rf.list()
	var want []string
	for k := n - 1; k >= n-repo.MaxRecent; k-- {
		want = append(want, fmt.Sprintf("d%d/f%d", k%5, k))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("kept %d: %q...; want the %d newest, newest first: %q...", len(got), got[:min(3, len(got))], len(want), want[:3])
	}
	if err := repo.ValidateRecent(got); err != nil {
		t.Fatal(err)
	}
	// Long paths: the list stops within MaxRecentBytes.
	var long recentFiles
	for i := range repo.MaxRecent {
		long.add(fmt.Sprintf("%0200d", i), int64(i))
	}
	if err := repo.ValidateRecent(long.list()); err != nil || len(long.list()) == repo.MaxRecent {
		t.Fatalf("long paths: %d listed, %v", len(long.list()), err)
	}
}
