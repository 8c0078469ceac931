package repo

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/backupd/backupd/pkg/chunk"
)

func randomID(rng *rand.Rand) chunk.ID {
	var id chunk.ID
	for i := 0; i < len(id); i += 8 {
		binary.LittleEndian.PutUint64(id[i:], rng.Uint64())
	}
	return id
}

// TestIndexSpillMatchesMap adds 200,000 blobs to an index whose memory
// budget makes it spill and merge runs many times, some blobs again in
// other packs, with lookups running meanwhile, and checks every answer
// against a map of what was added first.
func TestIndexSpillMatchesMap(t *testing.T) {
	const blobs = 200_000
	rng := rand.New(rand.NewPCG(7, 11))
	x := NewIndex()
	x.SetMemory(200 << 10) // ~4,000 records: every sealed tail spills
	x.setDir(t.TempDir())
	type want struct {
		pack chunk.ID
		e    BlobEntry
	}
	model := map[chunk.ID]want{}
	var ids []chunk.ID
	var packs []chunk.ID

	// Readers, woken after each pack added, look up what was added
	// before: it is found, exactly, while runs are merged and spilled.
	tick := make(chan struct{}, 2)
	var wg sync.WaitGroup
	var mu sync.Mutex // guards published
	var published []want
	for seed := range uint64(2) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 1))
			for range tick {
				mu.Lock()
				sample := make([]want, 0, 200)
				for n := len(published); n > 0 && len(sample) < cap(sample); {
					sample = append(sample, published[r.IntN(n)])
				}
				mu.Unlock()
				for _, w := range sample {
					if loc, ok := x.Lookup(w.e.ID); !ok || loc.Pack != w.pack || loc.BlobEntry != w.e {
						t.Errorf("concurrent lookup %s: %+v %v, want %+v in %s", w.e.ID.Short(), loc, ok, w.e, w.pack.Short())
						return
					}
				}
			}
		}()
	}
	for len(model) < blobs {
		pack := randomID(rng)
		packs = append(packs, pack)
		n := 1 + rng.IntN(3000)
		if rng.IntN(10) == 0 {
			n = 20_000 + rng.IntN(10_000) // more than a tail at once
		}
		entries := make([]BlobEntry, n)
		off := uint32(0)
		for i := range entries {
			var id chunk.ID
			if len(ids) > 0 && rng.IntN(20) == 0 {
				id = ids[rng.IntN(len(ids))] // again, in another pack: the first stays
			} else {
				id = randomID(rng)
			}
			size := 1 + uint32(rng.IntN(1<<16))
			entries[i] = BlobEntry{ID: id, Type: BlobType(rng.IntN(2)), Compression: chunk.Compression(rng.IntN(3)),
				Offset: off, StoredLen: size, RawLen: size + uint32(rng.IntN(100)), RawOffset: uint32(rng.IntN(1 << 20))}
			off += size
		}
		x.AddPack(pack, entries)
		var fresh []want
		for _, e := range entries {
			if _, ok := model[e.ID]; !ok {
				model[e.ID] = want{pack, e}
				ids = append(ids, e.ID)
				fresh = append(fresh, want{pack, e})
			}
		}
		mu.Lock()
		published = append(published, fresh...)
		mu.Unlock()
		select {
		case tick <- struct{}{}:
		default:
		}
	}
	close(tick)
	wg.Wait()

	x.mu.RLock()
	spilled := 0
	for _, r := range x.runs {
		if r.f != nil {
			spilled++
		}
	}
	nruns := len(x.runs)
	x.mu.RUnlock()
	if spilled == 0 {
		t.Fatalf("nothing spilled (%d runs)", nruns)
	}
	mem, disk := x.Footprint()
	t.Logf("%d blobs in %d runs, %d spilled; %d bytes in memory, %d on disk", len(model), nruns, spilled, mem, disk)
	if disk < int64(len(model))*recordSize/2 || mem > int64(len(model))*recordSize/4 {
		t.Fatalf("footprint: %d bytes in memory, %d on disk", mem, disk)
	}

	check := func(x *Index) {
		t.Helper()
		for id, w := range model {
			loc, ok := x.Lookup(id)
			if !ok || loc.Pack != w.pack || loc.BlobEntry != w.e || id[0] == 0 && !x.Has(id) {
				t.Fatalf("lookup %s: %+v %v, want %+v in %s", id.Short(), loc, ok, w.e, w.pack.Short())
			}
		}
		for range 10_000 {
			if id := randomID(rng); x.Has(id) {
				t.Fatalf("unknown blob %s found", id.Short())
			}
		}
		if n, p := x.Len(); n != len(model) || p != len(packs) {
			t.Fatalf("Len = %d, %d; want %d, %d", n, p, len(model), len(packs))
		}
		got := x.Packs()
		n := 0
		for pack, entries := range got {
			if !slices.IsSortedFunc(entries, func(a, b BlobEntry) int { return cmpRecord(record{id: a.ID}, record{id: b.ID}) }) {
				t.Fatalf("pack %s: blobs out of id order", pack.Short())
			}
			for _, e := range entries {
				if w := model[e.ID]; w.pack != pack || w.e != e {
					t.Fatalf("Packs: %+v in %s, want %+v in %s", e, pack.Short(), w.e, w.pack.Short())
				}
			}
			n += len(entries)
		}
		if n != len(model) {
			t.Fatalf("Packs located %d blobs, want %d", n, len(model))
		}
		for _, p := range packs {
			if !x.HasPack(p) {
				t.Fatalf("pack %s unknown", p.Short())
			}
		}
	}
	check(x)

	// Through replace, as ReloadIndex does; the old index's files close.
	y := x.emptyLike()
	for pack, entries := range x.Packs() {
		y.AddPack(pack, entries)
	}
	z := NewIndex()
	z.replace(y)
	x.replace(NewIndex())
	if n, _ := x.Len(); n != 0 {
		t.Fatalf("replaced index has %d blobs", n)
	}
	if n, _ := z.Len(); n != len(model) {
		t.Fatalf("replaced into: %d blobs, want %d", n, len(model))
	}
	for id, w := range model {
		if loc, ok := z.Lookup(id); !ok || loc.BlobEntry != w.e {
			t.Fatalf("after replace: lookup %s: %+v %v", id.Short(), loc, ok)
		}
		break
	}
}

// TestIndexInMemory: under the budget nothing spills, and a blob added
// again keeps its first location.
func TestIndexInMemory(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	x := NewIndex()
	x.setDir(t.TempDir())
	p1, p2 := randomID(rng), randomID(rng)
	var es []BlobEntry
	for i := range 50_000 {
		es = append(es, BlobEntry{ID: randomID(rng), Compression: chunk.Zstd, Offset: uint32(i) * 10, StoredLen: 10, RawLen: 20, RawOffset: 3})
	}
	x.AddPack(p1, es)
	again := slices.Clone(es[:100])
	again[0].Offset = 1
	x.AddPack(p2, again)
	x.AddPack(p2, nil)
	for _, e := range es {
		if loc, ok := x.Lookup(e.ID); !ok || loc.Pack != p1 || loc.BlobEntry != e {
			t.Fatalf("lookup: %+v %v, want %+v", loc, ok, e)
		}
	}
	if n, p := x.Len(); n != len(es) || p != 2 {
		t.Fatalf("Len = %d, %d", n, p)
	}
	for _, r := range x.runs {
		if r.f != nil {
			t.Fatal("spilled under the budget")
		}
	}
	if ps := x.Packs(); len(ps) != 1 || len(ps[p1]) != len(es) {
		t.Fatalf("Packs: %d packs", len(ps))
	}
	tr := NewIndex()
	tr.treesOnly = true
	tr.AddPack(p1, []BlobEntry{{ID: es[0].ID, Type: TreeBlob, StoredLen: 1, RawLen: 1}, {ID: es[1].ID, Type: DataBlob, StoredLen: 1, RawLen: 1}})
	if !tr.Has(es[0].ID) || tr.Has(es[1].ID) || !tr.HasPack(p1) {
		t.Fatal("treesOnly")
	}
}

// TestIndexSpillFails: when no temporary file can be made, the runs stay
// in memory and every blob is still found.
func TestIndexSpillFails(t *testing.T) {
	t.Setenv("TMPDIR", "/nonexistent-backupd-test")
	rng := rand.New(rand.NewPCG(3, 4))
	x := NewIndex()
	x.SetMemory(100 << 10)
	x.setDir("/nonexistent-backupd-test/cache")
	model := map[chunk.ID]BlobEntry{}
	for range 8 { // more than two tails: runs the budget cannot hold
		var es []BlobEntry
		for i := range 5000 {
			e := BlobEntry{ID: randomID(rng), Offset: uint32(i), StoredLen: 1, RawLen: 1}
			es = append(es, e)
			model[e.ID] = e
		}
		x.AddPack(randomID(rng), es)
	}
	for _, r := range x.runs {
		if r.f != nil {
			t.Fatal("spilled without a temporary directory")
		}
	}
	for id, e := range model {
		if loc, ok := x.Lookup(id); !ok || loc.BlobEntry != e {
			t.Fatalf("lookup %s: %+v %v", id.Short(), loc, ok)
		}
	}
	if n, _ := x.Len(); n != len(model) {
		t.Fatalf("Len = %d, want %d", n, len(model))
	}
}

// BenchmarkIndexLookup: lookups of known blobs (hit) and unknown ones
// (miss) in an index of 200k blobs (in memory, in several runs: a restore
// of 100k small files) and of 1M blobs (within the default budget of
// memory and mostly spilled).
func BenchmarkIndexLookup(b *testing.B) {
	for _, n := range []int{200_000, 1_000_000} {
		b.Run(fmt.Sprintf("blobs=%d", n), func(b *testing.B) { benchLookup(b, n) })
	}
}

func benchLookup(b *testing.B, n int) {
	rng := rand.New(rand.NewPCG(5, 6))
	x := NewIndex()
	x.setDir(b.TempDir())
	ids := make([]chunk.ID, 0, n)
	for p := 0; len(ids) < cap(ids); p++ {
		es := make([]BlobEntry, 2000)
		for i := range es {
			es[i] = BlobEntry{ID: randomID(rng), Offset: uint32(i), StoredLen: 1, RawLen: 1}
			ids = append(ids, es[i].ID)
		}
		x.AddPack(randomID(rng), es)
	}
	mem, disk := x.Footprint()
	b.Logf("%d runs; %d bytes in memory, %d on disk", len(x.runs), mem, disk)
	b.Run("hit", func(b *testing.B) {
		for i := range b.N {
			if !x.Has(ids[i%len(ids)]) {
				b.Fatal("missing")
			}
		}
	})
	miss := randomID(rng)
	b.Run("miss", func(b *testing.B) {
		for i := range b.N {
			miss[0] = byte(i)
			miss[9] = byte(i >> 8)
			if x.Has(miss) {
				b.Fatal("found")
			}
		}
	})
}
