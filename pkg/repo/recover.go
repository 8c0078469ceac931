package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	gosync "sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/backupd/backupd/internal/panics"
	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage"
)

// Recovery instead of blockage. Packs are the repository's truth: each
// names its blobs in its trailer, and index objects only save reading the
// trailers. So loading the index never stops at one damaged index object,
// and never leaves a stored pack unused: an index object that cannot be
// read is passed over, and every pack that no readable index object names
// (the packs of a backup that was killed before it wrote its index, or
// those of a damaged index object) is indexed from its trailer. The next
// backup writes those packs into its own index object, so that the work
// is done once; `backupctl repair index` does the same at once and removes
// the damaged index objects.

// IndexReport is what loading the index found and worked around.
type IndexReport struct {
	// Damaged lists the index objects that could not be used, each with
	// the reason; the packs they named were indexed from their trailers.
	Damaged []ObjectProblem
	// Adopted lists the packs no readable index object names, indexed
	// from their trailers: to be written into the next index object.
	Adopted []PackIndex
	// BadPacks lists the packs whose trailer could not be read and that
	// no index object names: their blobs are unknown.
	BadPacks []ObjectProblem
	// MissingPacks counts the packs that index objects name but the
	// storage no longer holds (deleted by a prune after an index object
	// naming them was written: a fenced backup's, or one that indexed a
	// dead backup's packs). Their entries are ignored, so that no one
	// deduplicates against a blob that is gone; another pack holding such
	// a blob is used instead.
	MissingPacks []string
	// IndexObjects and Packs count what was listed.
	IndexObjects, Packs int

	// loaded are the keys of the index objects read (damaged ones too:
	// their packs were indexed from trailers), for Repository.seen.
	loaded []string
}

// ObjectProblem names a stored object and what is wrong with it.
type ObjectProblem struct {
	Key string
	Err error
}

func (p ObjectProblem) String() string { return p.Err.Error() } // errors name their object

// IndexReport returns what the last LoadIndex found.
func (r *Repository) IndexReport() *IndexReport {
	r.adoptMu.Lock()
	defer r.adoptMu.Unlock()
	rep := r.report
	return &rep
}

// TakeAdopted returns the packs LoadIndex indexed from their trailers that
// no index object written since names, and forgets them: the caller
// writes them into its index object.
func (r *Repository) TakeAdopted() []PackIndex {
	r.adoptMu.Lock()
	defer r.adoptMu.Unlock()
	a := r.adopted
	r.adopted = nil
	return a
}

// LoadIndex reads every index object into the in-memory index, with up to
// parallel concurrent reads, then indexes from their trailers the packs no
// readable index object names. A damaged index object or pack is reported
// (IndexReport), not an error; an error means the storage could not be
// read (or ctx ended).
func (r *Repository) LoadIndex(ctx context.Context, parallel int) error {
	ps := r.pruneStateBefore(ctx)
	rep, err := r.loadIndexInto(ctx, r.index, parallel)
	if err != nil {
		return err
	}
	r.seenMu.Lock()
	r.seen = keySet(rep.loaded)
	r.seenMu.Unlock()
	r.setReport(rep)
	r.indexPrune.Store(ps)
	return nil
}

// pruneStateBefore reads the prune state before the index is loaded (nil
// if it cannot be read: then BeginSession loads the index again).
func (r *Repository) pruneStateBefore(ctx context.Context) *pruneState {
	ps, _, err := readPruneState(ctx, r.st)
	if err != nil {
		return nil
	}
	return ps
}

// ReloadIndex loads the index again from storage and puts it in place of
// the in-memory one at once, for readers that found a pack gone (a prune
// rewrote it since they loaded the index): concurrent lookups see the old
// index or the new, never a mix. It is safe for concurrent use.
func (r *Repository) ReloadIndex(ctx context.Context) error {
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	_, err := r.reloadLocked(ctx)
	return err
}

// reloadLocked is ReloadIndex under reloadMu; it returns the load's report.
func (r *Repository) reloadLocked(ctx context.Context) (IndexReport, error) {
	ps := r.pruneStateBefore(ctx)
	fresh := r.newIndex()
	rep, err := r.loadIndexInto(ctx, fresh, 8)
	if err != nil {
		return rep, err
	}
	// The index and the set of index objects it holds change together
	// (markSeen), so that no object is taken as loaded whose packs the
	// index lacks.
	r.seenMu.Lock()
	r.index.replace(fresh)
	r.seen = keySet(rep.loaded)
	r.seenMu.Unlock()
	r.setReport(rep)
	r.indexPrune.Store(ps)
	return rep, nil
}

func (r *Repository) setReport(rep IndexReport) {
	r.adoptMu.Lock()
	defer r.adoptMu.Unlock()
	r.report = rep
	r.adopted = append(r.adopted[:0], rep.Adopted...)
}

func keySet(keys []string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// markSeen records that the index object at key, naming packs, need not
// be read by Refresh, if the in-memory index holds all its packs (a
// backup's packs are there from SavePack; a concurrent ReloadIndex may
// have replaced the index without them, and then Refresh reads it).
func (r *Repository) markSeen(key string, packs []PackIndex) {
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	for _, p := range packs {
		if !r.index.HasPack(p.Pack) {
			return
		}
	}
	if r.seen == nil {
		r.seen = map[string]bool{}
	}
	r.seen[key] = true
}

func (r *Repository) loadIndexInto(ctx context.Context, idx *Index, parallel int) (IndexReport, error) {
	parallel = max(parallel, 1)
	rep := IndexReport{}
	var keys []storage.ObjectInfo
	seenKeys := map[string]bool{}
	listNew := func() ([]storage.ObjectInfo, error) {
		var fresh []storage.ObjectInfo
		err := r.st.List(ctx, indexPrefix, func(oi storage.ObjectInfo) error {
			if !seenKeys[oi.Key] {
				seenKeys[oi.Key] = true
				fresh = append(fresh, oi)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list index: %w", err)
		}
		return fresh, nil
	}
	// load loads objs; those deleted since they were listed are left out
	// of keys and counted in vanished.
	var vanished int
	load := func(objs []storage.ObjectInfo, skip map[chunk.ID]bool) error {
		var mu gosync.Mutex
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(parallel)
		gone := map[string]bool{}
		for _, oi := range objs {
			g.Go(panics.Safe(func() error {
				err := r.loadIndexObject(gctx, idx, oi, skip)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil && Damaged(err):
					rep.Damaged = append(rep.Damaged, ObjectProblem{oi.Key, err})
					return nil
				case errors.Is(err, storage.ErrNotFound):
					gone[oi.Key] = true
					return nil
				}
				return err
			}))
		}
		if err := g.Wait(); err != nil {
			return err
		}
		vanished = len(gone)
		if len(gone) > 0 {
			keys = slices.DeleteFunc(keys, func(oi storage.ObjectInfo) bool { return gone[oi.Key] })
		}
		return nil
	}
	fresh, err := listNew()
	if err != nil {
		return rep, err
	}
	keys = fresh
	if err := load(fresh, nil); err != nil {
		return rep, err
	}
	for round := 1; vanished > 0; round++ {
		// An index object listed, then deleted before it was read: a prune
		// replaced it by a consolidated one, written before it deleted
		// any, perhaps after the listing. Listing again finds that one.
		if round > 10 {
			return rep, fmt.Errorf("load index: index objects keep vanishing as they are read")
		}
		if fresh, err = listNew(); err != nil {
			return rep, err
		}
		keys = append(keys, fresh...)
		if err := load(fresh, nil); err != nil {
			return rep, err
		}
	}
	rep.IndexObjects = len(keys)
	// The packs are listed after the index objects: a pack an index object
	// names that is not listed is gone for good (packs are durable before
	// any index object names them).
	listed, err := r.adoptPacks(ctx, idx, parallel, &rep)
	if err != nil {
		return rep, err
	}
	if missing := idx.packsNotIn(listed); len(missing) > 0 {
		// Rare (see IndexReport.MissingPacks): load again without them,
		// so that a blob they held is located in another pack if any.
		rep.Damaged, rep.Adopted, rep.BadPacks = nil, nil, nil
		for id := range missing {
			rep.MissingPacks = append(rep.MissingPacks, PackKey(id))
		}
		sort.Strings(rep.MissingPacks)
		idx.replace(NewIndex())
		if err := load(keys, missing); err != nil {
			return rep, err
		}
		if _, err := r.adoptPacks(ctx, idx, parallel, &rep); err != nil {
			return rep, err
		}
	}
	sortProblems(rep.Damaged)
	sortProblems(rep.BadPacks)
	rep.loaded = make([]string, len(keys))
	for i, oi := range keys {
		rep.loaded[i] = oi.Key
	}
	return rep, nil
}

func sortProblems(ps []ObjectProblem) {
	sort.Slice(ps, func(i, j int) bool { return ps[i].Key < ps[j].Key })
}

// loadIndexObject reads one index object (from the cache if there) into
// the in-memory index. Errors about the object wrap ErrCorrupt.
func (r *Repository) loadIndexObject(ctx context.Context, idx *Index, oi storage.ObjectInfo, skip map[chunk.ID]bool) error {
	// What one object costs while it is read, decoded and added (its
	// bytes, then its decoded entries, ~3 times its size for random ids)
	// is bounded in the whole process too: else parallel loads of large
	// objects would hold more than the index they fill.
	weight := min(max(3*oi.Size, 1), indexLoadBytes)
	if err := indexLoads.Acquire(ctx, weight); err != nil {
		return err
	}
	defer indexLoads.Release(weight)
	packs, err := r.readIndexObject(ctx, oi)
	if err != nil {
		return err
	}
	for _, p := range packs {
		if !skip[p.Pack] {
			idx.AddPack(p.Pack, p.Blobs)
		}
	}
	return nil
}

// readIndexObject reads and decodes one index object (from the cache if
// there). Errors about the object wrap ErrCorrupt.
func (r *Repository) readIndexObject(ctx context.Context, oi storage.ObjectInfo) ([]PackIndex, error) {
	id, err := chunk.ParseID(strings.TrimPrefix(oi.Key, indexPrefix))
	if err != nil {
		return nil, fmt.Errorf("index object %s: %w: not named by a hash", oi.Key, ErrCorrupt)
	}
	b, cached := r.cache.get("index", id)
	if !cached {
		if b, err = readObjectSized(ctx, r.st, oi.Key, oi.Size, MaxIndexObjectSize); err != nil {
			return nil, fmt.Errorf("index object %s: %w", oi.Key, err)
		}
		if chunk.Hash(b) != id {
			return nil, fmt.Errorf("index object %s: %w: content does not match its id", oi.Key, ErrCorrupt)
		}
	}
	// Decoding one object may take ~45 MiB however small it is stored
	// (MaxIndexSize): only so many at once in the whole process, whatever
	// the number of owners loading their index.
	select {
	case indexDecodes <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	packs, err := DecodeIndexMax(b, r.cfg.MaxBlobSize(DataBlob))
	<-indexDecodes
	if err != nil {
		return nil, fmt.Errorf("index object %s: %w", oi.Key, err)
	}
	if !cached {
		r.cache.put("index", id, b) // only objects that decode
	}
	return packs, nil
}

// indexDecodes bounds the index objects decoded at once in the process:
// the memory one decode may take is bounded per object, and this bounds
// their number, for the daemon serving many owners.
var indexDecodes = make(chan struct{}, 2)

// indexLoads bounds the bytes of index objects being loaded at once in
// the process (see loadIndexObject).
var indexLoads = semaphore.NewWeighted(indexLoadBytes)

const indexLoadBytes = 64 << 20

// adoptPacks indexes from their trailers the packs that no loaded index
// object names. It returns the packs listed.
func (r *Repository) adoptPacks(ctx context.Context, idx *Index, parallel int, rep *IndexReport) (map[chunk.ID]bool, error) {
	listed, orphans, err := r.listPacks(ctx, idx.HasPack)
	if err != nil {
		return nil, err
	}
	rep.Packs = len(listed)
	if err := r.readOrphans(ctx, idx, orphans, parallel, rep, listed); err != nil {
		return nil, err
	}
	return listed, nil
}

// listPacks lists data/: the ids of the packs there, and the packs among
// them that known does not report.
func (r *Repository) listPacks(ctx context.Context, known func(chunk.ID) bool) (map[chunk.ID]bool, []storage.ObjectInfo, error) {
	var orphans []storage.ObjectInfo
	listed := map[chunk.ID]bool{}
	err := r.st.List(ctx, dataPrefix, func(oi storage.ObjectInfo) error {
		id, ok := packID(oi.Key)
		if !ok {
			return nil // not a pack (check reports stray objects)
		}
		listed[id] = true
		if !known(id) {
			orphans = append(orphans, oi)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list packs: %w", err)
	}
	return listed, orphans, nil
}

// readOrphans indexes packs into idx from their trailers, adding them to
// rep.Adopted (rep.BadPacks for those whose trailer cannot be read);
// those deleted since they were listed are removed from listed.
func (r *Repository) readOrphans(ctx context.Context, idx *Index, orphans []storage.ObjectInfo, parallel int, rep *IndexReport, listed map[chunk.ID]bool) error {
	if len(orphans) == 0 {
		return nil
	}
	var mu gosync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(parallel, 1))
	for _, oi := range orphans {
		g.Go(panics.Safe(func() error {
			id, _ := packID(oi.Key)
			entries, err := r.ReadPackTrailer(gctx, id, oi.Size)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				idx.AddPack(id, entries)
				rep.Adopted = append(rep.Adopted, PackIndex{Pack: id, Blobs: entries})
			case errors.Is(err, storage.ErrNotFound):
				// Deleted since it was listed (by a prune, whose new index
				// covers what it kept): nothing to adopt.
				delete(listed, id)
			case Damaged(err):
				rep.BadPacks = append(rep.BadPacks, ObjectProblem{oi.Key, err})
			default:
				return err
			}
			return nil
		}))
	}
	if err := g.Wait(); err != nil {
		return err
	}
	sort.Slice(rep.Adopted, func(i, j int) bool { return string(rep.Adopted[i].Pack[:]) < string(rep.Adopted[j].Pack[:]) })
	return nil
}

// packID returns the pack id of a key under data/, if it is one.
func packID(key string) (chunk.ID, bool) {
	rest, ok := strings.CutPrefix(key, dataPrefix)
	if !ok || len(rest) != 3+2*chunk.IDSize || rest[2] != '/' {
		return chunk.ID{}, false
	}
	id, err := chunk.ParseID(rest[3:])
	if err != nil || rest[:2] != rest[3:5] {
		return chunk.ID{}, false
	}
	return id, true
}

// ReadPackTrailer reads the blob list of pack id, of size bytes, in two
// bounded ranged reads: its footer, then its trailer. Errors about the
// pack wrap ErrCorrupt.
func (r *Repository) ReadPackTrailer(ctx context.Context, id chunk.ID, size int64) ([]BlobEntry, error) {
	key := PackKey(id)
	if size < PackFooterSize {
		return nil, fmt.Errorf("pack %s: %w: %d bytes, too short for a pack", key, ErrCorrupt, size)
	}
	footer, err := readRange(ctx, r.st, key, size-PackFooterSize, PackFooterSize)
	if err != nil {
		return nil, err
	}
	n, err := PackTrailerSize(footer, size)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", key, err)
	}
	tail, err := readRange(ctx, r.st, key, size-n, n)
	if err != nil {
		return nil, err
	}
	entries, err := ParsePackTrailerMax(tail, size, r.cfg.MaxBlobSize(DataBlob))
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", key, err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("pack %s: %w: no blobs", key, ErrCorrupt)
	}
	if err := r.hashGroups(ctx, key, entries); err != nil {
		return nil, err
	}
	return entries, nil
}

// hashGroups gives the grouped blobs of a compact trailer their ids (a
// compact trailer leaves them zero): each group's frame is read, at most
// MaxGroupSize bytes, must decode to exactly its members' bytes, and each
// member is hashed. Entries of a fixed trailer already have their ids.
func (r *Repository) hashGroups(ctx context.Context, key string, entries []BlobEntry) error {
	var frame []byte
	for i := 0; i < len(entries); {
		e := entries[i]
		if e.Compression != chunk.ZstdGroup || e.ID != (chunk.ID{}) {
			i++
			continue
		}
		j := i + 1
		for j < len(entries) && entries[j].Compression == chunk.ZstdGroup && entries[j].Offset == e.Offset {
			j++
		}
		last := entries[j-1]
		if e.StoredLen > MaxGroupSize {
			return fmt.Errorf("pack %s: %w: group frame of %d bytes, writers make at most %d", key, ErrCorrupt, e.StoredLen, MaxGroupSize)
		}
		stored, err := readRange(ctx, r.st, key, int64(e.Offset), int64(e.StoredLen))
		if err != nil {
			return err
		}
		frame, err = r.DecodeFrame(key, last, stored, frame)
		if err != nil {
			return err
		}
		if end := uint64(last.RawOffset) + uint64(last.RawLen); uint64(len(frame)) != end {
			return fmt.Errorf("pack %s: %w: group frame holds %d bytes, its members %d", key, ErrCorrupt, len(frame), end)
		}
		for k := i; k < j; k++ {
			m := &entries[k]
			m.ID = chunk.Hash(frame[m.RawOffset : m.RawOffset+m.RawLen])
		}
		i = j
	}
	return nil
}

// readRange reads exactly n bytes at off of the object at key; an object
// that ends sooner is ErrCorrupt (it changed, or lied about its size).
func readRange(ctx context.Context, st storage.Storage, key string, off, n int64) ([]byte, error) {
	rc, err := st.Get(ctx, key, off, n)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(rc, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: %w: shorter than listed", key, ErrCorrupt)
		}
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return b, nil
}

// readObject reads the whole object at key, refusing one of more than
// limit bytes (ErrCorrupt) without reading more than that.
func readObject(ctx context.Context, st storage.Storage, key string, limit int64) ([]byte, error) {
	return readObjectSized(ctx, st, key, -1, limit)
}

// readObjectSized is readObject for an object a listing said is size
// bytes (-1: unknown): it reads into one buffer of that size (within
// limit) instead of a growing one, and still never trusts it.
func readObjectSized(ctx context.Context, st storage.Storage, key string, size, limit int64) ([]byte, error) {
	if size > limit {
		return nil, fmt.Errorf("%s: %w: %d bytes, larger than %d, more than any writer makes", key, ErrCorrupt, size, limit)
	}
	rc, err := st.Get(ctx, key, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	var b []byte
	if size >= 0 {
		b = make([]byte, 0, size+1) // +1: room to see it is longer than listed
	}
	w := bytes.NewBuffer(b)
	if _, err := io.Copy(w, io.LimitReader(rc, limit+1)); err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if int64(w.Len()) > limit {
		return nil, fmt.Errorf("%s: %w: larger than %d bytes, more than any writer makes", key, ErrCorrupt, limit)
	}
	return w.Bytes(), nil
}

// RepairResult is what RepairIndex did.
type RepairResult struct {
	// PacksIndexed counts the packs written into new index objects.
	PacksIndexed int
	// IndexesWritten and IndexesDeleted count index objects.
	IndexesWritten, IndexesDeleted int
	// BadPacks lists packs whose trailers could not be read: their blobs
	// are lost unless an index object still names them.
	BadPacks []ObjectProblem
}

// RepairIndex makes the index whole again: the packs no readable index
// object names are written into new index objects (from their trailers),
// and then the damaged index objects are deleted. With all, every pack's
// trailer is read and the whole index written anew, and then every index
// object that was there is deleted (a pack whose trailer cannot be read
// keeps the entries an old index object gave it). New index objects are
// durable before anything is deleted, and an index object written by a
// concurrent backup meanwhile is never deleted (only those listed before
// are), so a crash at any point loses nothing. The repository must have
// been opened, not necessarily loaded.
func (r *Repository) RepairIndex(ctx context.Context, all bool) (*RepairResult, error) {
	old := r.index
	r.index = r.newIndex()
	if err := r.LoadIndex(ctx, 8); err != nil {
		r.index = old
		return nil, err
	}
	rep := r.IndexReport()
	res := &RepairResult{BadPacks: rep.BadPacks}
	var write []PackIndex
	var remove []string
	if all {
		var listed []string
		err := r.st.List(ctx, indexPrefix, func(oi storage.ObjectInfo) error {
			listed = append(listed, oi.Key)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list index: %w", err)
		}
		loaded := r.index.Packs()
		fresh := r.newIndex()
		var mu gosync.Mutex
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(8)
		err = r.st.List(ctx, dataPrefix, func(oi storage.ObjectInfo) error {
			id, ok := packID(oi.Key)
			if !ok {
				return nil
			}
			g.Go(panics.Safe(func() error {
				entries, err := r.ReadPackTrailer(gctx, id, oi.Size)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
				case !Damaged(err):
					return err
				case len(loaded[id]) > 0:
					entries = loaded[id] // the old index's word is all there is
				default:
					return nil // reported by LoadIndex
				}
				fresh.AddPack(id, entries)
				write = append(write, PackIndex{Pack: id, Blobs: entries})
				return nil
			}))
			return nil
		})
		if werr := g.Wait(); err == nil {
			err = werr
		}
		if err != nil {
			return nil, err
		}
		r.index = fresh
		remove = listed
	} else {
		write = r.TakeAdopted()
		for _, d := range rep.Damaged {
			remove = append(remove, d.Key)
		}
	}
	sort.Slice(write, func(i, j int) bool { return string(write[i].Pack[:]) < string(write[j].Pack[:]) })
	written := map[string]bool{}
	if len(write) > 0 {
		ids, err := r.SaveIndex(ctx, write)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			written[indexPrefix+id.String()] = true
		}
		res.IndexesWritten = len(ids)
		res.PacksIndexed = len(write)
	}
	for _, key := range remove {
		if written[key] {
			continue // the same content, written again: keep it
		}
		if err := r.st.Delete(ctx, key); err != nil {
			return res, fmt.Errorf("delete index object %s: %w", key, err)
		}
		res.IndexesDeleted++
	}
	return res, nil
}
