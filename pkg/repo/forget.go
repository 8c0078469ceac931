package repo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backupd/backupd/internal/panics"
	"github.com/backupd/backupd/pkg/retention"
	"github.com/backupd/backupd/pkg/storage"
)

// ForgetResult is what Forget decided for one workspace.
type ForgetResult struct {
	Workspace string
	// Keep and Forget are the snapshots kept (with why) and forgotten,
	// newest first; with a dry run, those that would be.
	Keep   []retention.Kept
	Forget []SnapshotRef
}

// Forget applies policy p to the snapshots of workspace ("" for every
// workspace of the repository, each on its own) and deletes the snapshot
// objects it does not keep (with dryRun, none). Only snapshot objects go:
// the data they alone reference is freed by the next prune. Snapshot tags
// are read only when p has a tag rule; a snapshot whose object cannot be
// read is then kept.
func (r *Repository) Forget(ctx context.Context, workspace string, p retention.Policy, dryRun bool) ([]ForgetResult, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("retention: %w", err)
	}
	refs, err := r.ListSnapshots(ctx, workspace)
	if err != nil {
		return nil, err
	}
	var order []string
	byWorkspace := map[string][]SnapshotRef{}
	for _, ref := range refs {
		if _, ok := byWorkspace[ref.Workspace]; !ok {
			order = append(order, ref.Workspace)
		}
		byWorkspace[ref.Workspace] = append(byWorkspace[ref.Workspace], ref)
	}
	var out []ForgetResult
	for _, ws := range order {
		res, err := r.forgetWorkspace(ctx, ws, byWorkspace[ws], p, dryRun)
		if err != nil {
			return out, err
		}
		out = append(out, res)
	}
	return out, nil
}

func (r *Repository) forgetWorkspace(ctx context.Context, ws string, refs []SnapshotRef, p retention.Policy, dryRun bool) (ForgetResult, error) {
	res := ForgetResult{Workspace: ws}
	byID := map[string]SnapshotRef{}
	snaps := make([]retention.Snapshot, 0, len(refs))
	for _, ref := range refs {
		s := retention.Snapshot{ID: ref.ID.String(), Time: ref.Time}
		if len(p.KeepTags) > 0 {
			snap, err := r.LoadSnapshot(ctx, ref)
			switch {
			case err == nil:
				s.Tags, s.TagsKnown = snap.Tags, true
			case errors.Is(err, storage.ErrNotFound):
				continue // forgotten meanwhile
			case !Damaged(err):
				return res, err
			}
		} else {
			s.TagsKnown = true // no tag rule: tags do not matter
		}
		byID[s.ID] = ref
		snaps = append(snaps, s)
	}
	return r.forgetDecided(ctx, p, snaps, byID, dryRun, res)
}

// Receipt says what a deletion removed.
type Receipt struct {
	Objects  int
	Bytes    int64
	Duration time.Duration
}

// DeleteWorkspace deletes every snapshot of workspace: its snapshot
// objects (the data they alone reference goes at the next prune). A
// workspace with no snapshot is not an error.
func (r *Repository) DeleteWorkspace(ctx context.Context, workspace string) (Receipt, error) {
	start := time.Now()
	var rec Receipt
	if err := ValidateName("workspace", workspace); err != nil {
		return rec, err
	}
	var keys []storage.ObjectInfo
	if err := r.st.List(ctx, snapshotsPrefix+workspace+"/", func(oi storage.ObjectInfo) error {
		keys = append(keys, oi)
		return nil
	}); err != nil {
		return rec, fmt.Errorf("list snapshots: %w", err)
	}
	for _, oi := range keys {
		if err := r.st.Delete(ctx, oi.Key); err != nil {
			return rec, fmt.Errorf("delete %s: %w", oi.Key, err)
		}
		rec.Objects++
		rec.Bytes += oi.Size
	}
	rec.Duration = time.Since(start)
	return rec, nil
}

// ForgetKind applies policy p to one kind of snapshot of workspace: its
// checkpoints (Snapshot.Checkpoint) when checkpoints is set, else every
// other snapshot, as if the snapshots of the other kind were not there;
// they are never forgotten. Each snapshot object is read to know its
// kind; one that cannot be read is kept. With dryRun, nothing is deleted.
func (r *Repository) ForgetKind(ctx context.Context, workspace string, p retention.Policy, checkpoints, dryRun bool) (ForgetResult, error) {
	res := ForgetResult{Workspace: workspace}
	if err := ValidateName("workspace", workspace); err != nil {
		return res, err
	}
	if err := p.Validate(); err != nil {
		return res, fmt.Errorf("retention: %w", err)
	}
	refs, err := r.ListSnapshots(ctx, workspace)
	if err != nil {
		return res, err
	}
	// Read in parallel: this runs after every backup, before it is
	// reported done.
	loaded := make([]*Snapshot, len(refs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, ref := range refs {
		g.Go(panics.Safe(func() error {
			snap, err := r.LoadSnapshot(gctx, ref)
			switch {
			case errors.Is(err, storage.ErrNotFound):
				return nil // forgotten meanwhile
			case err != nil && gctx.Err() == nil && Damaged(err):
				return nil // of unknown kind: kept
			case err != nil:
				return err
			}
			loaded[i] = snap
			return nil
		}))
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	byID := map[string]SnapshotRef{}
	var snaps []retention.Snapshot
	for i, ref := range refs {
		snap := loaded[i]
		if snap == nil || snap.Checkpoint != checkpoints {
			continue
		}
		s := retention.Snapshot{ID: ref.ID.String(), Time: ref.Time, Tags: snap.Tags, TagsKnown: true}
		byID[s.ID] = ref
		snaps = append(snaps, s)
	}
	return r.forgetDecided(ctx, p, snaps, byID, dryRun, res)
}

// forgetDecided applies p to snaps (their refs byID) and deletes the
// snapshots it forgets, unless dryRun, adding both lists to res.
func (r *Repository) forgetDecided(ctx context.Context, p retention.Policy, snaps []retention.Snapshot, byID map[string]SnapshotRef, dryRun bool, res ForgetResult) (ForgetResult, error) {
	d := p.Apply(snaps)
	res.Keep = d.Keep
	for _, s := range d.Forget {
		ref := byID[s.ID]
		if !dryRun {
			if err := r.DeleteSnapshot(ctx, ref); err != nil {
				return res, err
			}
		}
		res.Forget = append(res.Forget, ref)
	}
	return res, nil
}
