package sync

import (
	"context"
	"strings"
	"testing"

	"github.com/backupd/backupd/pkg/repo"
)

func TestCheckAndDeleteSnapshot(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src)
	t.Cleanup(func() { chmodTreeWritable(src) })
	r, root := newMemRepo(t)
	first := doBackup(t, r, src)
	doBackup(t, r, src)
	ctx := context.Background()
	for _, readData := range []bool{false, true} {
		res, err := openRepo(t, root).Check(ctx, readData)
		must(t, err)
		if len(res.Problems) != 0 || res.Snapshots != 2 || res.Trees == 0 || res.Blobs == 0 || (readData && res.PacksRead == 0) {
			t.Fatalf("healthy repository, readData=%v: %+v", readData, res)
		}
	}

	// One flipped byte in a data pack: only reading the data finds it.
	var dataPack string
	for id, blobs := range r.Index().Packs() {
		if blobs[0].Type == repo.DataBlob {
			dataPack = "owner1/" + repo.PackKey(id)
		}
	}
	keys := []string{dataPack}
	flipByte(t, root, dataPack, func(size int) int { return 10 })
	res, err := openRepo(t, root).Check(ctx, false)
	must(t, err)
	if len(res.Problems) != 0 {
		t.Fatalf("metadata check reported %q", res.Problems)
	}
	res, err = openRepo(t, root).Check(ctx, true)
	must(t, err)
	if len(res.Problems) == 0 || !strings.Contains(strings.Join(res.Problems, "\n"), keys[0][strings.Index(keys[0], "data/"):]) {
		t.Fatalf("flipped byte in %s: problems %q", keys[0], res.Problems)
	}

	// A missing pack is found without reading data.
	must(t, root.Delete(ctx, dataPack))
	res, err = openRepo(t, root).Check(ctx, false)
	must(t, err)
	// The index ignores the missing pack (so that no backup deduplicates
	// against what is gone): check says so, and names every file whose
	// data it held.
	if !strings.Contains(strings.Join(res.Warnings, "\n"), dataPack[strings.Index(dataPack, "data/"):]+": named by an index object but missing from storage") {
		t.Fatalf("deleted pack: warnings %q", res.Warnings)
	}
	if !strings.Contains(strings.Join(res.Problems, "\n"), "is not in the index") {
		t.Fatalf("deleted pack: problems %q", res.Problems)
	}

	r = openRepo(t, root)
	refs := listSnapshots(t, r)
	if refs[0].ID != first.SnapshotID {
		t.Fatal("oldest snapshot is not the first")
	}
	must(t, r.DeleteSnapshot(ctx, refs[0]))
	if after := listSnapshots(t, r); len(after) != 1 || after[0].ID == first.SnapshotID {
		t.Fatalf("after delete: %v", after)
	}
}
