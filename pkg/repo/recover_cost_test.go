package repo

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
	"github.com/backupd/backupd/pkg/storage/metered"
)

// requestCounter counts a storage's calls (through metered) and, per List
// call, the keys listed, to tell how many pages of 1,000 keys (S3's
// ListObjectsV2, GCS, Azure) each listing would take.
type requestCounter struct {
	storage.Storage // metered, reporting to calls
	mu              sync.Mutex
	calls           map[string]int
	bytes           map[string]int64
	listed          map[string]int // keys, by prefix listed
	pages           int
}

func newRequestCounter(s storage.Storage) *requestCounter {
	c := &requestCounter{calls: map[string]int{}, bytes: map[string]int64{}, listed: map[string]int{}}
	c.Storage = metered.New(s, metered.ObserverFunc(func(op string, _ error, n int64, _ time.Duration) {
		c.mu.Lock()
		c.calls[op]++
		c.bytes[op] += n
		c.mu.Unlock()
	}))
	return c
}

func (c *requestCounter) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	n := 0
	err := c.Storage.List(ctx, prefix, func(oi storage.ObjectInfo) error { n++; return fn(oi) })
	c.mu.Lock()
	c.listed[prefix] += n
	c.pages += max(1, (n+999)/1000)
	c.mu.Unlock()
	return err
}

// S3 request prices (us-east-1, standard): PUT, COPY, POST and LIST $0.005
// per 1,000; GET $0.0004 per 1,000.
const (
	costPutList = 0.005 / 1000
	costGet     = 0.0004 / 1000
)

// costRepo stores n packs of one small data blob each and index objects
// naming all but the last orphans of them, perIndex packs to an object.
func costRepo(t testing.TB, n, orphans, perIndex int) *mem.Storage {
	t.Helper()
	ctx := context.Background()
	st := mem.New()
	cfg, err := NewConfig(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Init(ctx, st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var pending []PackIndex
	for i := range n {
		raw := fmt.Appendf(nil, "blob %d of a synthetic pack", i)
		pb := NewPackBuilder(1 << 10)
		pb.Add(chunk.Hash(raw), DataBlob, chunk.Raw, raw, len(raw))
		data, id, entries := pb.Finish()
		if err := r.SavePack(ctx, data, id, entries); err != nil {
			t.Fatal(err)
		}
		if i >= n-orphans {
			continue // a killed backup's: in no index object
		}
		pending = append(pending, PackIndex{Pack: id, Blobs: entries})
		if len(pending) == perIndex || i == n-orphans-1 {
			if _, err := r.SaveIndex(ctx, pending); err != nil {
				t.Fatal(err)
			}
			pending = nil
		}
	}
	return st
}

// loadCounted loads the index of st through a request counter, with a
// node cache in cacheDir ("" for none).
func loadCounted(t testing.TB, st storage.Storage, cacheDir string) (*requestCounter, *IndexReport, time.Duration) {
	t.Helper()
	ctx := context.Background()
	c := newRequestCounter(st)
	r, err := Open(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if cacheDir != "" {
		cache, err := OpenCache(cacheDir, r.Config().ID, DefaultCacheSize)
		if err != nil {
			t.Fatal(err)
		}
		r.SetCache(cache)
	}
	c.mu.Lock()
	c.calls, c.bytes, c.listed, c.pages = map[string]int{}, map[string]int64{}, map[string]int{}, 0 // not Open's config read
	c.mu.Unlock()
	start := time.Now()
	if err := r.LoadIndex(ctx, 8); err != nil {
		t.Fatal(err)
	}
	return c, r.IndexReport(), time.Since(start)
}

// TestIndexLoadRequests measures what resuming a killed backup costs on
// object storage, against the alternative of writing index objects as
// packs complete. Today a backup writes one index object for its packs
// when they are all stored, and every index load lists data/ to find the
// packs no index object names (a killed backup's), reading two ranges of
// each such pack's trailer once (the next backup writes them into its
// index). The alternative writes an index object every m packs, and would
// not need to list data/ (it would lose at most the m-1 packs not yet
// indexed when killed, unless it listed data/ too).
//
// It asserts the requests one load makes (two listings, one GET per
// index object not in the node cache and two per orphan pack, no writes)
// and logs them with S3 prices for repositories of 64, 1,000 and 10,000
// packs (1, 16 and 160 GiB of 16 MiB packs).
func TestIndexLoadRequests(t *testing.T) {
	const perBackup = 64 // packs a 1 GiB first backup writes
	for _, n := range []int{64, 1000, 10000} {
		for _, k := range []int{0, 1, 64} {
			if k >= n {
				continue
			}
			st := costRepo(t, n, k, perBackup)
			indexObjects := (n - k + perBackup - 1) / perBackup
			cacheDir := t.TempDir()
			for _, warm := range []bool{false, true} {
				c, rep, took := loadCounted(t, st, cacheDir) // the first load fills the cache
				wantGets := 2 * k
				if !warm {
					wantGets += indexObjects
				}
				if len(rep.Adopted) != k || rep.Packs != n || c.calls[metered.OpList] != 2 || c.calls[metered.OpGet] != wantGets ||
					c.calls[metered.OpPut]+c.calls[metered.OpPutIfAbsent]+c.calls[metered.OpDelete]+c.calls[metered.OpStat] != 0 {
					t.Fatalf("n=%d k=%d warm=%v: adopted %d of %d packs, calls %v (want 2 lists, %d gets, nothing else)",
						n, k, warm, len(rep.Adopted), rep.Packs, c.calls, wantGets)
				}
				dataPages := (c.listed[dataPrefix] + 999) / 1000
				t.Logf("adoption: %5d packs, %2d orphans, %3d index objects, node cache %-5v: %2d LIST pages (%d of them data/), %3d GETs (%d of them trailers, %d bytes), %6.1f ms: $%.7f per load, of which listing data/ $%.7f and the orphans $%.7f (once)",
					n, k, indexObjects, warm, c.pages, dataPages, c.calls[metered.OpGet], 2*k, c.bytes[metered.OpGet]-sumIndexBytes(st, warm),
					float64(took.Microseconds())/1000, float64(c.pages)*costPutList+float64(c.calls[metered.OpGet])*costGet,
					float64(dataPages)*costPutList, float64(2*k)*costGet)
			}
		}
		// The alternative: an index object every m packs, no listing of
		// data/. Its loads list index/ and read the objects not cached;
		// its backups write ceil(P/m) index objects instead of one.
		for _, m := range []int{1, 8} {
			st := costRepo(t, n, 0, m)
			c, _, took := loadCounted(t, st, "")
			objects := c.listed[indexPrefix]
			indexPages := (objects + 999) / 1000
			extraPuts := (perBackup+m-1)/m - 1
			t.Logf("index every %d packs: %5d packs, %4d index objects: %2d LIST pages of index/, %5d GETs on a node without cache (%6.1f ms): $%.7f per cold load without listing data/; a backup of %d packs writes %d index objects more than today: $%.7f, a backup of 1 pack none",
				m, n, objects, indexPages, c.calls[metered.OpGet], float64(took.Microseconds())/1000,
				float64(indexPages)*costPutList+float64(c.calls[metered.OpGet])*costGet, perBackup, extraPuts, float64(extraPuts)*costPutList)
		}
	}
}

// sumIndexBytes is how many bytes of index objects a load read: all of
// them when cold, none when warm.
func sumIndexBytes(st *mem.Storage, warm bool) int64 {
	if warm {
		return 0
	}
	var n int64
	st.List(context.Background(), indexPrefix, func(oi storage.ObjectInfo) error { n += oi.Size; return nil })
	return n
}
