package sync

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/retention"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// churn rewrites a tenth of the files of src (by seed) and adds one.
func churn(t *testing.T, src string, round int) {
	t.Helper()
	for i := range 40 {
		if i%10 == round%10 {
			writeFile(t, filepath.Join(src, fmt.Sprintf("d%d", i%4), fmt.Sprintf("f%02d", i)), genData(uint64(1000*round+i), 20000+i*100), 0o644, time.Unix(1e9+int64(round), 0))
		}
	}
	writeFile(t, filepath.Join(src, fmt.Sprintf("new%02d", round)), genData(uint64(5000+round), 30000), 0o644, time.Unix(1e9, 0))
}

func storedBytes(t *testing.T, st storage.Storage, prefix string) (n int64, objects int) {
	t.Helper()
	must(t, st.List(context.Background(), prefix, func(oi storage.ObjectInfo) error {
		n += oi.Size
		objects++
		return nil
	}))
	return n, objects
}

// restoreEqual restores the latest snapshot of ws1 and compares it with src.
func restoreEqual(t *testing.T, root storage.Storage, src string) {
	t.Helper()
	r := ownerRepo(t, root)
	dst := t.TempDir()
	_, err := Restore(context.Background(), r, latest(t, r), dst, RestoreOptions{})
	must(t, err)
	compareDirs(t, snapshotDir(t, src), snapshotDir(t, dst))
}

func checkClean(t *testing.T, root storage.Storage) {
	t.Helper()
	res, err := ownerRepo(t, root).Check(context.Background(), true)
	must(t, err)
	if len(res.Problems) != 0 || len(res.Warnings) != 0 {
		t.Fatalf("check --read-data: problems %q, warnings %q", res.Problems, res.Warnings)
	}
}

// TestPruneFreesForgottenData: 10 snapshots with churn, forget all but the
// newest, prune: the newest restores, check is clean, a second prune has
// nothing to free, and what is stored is close to a fresh repository
// holding only that snapshot.
func TestPruneFreesForgottenData(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	for i := range 40 {
		writeFile(t, filepath.Join(src, fmt.Sprintf("d%d", i%4), fmt.Sprintf("f%02d", i)), genData(uint64(i), 20000+i*100), 0o644, time.Unix(1e9, 0))
	}
	root := mem.New()
	for round := range 10 {
		if round > 0 {
			churn(t, src, round)
		}
		doBackup(t, ownerRepo(t, root), src)
	}
	before, _ := storedBytes(t, root, "owner1/data/")
	r := ownerRepo(t, root)
	_, err := r.Forget(ctx, "", retention.Policy{KeepLast: 1}, false)
	must(t, err)
	res, err := r.Prune(ctx, repo.PruneOptions{})
	must(t, err)
	after, _ := storedBytes(t, root, "owner1/data/")
	t.Logf("prune: %+v; data %d -> %d bytes", *res, before, after)
	if res.PacksDeleted+res.PacksRepacked == 0 || after >= before {
		t.Fatalf("prune freed nothing: %+v", *res)
	}
	_, nIndex := storedBytes(t, root, "owner1/index/")
	if nIndex != 1 {
		t.Errorf("%d index objects after prune, want 1 consolidated", nIndex)
	}
	restoreEqual(t, root, src)
	checkClean(t, root)

	fresh := mem.New()
	doBackup(t, ownerRepo(t, fresh), src)
	want, _ := storedBytes(t, fresh, "owner1/data/")
	if float64(after) > 1.10*float64(want) {
		t.Errorf("after prune %d bytes of packs, a fresh repository %d: more than 10%% over", after, want)
	}

	res2, err := ownerRepo(t, root).Prune(ctx, repo.PruneOptions{})
	must(t, err)
	if res2.CondemnedBlobs != 0 || res2.PacksDeleted != 0 || res2.PacksRepacked != 0 {
		t.Errorf("second prune: %+v, want nothing to free", *res2)
	}
	if _, n := storedBytes(t, root, "owner1/sessions/"); n != 0 {
		t.Errorf("%d session objects left", n)
	}
	// A backup after the prune deduplicates against what is left.
	res3, err := Backup(ctx, ownerRepo(t, root), src, BackupOptions{Owner: "owner1", Workspace: "ws1", Force: true})
	must(t, err)
	if res3.Snapshot.Stats.NewBlobs != 0 {
		t.Errorf("backup after prune stored %d new blobs, want 0", res3.Snapshot.Stats.NewBlobs)
	}
	restoreEqual(t, root, src)
}

// TestPruneStopsOnAnUnreadableSnapshot: prune cannot know what a damaged
// snapshot uses, so it stops before deleting anything, says which, and
// leaves the state idle: the next prune does not wait for a lease.
func TestPruneStopsOnAnUnreadableSnapshot(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	for i := range 8 {
		writeFile(t, filepath.Join(src, fmt.Sprintf("f%d", i)), genData(uint64(i), 30000), 0o644, time.Unix(1e9, 0))
	}
	root := mem.New()
	doBackup(t, ownerRepo(t, root), src)
	churn(t, src, 1)
	doBackup(t, ownerRepo(t, root), src)
	r := ownerRepo(t, root)
	refs, err := r.ListSnapshots(ctx, "")
	must(t, err)
	must(t, r.DeleteSnapshot(ctx, refs[0])) // something to free
	bad := "owner1/" + refs[1].Key
	good, err := storage.ReadAll(ctx, root, bad, 0, -1)
	must(t, err)
	must(t, root.Put(ctx, bad, bytes.NewReader([]byte("{not json")), 9))
	before, nBefore := storedBytes(t, root, "owner1/data/")
	_, err = ownerRepo(t, root).Prune(ctx, repo.PruneOptions{})
	if err == nil || !strings.Contains(err.Error(), refs[1].ID.Short()) || !strings.Contains(err.Error(), "stops before deleting anything") {
		t.Fatalf("prune over a damaged snapshot: %v, want an error naming it", err)
	}
	if after, n := storedBytes(t, root, "owner1/data/"); after != before || n != nBefore {
		t.Fatalf("a failed prune changed the packs: %d objects, %d bytes -> %d, %d", nBefore, before, n, after)
	}
	must(t, root.Put(ctx, bad, bytes.NewReader(good), int64(len(good))))
	res, err := ownerRepo(t, root).Prune(ctx, repo.PruneOptions{})
	must(t, err)
	if res.CondemnedBlobs == 0 {
		t.Errorf("prune after the repair freed nothing: %+v", *res)
	}
	restoreEqual(t, root, src)
	checkClean(t, root)
}
