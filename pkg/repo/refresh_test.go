package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// getRecorder records the keys a storage is asked to read.
type getRecorder struct {
	storage.Storage
	mu   sync.Mutex
	gets []string
}

func (g *getRecorder) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	g.mu.Lock()
	g.gets = append(g.gets, key)
	g.mu.Unlock()
	return g.Storage.Get(ctx, key, off, n)
}

// take returns the keys read since the last call under prefix.
func (g *getRecorder) take(prefix string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, k := range g.gets {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	g.gets = nil
	return out
}

// storePack stores a pack of one data blob made of s through r, and
// returns it; with index, an index object names it.
func storePack(t *testing.T, r *Repository, s string, index bool) (PackIndex, string) {
	t.Helper()
	ctx := context.Background()
	raw := []byte(s)
	pb := NewPackBuilder(1 << 10)
	pb.Add(chunk.Hash(raw), DataBlob, chunk.Raw, raw, len(raw))
	data, id, entries := pb.Finish()
	if err := r.SavePack(ctx, data, id, entries); err != nil {
		t.Fatal(err)
	}
	p := PackIndex{Pack: id, Blobs: entries}
	if !index {
		return p, ""
	}
	ids, err := r.SaveIndex(ctx, []PackIndex{p})
	if err != nil || len(ids) != 1 {
		t.Fatal(ids, err)
	}
	return p, indexPrefix + ids[0].String()
}

func mustRefresh(t *testing.T, r *Repository, packs bool) *RefreshResult {
	t.Helper()
	res, err := r.Refresh(context.Background(), RefreshOptions{Packs: packs})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestRefreshReadsOnlyNewIndexObjects: a repository kept open reads, at a
// refresh, the index objects another writer added and none it has read
// or written itself; what changes under it the wrong way (a prune, a
// removed index object, a pack gone, a purge) makes it load again whole.
func TestRefreshReadsOnlyNewIndexObjects(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	cfg, err := NewConfig(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	writer, err := Init(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	first, firstKey := storePack(t, writer, "first", true)

	rec := &getRecorder{Storage: st}
	warm, err := Load(ctx, rec, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.take(indexPrefix); len(got) != 1 || got[0] != firstKey {
		t.Fatalf("load read %v", got)
	}
	if res := mustRefresh(t, warm, true); res.Full || res.IndexObjects != 0 {
		t.Fatalf("refresh with nothing new: %+v", res)
	}
	if got := rec.take(indexPrefix); len(got) != 0 {
		t.Fatalf("refresh with nothing new read %v", got)
	}

	// Another writer's index object is read, once; our own never.
	second, secondKey := storePack(t, writer, "second", true)
	own, _ := storePack(t, warm, "own", true)
	res := mustRefresh(t, warm, false)
	if got := rec.take(indexPrefix); res.Full || res.IndexObjects != 1 || len(got) != 1 || got[0] != secondKey {
		t.Fatalf("refresh read %v (%+v), want only %s", got, res, secondKey)
	}
	for _, p := range []PackIndex{first, second, own} {
		if !warm.Index().Has(p.Blobs[0].ID) {
			t.Fatalf("blob of pack %s not in the refreshed index", p.Pack.Short())
		}
	}
	if res := mustRefresh(t, warm, true); res.Full || res.IndexObjects != 0 || len(rec.take(indexPrefix)) != 0 {
		t.Fatalf("second refresh: %+v", res)
	}

	// A killed backup's pack is adopted once, by a refresh that lists
	// packs, and handed to one TakeAdopted.
	orphan, _ := storePack(t, writer, "orphan", false)
	if res := mustRefresh(t, warm, false); len(res.Report.Adopted) != 0 || warm.Index().HasPack(orphan.Pack) {
		t.Fatalf("a refresh without Packs adopted: %+v", res)
	}
	if res := mustRefresh(t, warm, true); res.Full || len(res.Report.Adopted) != 1 || res.Report.Adopted[0].Pack != orphan.Pack {
		t.Fatalf("refresh with Packs: %+v, want the orphan adopted", res)
	}
	if res := mustRefresh(t, warm, true); len(res.Report.Adopted) != 0 {
		t.Fatalf("orphan adopted twice: %+v", res)
	}
	if a := warm.TakeAdopted(); len(a) != 1 || a[0].Pack != orphan.Pack || !warm.Index().Has(orphan.Blobs[0].ID) {
		t.Fatalf("TakeAdopted = %v", a)
	}
	if a := warm.TakeAdopted(); len(a) != 0 {
		t.Fatalf("TakeAdopted again = %v", a)
	}

	// A damaged index object is named at every refresh while it is there.
	junk := []byte("not an index object")
	junkKey := indexPrefix + chunk.Hash(junk).String()
	if err := st.Put(ctx, junkKey, bytes.NewReader(junk), int64(len(junk))); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if res := mustRefresh(t, warm, false); res.Full || len(res.Report.Damaged) != 1 || res.Report.Damaged[0].Key != junkKey {
			t.Fatalf("refresh with a damaged index object: %+v", res)
		}
	}
	if err := st.Delete(ctx, junkKey); err != nil {
		t.Fatal(err)
	}
	if res := mustRefresh(t, warm, false); !res.Full || len(res.Report.Damaged) != 0 {
		t.Fatalf("refresh once the damaged object is gone: %+v", res)
	}

	// A pack whose trailer cannot be read is named at every refresh, and
	// read once.
	bad := []byte("no pack at all, too short")
	badKey := PackKey(chunk.Hash(bad))
	if err := st.Put(ctx, badKey, bytes.NewReader(bad), int64(len(bad))); err != nil {
		t.Fatal(err)
	}
	rec.take("")
	for range 2 {
		if res := mustRefresh(t, warm, true); res.Full || len(res.Report.BadPacks) != 1 || res.Report.BadPacks[0].Key != badKey {
			t.Fatalf("refresh with a bad pack: %+v", res)
		}
	}
	if res := mustRefresh(t, warm, false); len(res.Report.BadPacks) != 1 {
		t.Fatalf("refresh without Packs: %+v, want the bad pack named as of the last listing", res)
	}
	if got := rec.take(badKey); len(got) > 1 {
		t.Fatalf("the bad pack was read %d times", len(got))
	}
	if err := st.Delete(ctx, badKey); err != nil {
		t.Fatal(err)
	}
	if res := mustRefresh(t, warm, true); len(res.Report.BadPacks) != 0 {
		t.Fatalf("refresh once the bad pack is gone: %+v", res)
	}

	// An index object naming a pack that is gone (a fenced backup's,
	// written after a prune deleted its pack): with Packs, the index
	// loads again whole and leaves the pack out.
	gone, _ := storePack(t, writer, "gone", true)
	if err := st.Delete(ctx, PackKey(gone.Pack)); err != nil {
		t.Fatal(err)
	}
	if res := mustRefresh(t, warm, true); !res.Full || len(res.Report.MissingPacks) != 1 || warm.Index().Has(gone.Blobs[0].ID) {
		t.Fatalf("refresh over a missing pack: %+v; blob known: %v", res, warm.Index().Has(gone.Blobs[0].ID))
	}
	rec.take("")
	if res := mustRefresh(t, warm, true); res.Full || len(rec.take(indexPrefix)) != 0 {
		t.Fatalf("refresh after the whole load: %+v", res)
	}

	// A removed index object: loaded again whole.
	if err := st.Delete(ctx, firstKey); err != nil {
		t.Fatal(err)
	}
	if res := mustRefresh(t, warm, true); !res.Full || !strings.Contains(res.Reason, "gone") {
		t.Fatalf("refresh after an index object was removed: %+v", res)
	}

	// A prune state other than the one before the load: whole again.
	state := fmt.Appendf(nil, `{"generation":7,"phase":"idle"}`)
	if err := st.Put(ctx, pruneStateKey, bytes.NewReader(state), int64(len(state))); err != nil {
		t.Fatal(err)
	}
	if res := mustRefresh(t, warm, false); !res.Full || !strings.Contains(res.Reason, "prune") {
		t.Fatalf("refresh after a prune: %+v", res)
	}
	if res := mustRefresh(t, warm, false); res.Full {
		t.Fatalf("refresh after the reload: %+v", res)
	}

	// Purged, then created again: another repository.
	if err := st.Delete(ctx, configKey); err != nil {
		t.Fatal(err)
	}
	if _, err := warm.Refresh(ctx, RefreshOptions{}); !errors.Is(err, ErrNoRepository) {
		t.Fatalf("refresh of a purged repository: %v", err)
	}
	cfg2, _ := NewConfig(0, 0)
	if _, err := Init(ctx, st, cfg2); err != nil {
		t.Fatal(err)
	}
	if _, err := warm.Refresh(ctx, RefreshOptions{}); !errors.Is(err, ErrRepositoryReplaced) {
		t.Fatalf("refresh of a repository created again: %v", err)
	}
}

// TestSaveIndexWritesAPackOnce: a pack given twice (a backup's own, also
// adopted by a refresh that listed it before SavePack indexed it) is
// named once, so that readers accept the object.
func TestSaveIndexWritesAPackOnce(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	cfg, _ := NewConfig(0, 0)
	r, err := Init(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := storePack(t, r, "twice", false)
	if _, err := r.SaveIndex(ctx, []PackIndex{p, p}); err != nil {
		t.Fatal(err)
	}
	fresh, err := Load(ctx, st, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep := fresh.IndexReport(); len(rep.Damaged) != 0 || !fresh.Index().Has(p.Blobs[0].ID) {
		t.Fatalf("index with the pack twice: %+v", rep)
	}
}
