package repo

import (
	"context"
	"errors"
	"fmt"
	"slices"
	gosync "sync"

	"golang.org/x/sync/errgroup"

	"github.com/backupd/backupd/internal/panics"
	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage"
)

// A repository kept open (the daemon keeps each owner's) is brought up to
// date by Refresh before each operation, which reads only what changed:
//
//   - The config, one small read: a repository purged and created again
//     (another id) must be opened anew (ErrRepositoryReplaced), and a
//     purged one is ErrNoRepository.
//   - The prune state, read before the index as LoadIndex does. If it is
//     not the one read before the index was loaded (another generation or
//     phase, or unreadable), the index is loaded again whole: a prune may
//     have deleted packs and blobs the index still names, and may have
//     ended without seeing a session this repository is about to begin
//     (R1 in FORMAT.md: the index must be no older than the session). A
//     refresh must not stand for a load here: BeginSession only compares
//     the state with the one before the last load, so an index refreshed
//     across a prune but marked as loaded under the new state would keep
//     the deleted entries and never be reloaded.
//   - The listing of index/. The objects not loaded yet are read and
//     their packs added. When an object that was loaded is gone, the index
//     is loaded again whole. With the prune state unchanged no prune has
//     deleted one, so only a purge (every object goes, the config last)
//     or `backupctl repair index` (damaged objects, or all after writing a
//     consolidated index) removes them; keeping the entries would be right
//     after a repair (its packs are all there) and wrong during a purge (a
//     backup would reference what is being deleted), and both are rare:
//     a whole load is right for both. (Entries of a pack a prune rewrote
//     are never kept past that prune: its state changes; readers that find
//     a pack gone meanwhile load the index again, R7.)
//   - With RefreshOptions.Packs (the daemon asks for it for backups and
//     restores), the listing of data/ after that of index/, as a whole
//     load does: packs no index object names (a backup killed before its
//     index object, on any node) are indexed from their trailers and held
//     for TakeAdopted, so that a backup retried elsewhere uploads none of
//     them again; a pack whose trailer cannot be read is named at every
//     refresh (read once); and a pack the index names that the listing
//     does not show (a fenced backup's index object naming a pack the
//     prune deleted) makes the index load again whole, so that no backup
//     deduplicates against a blob that is gone. It costs one listing
//     request per 1,000 packs (~16 GB). Without it, new index objects are
//     read and their packs not checked: a reader finds a pack that is gone
//     by loading the index again (R7), and the next refresh with Packs
//     checks what it added.
//
// A pack is adopted once: it is then in the index (HasPack), and no later
// refresh takes it for an orphan. Adopted packs wait for TakeAdopted as
// after a whole load; a backup that fails after taking them leaves them
// in no index object: the daemon then drops the repository, so that the
// next load adopts them again (as it adopts a failed backup's own packs,
// which SavePack put in the index).

// ErrRepositoryReplaced means the repository's config is no longer the
// one it was opened with: it was purged and created again. Open it anew.
var ErrRepositoryReplaced = errors.New("repository replaced since it was opened (purged and created again)")

// RefreshOptions configure Refresh.
type RefreshOptions struct {
	// Packs lists data/ too: packs no index object names are adopted,
	// and a pack the index names that is gone makes the index load again
	// whole.
	Packs bool
}

// RefreshResult says what Refresh did.
type RefreshResult struct {
	// Full is set when the index was loaded again whole, for Reason.
	Full   bool
	Reason string
	// IndexObjects counts the index objects read (listed, when Full).
	IndexObjects int
	// Report is what the refresh found: the whole load's report when
	// Full; else the damaged index objects (every one still listed, not
	// only the new), the packs whose trailer could not be read (as of the
	// last listing of data/) and, with Packs, the packs adopted.
	Report IndexReport
}

// Refresh brings the in-memory index of a repository whose index was
// loaded (LoadIndex) up to date with the storage, reading only the index
// objects it has not loaded yet, or everything again when that is what is
// correct (see above). It is safe for concurrent use with the
// repository's other methods; concurrent refreshes run one at a time. On
// error the index is as it was.
func (r *Repository) Refresh(ctx context.Context, opts RefreshOptions) (*RefreshResult, error) {
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	b, err := readObject(ctx, r.st, configKey, MaxConfigSize)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrNoRepository
	}
	if err != nil {
		return nil, fmt.Errorf("read repository config: %w", err)
	}
	if cfg, err := decodeConfig(b); err != nil {
		return nil, err
	} else if cfg.ID != r.cfg.ID {
		return nil, ErrRepositoryReplaced
	}
	full := func(reason string) (*RefreshResult, error) {
		rep, err := r.reloadLocked(ctx)
		if err != nil {
			return nil, err
		}
		return &RefreshResult{Full: true, Reason: reason, IndexObjects: rep.IndexObjects, Report: rep}, nil
	}
	ps := r.pruneStateBefore(ctx)
	if prev := r.indexPrune.Load(); ps == nil || prev == nil || prev.Generation != ps.Generation || prev.Phase != ps.Phase {
		return full("the prune state changed since the index was loaded")
	}

	// What was loaded before the listing: an object SaveIndex marks
	// meanwhile may be missing from the listing without being gone.
	r.seenMu.Lock()
	before := make(map[string]bool, len(r.seen))
	for k := range r.seen {
		before[k] = true
	}
	r.seenMu.Unlock()
	var fresh []storage.ObjectInfo
	listed := 0
	err = r.st.List(ctx, indexPrefix, func(oi storage.ObjectInfo) error {
		if before[oi.Key] {
			listed++
		} else {
			fresh = append(fresh, oi)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list index: %w", err)
	}
	if listed < len(before) {
		return full(fmt.Sprintf("%d index objects loaded before are gone", len(before)-listed))
	}

	res := &RefreshResult{IndexObjects: len(fresh)}
	rep := &res.Report
	var mu gosync.Mutex
	var packs []PackIndex
	vanished := false
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, oi := range fresh {
		g.Go(panics.Safe(func() error {
			got, err := r.readIndexObject(gctx, oi)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				packs = append(packs, got...)
			case Damaged(err):
				rep.Damaged = append(rep.Damaged, ObjectProblem{oi.Key, err})
			case errors.Is(err, storage.ErrNotFound):
				vanished = true
			default:
				return err
			}
			return nil
		}))
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if vanished {
		return full("an index object vanished as it was read")
	}
	sortProblems(rep.Damaged)

	var orphans []storage.ObjectInfo
	var listedPacks map[chunk.ID]bool
	if opts.Packs {
		named := make(map[chunk.ID]bool, len(packs))
		for _, p := range packs {
			named[p.Pack] = true
		}
		listedPacks, orphans, err = r.listPacks(ctx, func(id chunk.ID) bool { return named[id] || r.index.HasPack(id) })
		if err != nil {
			return nil, err
		}
		rep.Packs = len(listedPacks)
		missing := r.index.packsNotIn(listedPacks)
		for id := range named {
			if !listedPacks[id] {
				missing[id] = true
			}
		}
		for id := range missing {
			// A pack a backup of this repository stored after the listing
			// is in the index but not listed: only one that is not there
			// now is gone.
			if _, err := r.st.Stat(ctx, PackKey(id)); errors.Is(err, storage.ErrNotFound) {
				return full(fmt.Sprintf("pack %s, named by the index, is gone", PackKey(id)))
			} else if err != nil {
				return nil, fmt.Errorf("stat pack: %w", err)
			}
		}
	}
	// A pack whose trailer could not be read stays an orphan: named again
	// (as a whole load names it), not read again.
	r.adoptMu.Lock()
	knownBad := make(map[string]ObjectProblem, len(r.report.BadPacks))
	for _, p := range r.report.BadPacks {
		knownBad[p.Key] = p
	}
	r.adoptMu.Unlock()
	orphans = slices.DeleteFunc(orphans, func(oi storage.ObjectInfo) bool {
		p, ok := knownBad[oi.Key]
		if ok {
			rep.BadPacks = append(rep.BadPacks, p)
		}
		return ok
	})
	// The orphans' trailers are read before anything changes: on error the
	// index is as it was.
	if err := r.readOrphans(ctx, NewIndex(), orphans, 8, rep, listedPacks); err != nil {
		return nil, err
	}
	sortProblems(rep.BadPacks)
	for _, p := range packs {
		r.index.AddPack(p.Pack, p.Blobs)
	}
	for _, p := range rep.Adopted {
		r.index.AddPack(p.Pack, p.Blobs)
	}
	r.seenMu.Lock()
	if r.seen == nil {
		r.seen = map[string]bool{}
	}
	for _, oi := range fresh {
		r.seen[oi.Key] = true // damaged ones too: their packs are orphans to a refresh with Packs
	}
	r.seenMu.Unlock()
	// The damaged index objects still listed are reported at every
	// refresh, as every whole load reports them, until a repair removes
	// them (then the index loads again whole).
	r.adoptMu.Lock()
	r.adopted = append(r.adopted, rep.Adopted...)
	if len(rep.Damaged) > 0 {
		// A new slice: IndexReport's copies share the old one.
		all := append(slices.Clone(r.report.Damaged), rep.Damaged...)
		sortProblems(all)
		r.report.Damaged = all
	}
	rep.Damaged = slices.Clone(r.report.Damaged)
	if opts.Packs {
		r.report.BadPacks = slices.Clone(rep.BadPacks)
	} else {
		rep.BadPacks = slices.Clone(r.report.BadPacks) // as of the last listing
	}
	r.adoptMu.Unlock()
	return res, nil
}
