package sync

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/repo"
)

// Files written while a backup reads them (issue 13, "consistency of live
// files"): a file rewritten during its read is read again; one that keeps
// changing through every read is stored flagged repo.NodeChanging; a
// file is never stored as a mix of two versions without that flag.

// version returns size bytes of version v: every 8-byte word holds v.
func version(v uint64, size int) []byte {
	b := make([]byte, size)
	for i := 0; i+8 <= size; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], v)
	}
	return b
}

// versionOf returns the version data holds, or ok false for a mix.
func versionOf(data []byte) (v uint64, ok bool) {
	if len(data) < 8 {
		return 0, false
	}
	v = binary.LittleEndian.Uint64(data)
	for i := 8; i+8 <= len(data); i += 8 {
		if binary.LittleEndian.Uint64(data[i:]) != v {
			return 0, false
		}
	}
	return v, true
}

// rewrite writes version v over path in place, in 64 KiB writes.
func rewrite(t testing.TB, path string, v uint64, size int) { rewriteGap(t, path, v, size) }

// rewriteGap is rewrite, returning the longest time between two of its
// writes: for so long the file was left part old, part new.
func rewriteGap(t testing.TB, path string, v uint64, size int) (gap time.Duration) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	data := version(v, size)
	var last time.Time
	for off := 0; off < size; off += 64 << 10 {
		if off > 0 {
			gap = max(gap, time.Since(last))
		}
		if _, err := f.WriteAt(data[off:min(off+64<<10, size)], int64(off)); err != nil {
			t.Error(err)
			return
		}
		last = time.Now()
	}
	return gap
}

// rootNodes returns the root tree's nodes of snapshot res by name.
func rootNodes(t *testing.T, r *repo.Repository, res *BackupResult) map[string]repo.Node {
	t.Helper()
	tr, err := r.LoadTree(context.Background(), res.Snapshot.Tree)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]repo.Node{}
	for _, n := range tr.Nodes {
		m[n.Name] = n
	}
	return m
}

// restoredVersions restores snapshot res and returns each file's version,
// -1 for a mix.
func restoredVersions(t *testing.T, r *repo.Repository, res *BackupResult) map[string]int64 {
	t.Helper()
	dst := t.TempDir()
	if _, err := Restore(context.Background(), r, res.Snapshot, dst, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	ents, err := os.ReadDir(dst)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dst, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := versionOf(data); ok {
			m[e.Name()] = int64(v)
		} else {
			m[e.Name()] = -1
		}
	}
	return m
}

func setLiveMargin(t *testing.T, d time.Duration) {
	old := liveMargin
	liveMargin = d
	t.Cleanup(func() { liveMargin = old })
}

func TestFileRewrittenDuringItsReadIsReadAgain(t *testing.T) {
	// No margin: only a change seen in the file's stat makes a re-read
	// (the files were written just now, which the margin would count).
	setLiveMargin(t, 0)
	const size = 4 << 20
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "a"), version(1, size), 0o644, time.Unix(1, 0))
	writeFile(t, filepath.Join(src, "calm"), version(7, size), 0o644, time.Unix(1, 0))
	var rewrites atomic.Int32
	testHookFault = func(op, path string, off int64) error {
		if op == "read" && filepath.Base(path) == "a" && off > 0 && rewrites.Add(1) == 1 {
			rewrite(t, path, 2, size) // the read goes on into version 2
		}
		return nil
	}
	t.Cleanup(func() { testHookFault = nil })
	r, _ := newMemRepo(t)
	res := doBackup(t, r, src)
	testHookFault = nil
	st := res.Snapshot.Stats
	if st.Reread != 1 || st.Changing != 0 || st.Bytes != 2*size {
		t.Fatalf("stats %+v: want 1 re-read, none changing, %d bytes", st, 2*size)
	}
	nodes := rootNodes(t, r, res)
	if nodes["a"].Flags != 0 || nodes["calm"].Flags != 0 {
		t.Fatalf("flags %v %v", nodes["a"].Flags, nodes["calm"].Flags)
	}
	if got := restoredVersions(t, r, res); got["a"] != 2 || got["calm"] != 7 {
		t.Fatalf("restored versions %v, want a 2 and calm 7", got)
	}
}

func TestFileChangingThroughEveryReadIsFlagged(t *testing.T) {
	setLiveMargin(t, 0)
	oldRacy := racyWindow
	racyWindow = 0 // calm, written just now, may be taken over unread
	t.Cleanup(func() { racyWindow = oldRacy })
	const size = 4 << 20
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "hot"), version(1, size), 0o644, time.Unix(1, 0))
	writeFile(t, filepath.Join(src, "calm"), version(7, size), 0o644, time.Unix(1, 0))
	var v atomic.Uint64
	v.Store(1)
	testHookFault = func(op, path string, off int64) error {
		if op == "read" && filepath.Base(path) == "hot" && off > 0 && off < 1<<20 {
			rewrite(t, path, v.Add(1), size) // every read pass sees a write
		}
		return nil
	}
	t.Cleanup(func() { testHookFault = nil })
	var mu gosync.Mutex
	var warned []string
	r, root := newMemRepo(t)
	res, err := Backup(context.Background(), r, src, BackupOptions{Owner: "owner1", Workspace: "ws1",
		Warn: func(p string, err error) { mu.Lock(); warned = append(warned, p+": "+err.Error()); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	testHookFault = nil
	st := res.Snapshot.Stats
	if st.Changing != 1 || st.Reread != maxReads-1 || st.Bytes != 2*size {
		t.Fatalf("stats %+v: want 1 changing after %d re-reads", st, maxReads-1)
	}
	nodes := rootNodes(t, r, res)
	if nodes["hot"].Flags != repo.NodeChanging || nodes["calm"].Flags != 0 || nodes["hot"].Size != size {
		t.Fatalf("hot %+v, calm flags %v", nodes["hot"], nodes["calm"].Flags)
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "hot: kept changing while it was read (3 reads)") {
		t.Fatalf("warnings %q", warned)
	}
	// The flag survives storage, and the next backup reads the file again
	// though its stat is as the flagged node has it.
	r2 := openRepo(t, root)
	snap, _, err := r2.FindSnapshot(context.Background(), "ws1", res.SnapshotID.String())
	if err != nil || snap.Stats.Changing != 1 {
		t.Fatalf("stored snapshot %+v, %v", snap, err)
	}
	next := doBackup(t, r2, src)
	if s := next.Snapshot.Stats; s.Changing != 0 || s.UnchangedFiles != 1 {
		t.Fatalf("next backup %+v: want hot read again (unflagged), calm unchanged", s)
	}
	if nodes := rootNodes(t, r2, next); nodes["hot"].Flags != 0 {
		t.Fatalf("hot still flagged: %+v", nodes["hot"])
	}
	if got := restoredVersions(t, r2, next); got["hot"] != int64(v.Load()) || got["calm"] != 7 {
		t.Fatalf("restored versions %v, want hot %d", got, v.Load())
	}
}

func TestFileWrittenJustBeforeItsReadIsReadAgain(t *testing.T) {
	// A write within the clock's granularity of the read's start may leave
	// no trace in the file's times: such a file is read again once the
	// clock has passed them.
	setLiveMargin(t, time.Hour) // every file counts as just written
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "a"), version(1, 1000), 0o644, time.Unix(1, 0))
	var slept atomic.Bool
	oldSleep := sleepFor
	sleepFor = func(ctx context.Context, d time.Duration) error {
		if d > 50*time.Minute {
			slept.Store(true)
		}
		return nil
	}
	t.Cleanup(func() { sleepFor = oldSleep })
	r, _ := newMemRepo(t)
	res := doBackup(t, r, src)
	if st := res.Snapshot.Stats; st.Reread != maxReads-1 || st.Changing != 1 || !slept.Load() {
		t.Fatalf("stats %+v, waited %v: want every read of a just-written file distrusted", st, slept.Load())
	}
}

func TestLiveWriterNeverStoredMixedUnflagged(t *testing.T) {
	const files, size = 6, 2 << 20
	src := t.TempDir()
	for i := range files {
		writeFile(t, filepath.Join(src, "f"+string(rune('0'+i))), version(1, size), 0o644, time.Unix(1, 0))
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg gosync.WaitGroup
	rounds := make(chan struct{}, 1)
	// The longest a file was left half rewritten: a writer held up (on a
	// loaded machine) between two of its writes for longer than the live
	// margin leaves a mix of versions on the disk that no write changes
	// while a read can begin and end; storing that is storing the file as
	// it was.
	gaps := make([]time.Duration, files)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for v := uint64(2); ctx.Err() == nil; v++ {
			for i := range files {
				gaps[i] = max(gaps[i], rewriteGap(t, filepath.Join(src, "f"+string(rune('0'+i))), v, size))
			}
			select {
			case rounds <- struct{}{}:
			default:
			}
		}
	}()
	<-rounds // the writer is at work
	r, _ := newMemRepo(t)
	res := doBackup(t, r, src)
	stop()
	wg.Wait()
	nodes := rootNodes(t, r, res)
	flagged := 0
	for name, v := range restoredVersions(t, r, res) {
		if nodes[name].Flags&repo.NodeChanging != 0 {
			flagged++
			continue
		}
		if i := int(name[1] - '0'); v < 0 && gaps[i] >= liveMargin {
			t.Logf("%s stored as a mix of versions, unflagged: the writer left it half rewritten for %v, longer than the live margin", name, gaps[i])
		} else if v < 0 {
			t.Errorf("%s stored as a mix of versions, unflagged (the writer's longest pause in a rewrite of it: %v)", name, gaps[i])
		}
	}
	if st := res.Snapshot.Stats; st.Changing != int64(flagged) {
		t.Fatalf("stats count %d changing, %d nodes flagged", st.Changing, flagged)
	}
	t.Logf("%d of %d files flagged changing, %d re-reads", flagged, files, res.Snapshot.Stats.Reread)
}
