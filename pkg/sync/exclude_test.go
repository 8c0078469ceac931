package sync

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/exclude"
	"github.com/backupd/backupd/pkg/repo"
)

func TestBackupExcludes(t *testing.T) {
	src := t.TempDir()
	mt := time.Unix(1e9, 0)
	for _, p := range []string{"main.go", "debug.log", "keep.log", "node_modules/a/index.js", "web/node_modules/b.js",
		"build/out", "src/build/out", "src/app.go", "tmp/x", "notes/tmp"} {
		writeFile(t, filepath.Join(src, p), []byte(p), 0o644, mt)
	}
	// The workspace's exclude file comes after --exclude, so it can
	// re-include; /tmp/ is anchored and for directories only.
	writeFile(t, filepath.Join(src, exclude.ExcludeFile), []byte("# workspace excludes\n/tmp/\n!keep.log\n"), 0o644, mt)
	r, _ := newMemRepo(t)
	res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1",
		Exclude: []string{"*.log", "node_modules/", "/build"}})
	must(t, err)
	dst := t.TempDir()
	_, err = restoreLatest(t, r, dst)
	must(t, err)
	var got []string
	for p, e := range snapshotDir(t, dst) {
		if e.typ.IsRegular() {
			got = append(got, p)
		}
	}
	want := []string{".backupdignore", "keep.log", "main.go", "notes/tmp", "src/app.go", "src/build/out"}
	if strings.Join(sorted(got), " ") != strings.Join(want, " ") {
		t.Fatalf("restored %q, want %q", sorted(got), want)
	}
	if st := res.Snapshot.Stats; st.Excluded != 5 || st.Files != int64(len(want)) {
		t.Fatalf("stats: excluded %d (want 5: debug.log, node_modules, web/node_modules, build, tmp), files %d", st.Excluded, st.Files)
	}

	// A bad pattern, in a flag or in the file, fails before anything is
	// stored, naming the pattern.
	before := len(listSnapshots(t, r))
	if _, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1", Exclude: []string{"[oops"}}); err == nil || !strings.Contains(err.Error(), "[oops") {
		t.Fatalf("bad --exclude pattern: %v", err)
	}
	writeFile(t, filepath.Join(src, exclude.ExcludeFile), []byte("ok\n[oops\n"), 0o644, mt)
	if _, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1"}); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("bad exclude file: %v", err)
	}
	if after := len(listSnapshots(t, r)); after != before {
		t.Fatalf("a failed backup wrote a snapshot: %d -> %d", before, after)
	}
	// An exclude file that is a link (to a file outside, say) is not
	// followed: ignored with a warning, the backup goes on.
	outside := filepath.Join(t.TempDir(), "patterns")
	writeFile(t, outside, []byte("*\n"), 0o644, mt)
	must(t, os.Remove(filepath.Join(src, exclude.ExcludeFile)))
	must(t, os.Symlink(outside, filepath.Join(src, exclude.ExcludeFile)))
	var warned []string
	res, err = Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1",
		Warn: func(p string, err error) { warned = append(warned, p+": "+err.Error()) }})
	must(t, err)
	if len(warned) != 1 || !strings.Contains(warned[0], exclude.ExcludeFile) || res.Snapshot.Stats.Excluded != 0 {
		t.Fatalf("exclude file as a link: warnings %q, stats %+v", warned, res.Snapshot.Stats)
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func listSnapshots(t testing.TB, r *repo.Repository) []repo.SnapshotRef {
	t.Helper()
	refs, err := r.ListSnapshots(context.Background(), "ws1")
	must(t, err)
	return refs
}
