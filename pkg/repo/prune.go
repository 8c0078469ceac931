package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	gosync "sync"

	"github.com/backupd/backupd/internal/ctxsleep"
	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage"
)

// ErrPruneRunning means another prune holds the repository's current
// generation and its lease stands.
var ErrPruneRunning = errors.New("another prune is running on this repository")

// ErrPruneFenced means this prune's lease lapsed and another prune took
// the generation over; this one stopped.
var ErrPruneFenced = errors.New("prune fenced: its lease lapsed and another prune took over")

// ErrNoConditionalWrites means the storage accepted a compare-and-swap
// that had to fail: it does not honour conditional writes, and prune
// cannot run safely on it.
var ErrNoConditionalWrites = errors.New("the storage does not honour conditional writes (If-Match): prune refuses to run on it")

// minRepackUnused is the fewest unused bytes worth a repack: not worth it
// below, and a salt blob (AddSalt) never makes one.
const minRepackUnused = 4 << 10

// pruneTreePackCacheSize is the tree pack cache of a prune.
const pruneTreePackCacheSize = 8 << 20

// DefaultMaxUnused is the unused share of a pack above which prune
// repacks it (restic's default too).
const DefaultMaxUnused = 0.10

// PruneOptions configure a prune.
type PruneOptions struct {
	// DryRun computes what a prune would free and changes nothing (no
	// state is taken, no backup waits).
	DryRun bool
	// MaxUnused is the unused share of a pack (0..1) above which its used
	// blobs are copied into new packs and it is deleted; negative means
	// the default, DefaultMaxUnused; 1 never repacks.
	MaxUnused float64
	// Lease is the prune's own lease on the state (DefaultLease if 0).
	Lease time.Duration
	// Poll is how often running sessions are looked at while the prune
	// waits for them (one second if 0).
	Poll time.Duration
	// WaitRunning makes a prune that finds another one holding the state
	// wait (looking every Poll) until that one ends or its lease lapses,
	// instead of failing with ErrPruneRunning.
	WaitRunning bool
	// Host names this prune in the state, for whoever finds it running.
	Host string
	// Log, if set, receives a line per step.
	Log func(string)
	// Hook, if set, is called at each step with its name ("marked",
	// "waited", "rewritten", "deleting", "deleted-index",
	// "deleted-packs"); an error stops the prune there as a crash would
	// (tests inject crashes and races with it).
	Hook func(step string) error
}

// PruneResult is what a prune did, or with DryRun would do.
type PruneResult struct {
	DryRun     bool   `json:"dry_run"`
	Generation uint64 `json:"generation"`
	// Resumed is set when this prune finished the deletions of an earlier
	// prune that stopped in phase deleting.
	Resumed bool `json:"resumed,omitempty"`

	Snapshots      int `json:"snapshots"`
	ReachableBlobs int `json:"reachable_blobs"`
	CondemnedBlobs int `json:"condemned_blobs"`
	// Resurrected counts condemned blobs that snapshots committed while
	// the prune waited turned out to use.
	Resurrected int `json:"resurrected_blobs"`

	SessionsWaited int `json:"sessions_waited"`
	SessionsFenced int `json:"sessions_fenced"`

	PacksBefore         int   `json:"packs_before"`
	BytesBefore         int64 `json:"bytes_before"`
	PacksDeleted        int   `json:"packs_deleted"`
	PacksRepacked       int   `json:"packs_repacked"`
	PacksWritten        int   `json:"packs_written"`
	PacksKeptDamaged    int   `json:"packs_kept_damaged,omitempty"`
	IndexObjectsBefore  int   `json:"index_objects_before"`
	IndexObjectsWritten int   `json:"index_objects_written"`
	IndexObjectsDeleted int   `json:"index_objects_deleted"`
	// BytesFreed is what the deleted packs held less what the new packs
	// hold; BytesAfter what the packs the prune knew of hold after it.
	BytesFreed int64 `json:"bytes_freed"`
	BytesAfter int64 `json:"bytes_after"`
	// ObjectsDeleted counts every object deleted (packs, index objects,
	// the prune's own lists, ended sessions).
	ObjectsDeleted int `json:"objects_deleted"`

	Warnings []string `json:"warnings,omitempty"`
	Duration time.Duration
}

// Prune frees what no snapshot reaches, without a lock that stops backups
// (FORMAT.md, "Lifecycle"). It needs the index loaded (LoadIndex).
func (r *Repository) Prune(ctx context.Context, opts PruneOptions) (*PruneResult, error) {
	start := time.Now()
	if opts.MaxUnused < 0 || opts.MaxUnused > 1 {
		opts.MaxUnused = DefaultMaxUnused
	}
	if opts.Lease <= 0 {
		opts.Lease = DefaultLease
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	// Each tree is read once: a small tree pack cache does, and leaves
	// the memory to the mark.
	trees := r.trees
	r.trees = newTreePackCache(pruneTreePackCacheSize)
	defer func() { r.trees = trees }()
	p := &pruner{r: r, st: r.st, opts: opts, res: &PruneResult{DryRun: opts.DryRun}}
	err := p.run(ctx)
	p.res.Duration = time.Since(start)
	return p.res, err
}

type pruner struct {
	r    *Repository
	st   storage.Storage
	opts PruneOptions
	res  *PruneResult
	me   string

	stateMu gosync.Mutex // guards state, version, fenced, renewedAt
	state   pruneState
	version string
	fenced  error
	// renewedAt is when the last write of the state that succeeded was
	// sent: the lease stands at most a lease from then (alive).
	renewedAt time.Time
	stop      chan struct{}
	done      chan struct{}
}

func (p *pruner) log(format string, args ...any) {
	if p.opts.Log != nil {
		p.opts.Log(fmt.Sprintf(format, args...))
	}
}

func (p *pruner) hook(step string) error {
	if err := p.alive(); err != nil {
		return err
	}
	if p.opts.Hook != nil {
		if err := p.opts.Hook(step); err != nil {
			return &hookError{step, err}
		}
	}
	return p.alive()
}

// hookError is a stop a Hook asked for: it acts as a crash would, leaving
// the state as it is.
type hookError struct {
	step string
	err  error
}

func (e *hookError) Error() string { return fmt.Sprintf("prune stopped at %s: %v", e.step, e.err) }
func (e *hookError) Unwrap() error { return e.err }

func (p *pruner) warn(format string, args ...any) {
	if len(p.res.Warnings) < maxProblems {
		p.res.Warnings = append(p.res.Warnings, fmt.Sprintf(format, args...))
	}
}

func (p *pruner) run(ctx context.Context) (err error) {
	if !p.opts.DryRun {
		if err := probeConditional(ctx, p.st); err != nil {
			return err
		}
		if err := p.take(ctx); err != nil {
			return err
		}
		defer p.stopRenewing()
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		go p.renew(cancel)
		defer func() {
			if err != nil {
				if f := p.fencedErr(); f != nil {
					err = f
				}
			}
		}()
		if p.state.Phase == phaseDeleting {
			// An earlier prune stopped while deleting: finish its list.
			p.res.Resumed = true
			p.log("resuming the deletions of generation %d", p.state.Generation)
			if err := p.deleteListed(ctx, p.state.Delete); err != nil {
				return err
			}
			if err := p.finish(ctx); err != nil {
				return err
			}
			if err := p.next(ctx); err != nil {
				return err
			}
		}
		if err := p.generation(ctx); err != nil {
			return p.abandon(ctx, err)
		}
		return nil
	}
	ps, _, err := readPruneState(ctx, p.st)
	if err != nil {
		return err
	}
	p.state.Generation = ps.Generation + 1 // the one a prune would take
	return p.generation(ctx)
}

// probeConditional checks that the storage refuses a compare-and-swap
// with a version that cannot match: a store that ignored If-Match would
// let two writers think they both won.
func probeConditional(ctx context.Context, st storage.Storage) error {
	const key = "prune/probe"
	b := []byte("probe " + randomHex(8))
	if err := st.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("prune: probe conditional writes: %w", err)
	}
	oi, err := st.Stat(ctx, key)
	if err != nil {
		return fmt.Errorf("prune: probe conditional writes: %w", err)
	}
	wrong := "0" + oi.Version + "0"
	if oi.Version == "" {
		wrong = "0"
	}
	_, err = st.PutIfMatch(ctx, key, bytes.NewReader([]byte("must not be stored")), 18, wrong)
	if err == nil {
		return ErrNoConditionalWrites
	}
	if !errors.Is(err, storage.ErrVersionMismatch) {
		return fmt.Errorf("prune: probe conditional writes: %w", err)
	}
	return nil
}

// take takes the state for a new generation (or, if an earlier prune
// stopped while deleting, to finish that one's list).
func (p *pruner) take(ctx context.Context) error {
	p.me = fmt.Sprintf("%s pid %d %s", p.opts.Host, os.Getpid(), randomHex(4))
	ps, oi, err := readPruneState(ctx, p.st)
	if err != nil {
		return err
	}
	if ps.active() {
		now, err := storageNow(ctx, p.st)
		if err != nil {
			return err
		}
		lease := DefaultLease
		if ps.LeaseMS > 0 {
			lease = time.Duration(ps.LeaseMS) * time.Millisecond
		}
		if oi.ModTime.Add(lease + clockSlack(oi.ModTime)).After(now) {
			if p.opts.WaitRunning {
				if !ctxsleep.Sleep(ctx, p.opts.Poll) {
					return ctx.Err()
				}
				return p.take(ctx)
			}
			return fmt.Errorf("%w: %s holds generation %d (phase %s), renewed %s ago; its lease is %s",
				ErrPruneRunning, ps.Prune, ps.Generation, ps.Phase, now.Sub(oi.ModTime).Round(time.Second), lease)
		}
		p.log("the prune of generation %d (%s) stopped in phase %s; taking over", ps.Generation, ps.Prune, ps.Phase)
	}
	next := pruneState{Generation: ps.Generation + 1, Phase: phaseMarking, Prune: p.me, LeaseMS: p.opts.Lease.Milliseconds()}
	if ps.Phase == phaseDeleting {
		next = *ps
		next.Prune, next.LeaseMS, next.Renewals = p.me, p.opts.Lease.Milliseconds(), 0
	}
	p.version = oi.Version
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	if err := p.writeState(ctx, next); err != nil {
		if errors.Is(err, ErrPruneFenced) {
			return fmt.Errorf("%w: another prune took the state first", ErrPruneRunning)
		}
		return err
	}
	return nil
}

// next moves from a finished generation to a new one.
func (p *pruner) next(ctx context.Context) error {
	p.stateMu.Lock()
	s := p.state
	p.stateMu.Unlock()
	return p.writeState(ctx, pruneState{Generation: s.Generation + 1, Phase: phaseMarking, Prune: p.me, LeaseMS: p.opts.Lease.Milliseconds()})
}

// writeState replaces the state by compare-and-swap with the version last
// read or written; a mismatch means another prune took over.
func (p *pruner) writeState(ctx context.Context, s pruneState) error {
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	if p.fenced != nil {
		return p.fenced
	}
	b, err := json.Marshal(&s)
	if err != nil {
		return err
	}
	sent := time.Now()
	v, err := casPut(ctx, p.st, pruneStateKey, b, p.version, MaxPruneStateSize)
	if errors.Is(err, storage.ErrVersionMismatch) {
		p.fenced = ErrPruneFenced
		return p.fenced
	}
	if err != nil {
		return fmt.Errorf("write prune state: %w", err)
	}
	p.state, p.version, p.renewedAt = s, v, sent
	return nil
}

// alive fails with ErrPruneFenced once the prune's lease may have lapsed:
// its last renewal was sent more than four fifths of a lease ago (by this
// node's clock), so another prune may take the state over any moment. A
// prune checks it before each deletion and each object it writes: a
// prune paused (or cut off from the state) past its lease must not delete
// what a later one keeps, and a pack's name is its content, so a pack it
// listed may have been deleted and stored again since.
func (p *pruner) alive() error {
	if p.opts.DryRun {
		return nil
	}
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	if p.fenced == nil && time.Since(p.renewedAt) > p.opts.Lease-p.opts.Lease/5 {
		p.fenced = fmt.Errorf("%w (not renewed for %s)", ErrPruneFenced, time.Since(p.renewedAt).Round(time.Millisecond))
	}
	return p.fenced
}

func (p *pruner) fencedErr() error {
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	return p.fenced
}

// renew rewrites the state every fifth of the lease; if it finds the
// state taken over, it cancels the prune.
func (p *pruner) renew(cancel context.CancelCauseFunc) {
	defer close(p.done)
	t := time.NewTicker(p.opts.Lease / 5)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.stateMu.Lock()
		s := p.state
		p.stateMu.Unlock()
		s.Renewals++
		ctx, c := context.WithTimeout(context.Background(), p.opts.Lease/2)
		err := p.writeState(ctx, s)
		c()
		if errors.Is(err, ErrPruneFenced) {
			cancel(err)
			return
		}
	}
}

func (p *pruner) stopRenewing() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// view is what the mark saw: the packs (with the blobs located in each),
// their sizes and the index objects.
type view struct {
	packs   map[chunk.ID][]BlobEntry
	sizes   map[chunk.ID]int64
	indexes []string
	// dups lists, for a pack, the blobs it holds that are kept in another
	// pack (stored twice: by backups racing, or again by one that ran
	// during a prune): unused here, as far as this pack goes.
	dups map[chunk.ID]idSet
}

// unused reports whether blob e of pack is unused there: dead, or kept in
// another pack.
func (v *view) unused(pack chunk.ID, e *BlobEntry, dead idSet) bool {
	return dead.has(e.ID) || v.dups[pack].has(e.ID)
}

// duplicates finds the blobs that more than one pack holds and keeps each
// in one pack (the lowest id): for every other pack that holds it, the
// blob is listed in the result. Memory: 32 bytes a blob, for the moment.
func duplicates(packs map[chunk.ID][]BlobEntry) map[chunk.ID]idSet {
	var ids []chunk.ID
	for _, entries := range packs {
		for _, e := range entries {
			ids = append(ids, e.ID)
		}
	}
	slices.SortFunc(ids, compareIDs)
	var twice idSet
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] && (len(twice) == 0 || twice[len(twice)-1] != ids[i]) {
			twice = append(twice, ids[i])
		}
	}
	ids = nil
	if len(twice) == 0 {
		return nil
	}
	holders := map[chunk.ID][]chunk.ID{}
	for pack, entries := range packs {
		for _, e := range entries {
			if twice.has(e.ID) {
				holders[e.ID] = append(holders[e.ID], pack)
			}
		}
	}
	out := map[chunk.ID]idSet{}
	for id, ps := range holders {
		slices.SortFunc(ps, compareIDs)
		for _, p := range slices.Compact(ps)[1:] {
			out[p] = append(out[p], id)
		}
	}
	for p := range out {
		slices.SortFunc(out[p], compareIDs)
		out[p] = slices.Compact(out[p])
	}
	return out
}

func (p *pruner) generation(ctx context.Context) error {
	r := p.r
	p.stateMu.Lock()
	p.res.Generation = p.state.Generation
	p.stateMu.Unlock()

	// Mark. The snapshots (and committed sessions) are listed first, then
	// the index objects, then the index is loaded: each listed snapshot's
	// index objects were written before it, so what is loaded covers it
	// (listed after the load, a snapshot committed meanwhile had trees in
	// no loaded index, and the prune stopped), and every listed index
	// object is covered too.
	marked, err := p.r.ListSnapshots(ctx, "")
	if err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	committed, err := p.committedSessions(ctx)
	if err != nil {
		return err
	}
	var v view
	err = p.st.List(ctx, indexPrefix, func(oi storage.ObjectInfo) error {
		v.indexes = append(v.indexes, oi.Key)
		return nil
	})
	if err != nil {
		return fmt.Errorf("prune: list index: %w", err)
	}
	var sinkMu gosync.Mutex
	all := map[chunk.ID][]BlobEntry{}
	r.index.replace(NewIndex()) // a full index loaded before is not needed
	if err := r.reloadTreeIndex(ctx, func(pack chunk.ID, entries []BlobEntry) {
		entries = slices.Clone(entries) // not the decoder's grown capacity
		sinkMu.Lock()
		all[pack] = entries
		sinkMu.Unlock()
	}); err != nil {
		return fmt.Errorf("prune: load index: %w", err)
	}
	rep := r.IndexReport()
	if len(rep.Damaged) > 0 || len(rep.BadPacks) > 0 {
		// A damaged index object's packs are indexed from their trailers,
		// so marking is sound; a pack with an unreadable trailer holds
		// blobs no one knows, which prune leaves alone.
		for _, b := range rep.BadPacks {
			p.warn("%s: left alone (its blobs are unknown)", b)
		}
	}
	v.packs = all
	v.sizes = map[chunk.ID]int64{}
	err = p.st.List(ctx, dataPrefix, func(oi storage.ObjectInfo) error {
		if id, ok := packID(oi.Key); ok {
			v.sizes[id] = oi.Size
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("prune: list packs: %w", err)
	}
	for id := range v.packs {
		if _, ok := v.sizes[id]; !ok {
			delete(v.packs, id) // gone since the index was loaded
			continue
		}
		p.res.PacksBefore++
		p.res.BytesBefore += v.sizes[id]
	}
	// Only among packs that are there: a blob must never be thought kept
	// in a pack that is gone.
	v.dups = duplicates(v.packs)
	p.res.IndexObjectsBefore = len(v.indexes)

	reach := newReacher(r)
	loaded := slices.Clone(v.indexes)
	reach.refresh = func(ctx context.Context) error {
		keys, err := r.loadNewIndexObjects(ctx, loaded)
		loaded = append(loaded, keys...)
		return err
	}
	for _, ref := range marked {
		if err := reach.snapshot(ctx, ref); err != nil {
			return err
		}
	}
	for _, s := range committed {
		if err := reach.tree(ctx, s.Tree, s.Workspace); err != nil {
			return err
		}
	}
	p.res.Snapshots = len(marked) + len(committed)
	p.res.ReachableBlobs = len(reach.seen)
	var condemned []chunk.ID
	for _, entries := range v.packs {
		for _, e := range entries {
			if !reach.has(e.ID) {
				condemned = append(condemned, e.ID)
			}
		}
	}
	slices.SortFunc(condemned, compareIDs)
	condemned = slices.Compact(condemned)
	if len(condemned) > MaxCondemned {
		p.warn("%d blobs unused; this prune condemns %d of them, the next one the rest", len(condemned), MaxCondemned)
		condemned = condemned[:MaxCondemned]
	}
	p.res.CondemnedBlobs = len(condemned)
	p.log("marked: %d snapshots reach %d blobs; %d blobs unused", p.res.Snapshots, p.res.ReachableBlobs, len(condemned))

	if p.opts.DryRun {
		// What the rewrite would do were no backup to commit meanwhile.
		dead := idSet(condemned)
		plan := p.plan(&v, dead)
		p.res.PacksDeleted, p.res.PacksRepacked = len(plan.deletes), len(plan.repacks)
		for _, id := range plan.deletes {
			p.res.BytesFreed += v.sizes[id]
		}
		var consolidated []PackIndex
		used := map[BlobType]int64{}
		for id, entries := range v.packs {
			if !plan.gone[id] {
				consolidated = append(consolidated, PackIndex{Pack: id, Blobs: entries})
				continue
			}
			if !plan.repack[id] {
				continue
			}
			p.res.BytesFreed += v.sizes[id]
			var live []BlobEntry
			var liveBytes int64
			costs := blobCosts(entries)
			for i, e := range entries {
				if !v.unused(id, &e, dead) {
					live = append(live, e)
					used[e.Type] += costs[i]
					liveBytes += costs[i]
				}
			}
			p.res.BytesFreed -= liveBytes + int64(PackTrailerReadSize(len(live)))
			consolidated = append(consolidated, PackIndex{Pack: id, Blobs: live}) // as the new packs will hold them
		}
		for _, n := range used {
			p.res.PacksWritten += int((n + int64(p.r.cfg.PackSize) - 1) / int64(p.r.cfg.PackSize))
		}
		p.res.BytesAfter = p.res.BytesBefore - p.res.BytesFreed
		if len(condemned) > 0 || len(v.indexes) > len(SplitIndex(consolidated)) {
			p.res.IndexObjectsWritten = len(SplitIndex(consolidated))
			p.res.IndexObjectsDeleted = len(v.indexes)
		}
		return nil
	}

	if pl := p.plan(&v, idSet(condemned)); len(pl.deletes)+len(pl.repacks) == 0 && len(v.indexes) <= len(SplitIndex(packIndexes(v.packs))) {
		// Nothing to free (resurrection only frees less: no pack would go)
		// and the index is consolidated already: done. Unused blobs left
		// in packs not worth rewriting are not condemned.
		if len(condemned) > 0 {
			p.log("%d unused blobs stay, in packs under the repack threshold", len(condemned))
		}
		p.res.CondemnedBlobs, p.res.BytesAfter = 0, p.res.BytesBefore
		p.log("nothing to free; the index is consolidated already")
		return p.finish(ctx)
	}

	var condemnedKey string
	if len(condemned) > 0 {
		p.stateMu.Lock()
		gen := p.state.Generation
		p.stateMu.Unlock()
		if condemnedKey, err = saveIDList(ctx, p.st, gen, "condemned", condemnedMagic, condemned); err != nil {
			return err
		}
	}
	if err := p.setPhase(ctx, phaseMarked, condemnedKey, ""); err != nil {
		return err
	}
	if err := p.hook("marked"); err != nil {
		return err
	}

	// Wait for every session that may have loaded the index before the
	// mark, fencing those whose lease lapsed.
	if err := p.wait(ctx); err != nil {
		return p.abandon(ctx, err)
	}
	if err := p.hook("waited"); err != nil {
		return err
	}

	// Resurrect what snapshots written since the mark reach.
	dead := idSet(condemned)
	if len(dead) > 0 {
		// Listed before the index objects written since the mark (which
		// hold their trees) are loaded, as at the mark.
		now, err := p.r.ListSnapshots(ctx, "")
		if err != nil {
			return p.abandon(ctx, fmt.Errorf("prune: %w", err))
		}
		if err := reach.refresh(ctx); err != nil {
			return p.abandon(ctx, fmt.Errorf("prune: load index: %w", err))
		}
		known := map[string]bool{}
		for _, ref := range marked {
			known[ref.Key] = true
		}
		for _, ref := range now {
			if known[ref.Key] {
				continue
			}
			if err := reach.snapshot(ctx, ref); err != nil {
				return p.abandon(ctx, err)
			}
		}
		kept := dead[:0:0]
		for _, id := range dead {
			if reach.has(id) {
				p.res.Resurrected++
			} else {
				kept = append(kept, id)
			}
		}
		dead = kept
	}
	reach = nil // the memory, for the rewrite
	p.log("waited for %d sessions (%d fenced); %d blobs resurrected", p.res.SessionsWaited, p.res.SessionsFenced, p.res.Resurrected)

	// Rewrite: new packs and a consolidated index, durable before any
	// deletion.
	plan := p.plan(&v, dead)
	if err := p.alive(); err != nil {
		return err
	}
	newPacks, kept, err := p.repack(ctx, &v, plan, dead)
	if err != nil {
		return p.abandon(ctx, err)
	}
	for _, np := range newPacks {
		if plan.gone[np.Pack] {
			// Repacked into the very bytes of a pack that was to go (one
			// whose every blob is located elsewhere, e.g. the one these
			// blobs were stored again from): SavePack just rewrote it, and
			// deleting it now would delete the new pack.
			kept[np.Pack] = true
		}
	}
	var consolidated []PackIndex
	rewritten := map[chunk.ID]bool{}
	for _, np := range newPacks {
		rewritten[np.Pack] = true
	}
	for id, entries := range v.packs {
		if (!plan.gone[id] || kept[id]) && !rewritten[id] {
			consolidated = append(consolidated, PackIndex{Pack: id, Blobs: entries})
		}
	}
	// A repacked pack can come out byte for byte a pack the mark saw (the
	// same blobs, e.g. what a backup stored again in a salted pack): it is
	// that pack, named once (an index naming a pack twice is refused),
	// with the blobs the repack put in it.
	consolidated = append(consolidated, newPacks...)
	slices.SortFunc(consolidated, func(a, b PackIndex) int { return compareIDs(a.Pack, b.Pack) })
	if err := p.alive(); err != nil {
		return err
	}
	newIndex, err := r.SaveIndex(ctx, consolidated)
	if err != nil {
		return p.abandon(ctx, fmt.Errorf("prune: %w", err))
	}
	p.res.IndexObjectsWritten = len(newIndex)
	fresh := map[string]bool{}
	for _, id := range newIndex {
		fresh[indexPrefix+id.String()] = true
	}
	if err := p.hook("rewritten"); err != nil {
		return err
	}

	// The delete list: old index objects first, then packs.
	var del []chunk.ID
	for _, k := range v.indexes {
		if !fresh[k] {
			if id, err := chunk.ParseID(strings.TrimPrefix(k, indexPrefix)); err == nil {
				del = append(del, id)
			}
		}
	}
	nIndex := len(del)
	for id := range plan.gone {
		if !kept[id] {
			del = append(del, id)
		}
	}
	p.stateMu.Lock()
	gen := p.state.Generation
	p.stateMu.Unlock()
	delKey, err := saveDeleteList(ctx, p.st, gen, del[:nIndex], del[nIndex:])
	if err != nil {
		return p.abandon(ctx, err)
	}
	if err := p.setPhase(ctx, phaseDeleting, condemnedKey, delKey); err != nil {
		return err
	}
	if err := p.hook("deleting"); err != nil {
		return err
	}
	for id := range plan.gone {
		if kept[id] {
			continue
		}
		if plan.repack[id] {
			p.res.PacksRepacked++
		} else {
			p.res.PacksDeleted++
		}
		p.res.BytesFreed += v.sizes[id]
	}
	for _, np := range newPacks {
		p.res.BytesFreed -= packBytes(np.Blobs)
	}
	p.res.PacksWritten = len(newPacks)
	p.res.BytesAfter = p.res.BytesBefore - p.res.BytesFreed
	if err := p.deleteListed(ctx, delKey); err != nil {
		return err
	}
	return p.finish(ctx)
}

// setPhase writes the state in a new phase of the same generation.
func (p *pruner) setPhase(ctx context.Context, phase, condemned, del string) error {
	p.stateMu.Lock()
	s := p.state
	p.stateMu.Unlock()
	s.Phase, s.Condemned, s.Delete = phase, condemned, del
	return p.writeState(ctx, s)
}

// abandon ends a generation that cannot go on, before anything was
// deleted: the state returns to idle (so backups stop avoiding its
// condemned blobs) and err is returned.
func (p *pruner) abandon(ctx context.Context, err error) error {
	var he *hookError
	if errors.Is(err, ErrPruneFenced) || errors.As(err, &he) {
		return err
	}
	p.stateMu.Lock()
	phase := p.state.Phase
	p.stateMu.Unlock()
	if phase != phaseMarking && phase != phaseMarked {
		return err // idle already, or deleting: the next prune resumes that
	}
	// Also when ctx ended (a cancelled prune): briefly, without it.
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if serr := p.setPhase(ictx, phaseIdle, "", ""); serr != nil {
		return fmt.Errorf("%w (and returning the prune state to idle: %v)", err, serr)
	}
	return err
}

// finish deletes the generation's lists and older prune leftovers and
// returns the state to idle.
func (p *pruner) finish(ctx context.Context) error {
	p.stateMu.Lock()
	s := p.state
	p.stateMu.Unlock()
	if err := p.setPhase(ctx, phaseIdle, "", ""); err != nil {
		return err
	}
	var stale []string
	err := p.st.List(ctx, prunePrefix, func(oi storage.ObjectInfo) error {
		if validPruneListKey(oi.Key) {
			stale = append(stale, oi.Key)
		}
		return nil
	})
	if err != nil {
		p.warn("listing old prune lists: %v", err)
		return nil
	}
	for _, k := range stale {
		if err := p.st.Delete(ctx, k); err != nil {
			p.warn("deleting %s: %v", k, err)
			continue
		}
		p.res.ObjectsDeleted++
	}
	p.log("generation %d done", s.Generation)
	return nil
}

// committedSessions returns the snapshots of committed sessions (backups
// that committed but had not yet written their snapshot object).
func (p *pruner) committedSessions(ctx context.Context) ([]*Snapshot, error) {
	keys, err := listSessions(ctx, p.st)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	var out []*Snapshot
	for _, k := range keys {
		b, _, err := storage.ReadVersioned(ctx, p.st, k, MaxSessionSize)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("prune: read %s: %w", k, err)
		}
		rec, err := decodeSession(b)
		if err != nil {
			return nil, fmt.Errorf("prune: session %s: %w (delete it if no backup runs)", k, err)
		}
		if rec.State != sessionCommitted {
			continue
		}
		s, err := decodeSnapshot(rec.Snapshot)
		if err != nil {
			return nil, fmt.Errorf("prune: session %s: %w", k, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// wait lists the sessions (after the marked state is written) and waits
// until each has ended, committed or lapsed (then fences it). A committed
// session's snapshot object is written out if it is not there yet.
func (p *pruner) wait(ctx context.Context) error {
	keys, err := listSessions(ctx, p.st)
	if err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	pending := keys
	for round := 0; len(pending) > 0; round++ {
		if round > 0 {
			if !ctxsleep.Sleep(ctx, p.opts.Poll) {
				return context.Cause(ctx)
			}
		}
		if err := p.alive(); err != nil {
			return err
		}
		now, err := storageNow(ctx, p.st)
		if err != nil {
			return err
		}
		var still []string
		for _, k := range pending {
			done, err := p.settle(ctx, k, now)
			if err != nil {
				return err
			}
			if !done {
				still = append(still, k)
			}
		}
		if round == 0 {
			p.res.SessionsWaited = len(still)
			if len(still) > 0 {
				p.log("waiting for %d running backups", len(still))
			}
		}
		pending = still
	}
	return nil
}

// settle looks at one session: done if it has ended, committed (its
// snapshot written out and the session removed), or was fenced now.
func (p *pruner) settle(ctx context.Context, key string, now time.Time) (bool, error) {
	b, oi, err := storage.ReadVersioned(ctx, p.st, key, MaxSessionSize)
	if errors.Is(err, storage.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("prune: read %s: %w", key, err)
	}
	rec, err := decodeSession(b)
	if err != nil {
		// Not a session any backup wrote: it cannot commit, so it is no
		// reason to wait; it is left for an operator.
		p.warn("%s: %v (left alone)", key, err)
		return true, nil
	}
	switch rec.State {
	case sessionCommitted:
		s, err := decodeSnapshot(rec.Snapshot)
		if err != nil {
			return false, fmt.Errorf("prune: session %s: %w", key, err)
		}
		// The snapshot object, if its backup did not get to write it.
		key2 := snapshotKey(s.Workspace, s.Time, chunk.Hash(rec.Snapshot))
		if _, err := p.st.Stat(ctx, key2); errors.Is(err, storage.ErrNotFound) {
			if err := p.r.putSnapshot(ctx, key2, chunk.Hash(rec.Snapshot), rec.Snapshot); err != nil && !errors.Is(err, ErrSnapshotUnconfirmed) {
				return false, err
			}
		} else if err != nil {
			return false, fmt.Errorf("prune: %w", err)
		}
		// The snapshot is in place: the session has served (its backup,
		// if still alive, deletes it too).
		if err := p.st.Delete(ctx, key); err == nil {
			p.res.ObjectsDeleted++
		}
		return true, nil
	case sessionFenced:
		if err := p.st.Delete(ctx, key); err == nil {
			p.res.ObjectsDeleted++
		}
		return true, nil
	}
	if oi.ModTime.IsZero() || oi.ModTime.Add(rec.lease()+clockSlack(oi.ModTime)).After(now) {
		return false, nil // renewed within its lease: wait
	}
	err = fenceSession(ctx, p.st, key, oi.Version)
	if errors.Is(err, storage.ErrVersionMismatch) {
		return false, nil // renewed or committed meanwhile: look again
	}
	if err != nil {
		return false, fmt.Errorf("prune: fence %s: %w", key, err)
	}
	p.res.SessionsFenced++
	p.log("fenced %s (workspace %s, host %s): not renewed for %s", key, rec.Workspace, rec.Host, now.Sub(oi.ModTime).Round(time.Second))
	if err := p.st.Delete(ctx, key); err == nil {
		p.res.ObjectsDeleted++
	}
	return true, nil
}

// idSet is a sorted list of distinct ids.
type idSet []chunk.ID

func (s idSet) has(id chunk.ID) bool {
	_, ok := slices.BinarySearchFunc(s, id, compareIDs)
	return ok
}

// plan is what to do with each pack the mark saw.
type plan struct {
	deletes   []chunk.ID // no blob used
	repacks   []chunk.ID // used blobs to copy, then delete
	gone      map[chunk.ID]bool
	repack    map[chunk.ID]bool
	usedBytes map[chunk.ID]int64
}

func (p *pruner) plan(v *view, dead idSet) *plan {
	pl := &plan{gone: map[chunk.ID]bool{}, repack: map[chunk.ID]bool{}, usedBytes: map[chunk.ID]int64{}}
	for id, entries := range v.packs {
		var used int64
		anyDead := false
		costs := blobCosts(entries)
		for i := range entries {
			if v.unused(id, &entries[i], dead) {
				anyDead = true
			} else {
				used += costs[i]
			}
		}
		size := v.sizes[id]
		pl.usedBytes[id] = used
		switch {
		case used == 0 && (anyDead || len(entries) == 0):
			pl.deletes = append(pl.deletes, id)
			pl.gone[id] = true
		case anyDead && size > 0 && size-used > minRepackUnused && float64(size-used)/float64(size) > p.opts.MaxUnused:
			pl.repacks = append(pl.repacks, id)
			pl.gone[id] = true
			pl.repack[id] = true
		}
	}
	slices.SortFunc(pl.repacks, compareIDs)
	return pl
}

// repack copies the used blobs of the packs to repack into new packs of
// their type, each blob verified against its hash on the way. A pack
// that cannot be read whole and intact is kept (kept[id]), with a
// warning: nothing is lost, it is only not freed.
func (p *pruner) repack(ctx context.Context, v *view, pl *plan, dead idSet) ([]PackIndex, map[chunk.ID]bool, error) {
	kept := map[chunk.ID]bool{}
	var out []PackIndex
	size := p.r.cfg.PackSize
	builders := map[BlobType]*PackBuilder{}
	flush := func(t BlobType) error {
		pb := builders[t]
		if pb == nil || pb.Count() == 0 {
			return nil
		}
		data, id, entries := pb.Finish()
		if err := p.r.SavePack(ctx, data, id, entries); err != nil {
			return fmt.Errorf("prune: %w", err)
		}
		out = append(out, PackIndex{Pack: id, Blobs: entries})
		builders[t] = nil
		return nil
	}
	for _, id := range pl.repacks {
		key := PackKey(id)
		data, err := readObjectSized(ctx, p.st, key, v.sizes[id], int64(size)*4+MaxPackTrailerSize+MaxDataBlobSize)
		if err != nil && !Damaged(err) && !errors.Is(err, storage.ErrNotFound) {
			return nil, nil, fmt.Errorf("prune: read %s: %w", key, err)
		}
		var copies []repackCopy
		if err == nil {
			copies, err = p.repackCopies(key, data, v.packs[id], func(e *BlobEntry) bool { return !v.unused(id, e, dead) })
		}
		if err != nil {
			kept[id] = true
			p.res.PacksKeptDamaged++
			p.warn("%s not repacked, kept as it is: %v", key, err)
			continue
		}
		for _, c := range copies {
			pb := builders[c.typ]
			if pb != nil && pb.Count()+max(len(c.members), 1) > MaxPackBlobs {
				if err := flush(c.typ); err != nil {
					return nil, nil, err
				}
				pb = nil
			}
			if pb == nil {
				pb = NewPackBuilder(size)
				if p.r.cfg.CompactTrailers() {
					pb.SetCompactTrailer()
				}
				builders[c.typ] = pb
			}
			if c.members != nil {
				pb.AddGroup(c.typ, c.stored, c.members)
			} else {
				pb.Add(c.e.ID, c.typ, c.e.Compression, c.stored, int(c.e.RawLen))
			}
			if pb.Full(size) {
				if err := flush(c.typ); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	for _, t := range []BlobType{DataBlob, TreeBlob} {
		if err := flush(t); err != nil {
			return nil, nil, err
		}
	}
	return out, kept, nil
}

// repackCopy is one thing repack writes into a new pack: a blob as it is
// stored (members nil), or a group frame with its members.
type repackCopy struct {
	typ     BlobType
	e       BlobEntry // a single blob
	stored  []byte
	members []GroupMember
}

// repackCopies returns what of the pack data (at key, its entries listed
// by the index) repack copies: every blob keep accepts, verified against
// its hash. A blob stored alone is copied as it is; of a group, a frame
// whose blobs are all kept is copied as it is, and the kept blobs of one
// that lost some are compressed again as a group of their own (or alone,
// when one is left), so a prune frees the space of dead grouped blobs too.
func (p *pruner) repackCopies(key string, data []byte, entries []BlobEntry, keep func(*BlobEntry) bool) ([]repackCopy, error) {
	entries = slices.SortedFunc(slices.Values(entries), byOffset)
	var out []repackCopy
	for i := 0; i < len(entries); {
		e := entries[i]
		end := int64(e.Offset) + int64(e.StoredLen)
		if end > int64(len(data)) {
			return nil, fmt.Errorf("pack %s: blob %s: %w: beyond the pack's end", key, e.ID.Short(), ErrCorrupt)
		}
		stored := data[e.Offset:end]
		if e.Compression != chunk.ZstdGroup {
			i++
			if !keep(&e) {
				continue
			}
			if _, err := p.r.DecodeBlob(key, e, stored, nil); err != nil {
				return nil, err
			}
			out = append(out, repackCopy{typ: e.Type, e: e, stored: stored})
			continue
		}
		j := i + 1
		for j < len(entries) && sameFrame(&entries[i], &entries[j]) {
			j++
		}
		frameEntries := entries[i:j]
		i = j
		var kept []BlobEntry
		for k := range frameEntries {
			if keep(&frameEntries[k]) {
				kept = append(kept, frameEntries[k])
			}
		}
		if len(kept) == 0 {
			continue
		}
		frame, err := p.r.DecodeFrame(key, e, stored, nil)
		if err != nil {
			return nil, err
		}
		var raw []byte
		members := make([]GroupMember, 0, len(kept))
		for _, k := range kept {
			b, err := p.r.BlobFromFrame(key, k, frame)
			if err != nil {
				return nil, err
			}
			raw = append(raw, b...)
			members = append(members, GroupMember{ID: k.ID, RawLen: k.RawLen})
		}
		switch {
		case len(kept) == len(frameEntries) && bytes.Equal(raw, frame):
			out = append(out, repackCopy{typ: e.Type, stored: stored, members: members})
		case len(kept) == 1:
			c, comp := p.r.codec.Compress(nil, raw)
			out = append(out, repackCopy{typ: e.Type, e: BlobEntry{ID: kept[0].ID, Compression: comp, RawLen: kept[0].RawLen}, stored: c})
		default:
			out = append(out, repackCopy{typ: e.Type, stored: p.r.codec.CompressFrame(nil, raw), members: members})
		}
	}
	return out, nil
}

func packIndexes(packs map[chunk.ID][]BlobEntry) []PackIndex {
	out := make([]PackIndex, 0, len(packs))
	for id, entries := range packs {
		out = append(out, PackIndex{Pack: id, Blobs: entries})
	}
	return out
}

func packBytes(entries []BlobEntry) int64 {
	var n int64
	for _, c := range blobCosts(entries) {
		n += c
	}
	return n + int64(PackTrailerReadSize(len(entries)))
}

// blobCosts returns what each entry's blob takes of its pack: its stored
// length, or, for a grouped blob, its share of its frame's by raw length
// (the shares of the blobs of one frame that entries lists add up to the
// frame's length).
func blobCosts(entries []BlobEntry) []int64 {
	costs := make([]int64, len(entries))
	type frame struct{ raw, left, count int64 }
	var frames map[uint32]*frame
	for i, e := range entries {
		if e.Compression != chunk.ZstdGroup {
			costs[i] = int64(e.StoredLen)
			continue
		}
		if frames == nil {
			frames = map[uint32]*frame{}
		}
		f := frames[e.Offset]
		if f == nil {
			f = &frame{left: int64(e.StoredLen)}
			frames[e.Offset] = f
		}
		f.raw += int64(e.RawLen)
		f.count++
	}
	for i, e := range entries {
		if e.Compression != chunk.ZstdGroup {
			continue
		}
		f := frames[e.Offset]
		if f.count--; f.count == 0 {
			costs[i] = f.left // the last one takes what rounding left
		} else {
			costs[i] = int64(e.StoredLen) * int64(e.RawLen) / f.raw
		}
		f.left -= costs[i]
	}
	return costs
}

// saveDeleteList stores what a generation deletes: index objects first,
// then packs, as one list of ids preceded by how many are index objects.
func saveDeleteList(ctx context.Context, st storage.Storage, gen uint64, indexes, packs []chunk.ID) (string, error) {
	slices.SortFunc(indexes, compareIDs)
	slices.SortFunc(packs, compareIDs)
	// Two sorted runs, with an all-zero id between them (no object has it).
	ids := append(append(append([]chunk.ID{}, indexes...), chunk.ID{}), packs...)
	b := []byte(deleteMagic)
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return saveList(ctx, st, gen, "delete", b)
}

func loadDeleteList(ctx context.Context, st storage.Storage, key string) (indexes, packs []chunk.ID, err error) {
	b, err := loadList(ctx, st, key, int64(len(deleteMagic)+(MaxDeleteList+1)*chunk.IDSize))
	if err != nil {
		return nil, nil, err
	}
	if len(b) < len(deleteMagic) || string(b[:len(deleteMagic)]) != deleteMagic || (len(b)-len(deleteMagic))%chunk.IDSize != 0 {
		return nil, nil, fmt.Errorf("delete list %s: %w", key, ErrCorrupt)
	}
	b = b[len(deleteMagic):]
	sep := -1
	var ids []chunk.ID
	for i := 0; i < len(b); i += chunk.IDSize {
		var id chunk.ID
		copy(id[:], b[i:])
		if id == (chunk.ID{}) && sep < 0 {
			sep = len(ids)
			continue
		}
		ids = append(ids, id)
	}
	if sep < 0 {
		return nil, nil, fmt.Errorf("delete list %s: %w: no separator", key, ErrCorrupt)
	}
	return ids[:sep], ids[sep:], nil
}

// deleteListed deletes what a delete list names: the index objects, then
// the packs. Deleting what is gone already is no error, so whoever
// resumes a stopped prune does it again safely.
func (p *pruner) deleteListed(ctx context.Context, key string) error {
	if err := p.alive(); err != nil {
		return err
	}
	indexes, packs, err := loadDeleteList(ctx, p.st, key)
	if err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	for _, id := range indexes {
		if err := p.alive(); err != nil {
			return err
		}
		if err := p.st.Delete(ctx, indexPrefix+id.String()); err != nil {
			return fmt.Errorf("prune: delete index object: %w", err)
		}
		p.res.IndexObjectsDeleted++
		p.res.ObjectsDeleted++
	}
	if err := p.hook("deleted-index"); err != nil {
		return err
	}
	for _, id := range packs {
		if err := p.alive(); err != nil {
			return err
		}
		if err := p.st.Delete(ctx, PackKey(id)); err != nil {
			return fmt.Errorf("prune: delete pack: %w", err)
		}
		p.res.ObjectsDeleted++
	}
	if p.res.Resumed && p.res.PacksDeleted == 0 {
		p.res.PacksDeleted = len(packs)
	}
	return p.hook("deleted-packs")
}

// reloadTreeIndex loads the index as prune needs it: the in-memory index
// with tree blobs only (to walk snapshots), and every pack with all its
// entries given to sink (nil for none). Memory is then about the sink's
// 48 bytes a blob, not the full index's and a copy of it.
func (r *Repository) reloadTreeIndex(ctx context.Context, sink func(chunk.ID, []BlobEntry)) error {
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	fresh := r.newIndex()
	fresh.treesOnly, fresh.sink = true, sink
	rep, err := r.loadIndexInto(ctx, fresh, 8)
	if err != nil {
		return err
	}
	fresh.sink = nil
	r.index.replace(fresh)
	r.setReport(rep)
	return nil
}

// loadNewIndexObjects adds to the in-memory index (trees only, after
// reloadTreeIndex) the index objects not among those listed before.
func (r *Repository) loadNewIndexObjects(ctx context.Context, before []string) ([]string, error) {
	old := make(map[string]bool, len(before))
	for _, k := range before {
		old[k] = true
	}
	var fresh []storage.ObjectInfo
	if err := r.st.List(ctx, indexPrefix, func(oi storage.ObjectInfo) error {
		if !old[oi.Key] {
			fresh = append(fresh, oi)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list index: %w", err)
	}
	var keys []string
	for _, oi := range fresh {
		if err := r.loadIndexObject(ctx, r.index, oi, nil); err != nil && !Damaged(err) {
			return keys, err
		} // a damaged one's packs are adopted by the next full load
		keys = append(keys, oi.Key)
	}
	return keys, nil
}

// reacher walks snapshots and collects every blob they reach.
type reacher struct {
	r    *Repository
	seen map[chunk.ID]struct{}
	// refresh, if set, loads index objects written since the index was
	// loaded, when a tree is not found.
	refresh func(context.Context) error
}

func newReacher(r *Repository) *reacher {
	return &reacher{r: r, seen: map[chunk.ID]struct{}{}}
}

func (x *reacher) has(id chunk.ID) bool {
	_, ok := x.seen[id]
	return ok
}

// snapshot adds what one snapshot reaches. A snapshot or tree that cannot
// be read stops the prune: it cannot know what that snapshot uses.
func (x *reacher) snapshot(ctx context.Context, ref SnapshotRef) error {
	s, err := x.r.LoadSnapshot(ctx, ref)
	if errors.Is(err, storage.ErrNotFound) {
		return nil // forgotten meanwhile
	}
	if err != nil {
		return fmt.Errorf("prune: %w: prune cannot know what it uses, and stops before deleting anything (forget or delete the snapshot, or repair it)", err)
	}
	return x.tree(ctx, s.Tree, ref.Workspace+"@"+ref.ID.Short())
}

func (x *reacher) tree(ctx context.Context, id chunk.ID, name string) error {
	return x.walk(ctx, id, name, 0)
}

func (x *reacher) walk(ctx context.Context, id chunk.ID, name string, depth int) error {
	if x.has(id) {
		return nil
	}
	if depth > MaxTreeDepth {
		return fmt.Errorf("prune: snapshot %s: trees nested deeper than %d: %w", name, MaxTreeDepth, ErrTooLarge)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := x.r.LoadTree(ctx, id)
	if err != nil && Damaged(err) && x.refresh != nil {
		// A snapshot written since the index was loaded: its trees are
		// in index objects written since.
		if rerr := x.refresh(ctx); rerr != nil {
			return rerr
		}
		t, err = x.r.LoadTree(ctx, id)
	}
	if err != nil {
		return fmt.Errorf("prune: snapshot %s: %w: prune cannot know what it uses, and stops before deleting anything", name, err)
	}
	x.seen[id] = struct{}{}
	for _, n := range t.Nodes {
		switch n.Type {
		case TypeDir:
			if err := x.walk(ctx, n.Subtree, name, depth+1); err != nil {
				return err
			}
		case TypeFile:
			for _, b := range n.Content {
				x.seen[b] = struct{}{}
			}
		}
	}
	return nil
}
