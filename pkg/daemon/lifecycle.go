package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/backupd/backupd/pkg/repo"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// The lifecycle operations: forget, prune, delete a workspace, delete an
// owner, check. Each is an operation like a backup (request ids, joins,
// the node's limits: they share limits.maintenance), watchable and
// cancellable; the work itself is pkg/repo's.

// maxListedIDs bounds the snapshot ids a forget's result lists, so that
// an owner with very many snapshots never makes an Operation too large to
// send (the counts stay exact).
const maxListedIDs = 10000

func (sv *service) ForgetSnapshots(ctx context.Context, req *pb.ForgetSnapshotsRequest) (*pb.ForgetSnapshotsResponse, error) {
	op, joined, err := sv.s.startForget(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ForgetSnapshotsResponse{Operation: op.proto(), Joined: joined}, nil
}

func (s *Server) startForget(req *pb.ForgetSnapshotsRequest) (*operation, bool, error) {
	if err := checkID("request_id", req.GetRequestId(), false); err != nil {
		return nil, false, err
	}
	if err := checkOwnerWorkspace(req.GetOwner(), req.GetWorkspace(), false); err != nil {
		return nil, false, err
	}
	policy, err := retentionPolicy(req.GetRetention(), s.cfg.Retention)
	if err != nil {
		return nil, false, err
	}
	if policy.Empty() {
		if req.GetRetention() == nil {
			return nil, false, invalidField("retention", errors.New("required: the daemon has no default retention policy"))
		}
		return nil, false, invalidField("retention", errors.New("a policy without a rule would keep every snapshot: give at least one rule"))
	}
	owner, workspace, dryRun := req.GetOwner(), req.GetWorkspace(), req.GetDryRun()
	return s.ops.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_FORGET, owner: owner, workspace: workspace,
		requestID: req.GetRequestId(), joinKey: "forget/" + owner + "/" + workspace, req: req,
		run: func(ctx context.Context, op *operation) (*pb.OperationResult, error) {
			r, err := s.place.OpenSnapshots(ctx, owner)
			if err != nil {
				return nil, err
			}
			op.setPhase(pb.OperationPhase_OPERATION_PHASE_TRANSFERRING)
			results, err := r.Forget(ctx, workspace, policy, dryRun)
			fr := &pb.ForgetResult{DryRun: dryRun}
			var n int64
			listed := 0
			for _, res := range results {
				w := &pb.WorkspaceForget{Workspace: res.Workspace, Kept: int64(len(res.Keep)), Forgotten: int64(len(res.Forget))}
				for _, k := range res.Keep {
					if listed < maxListedIDs {
						w.KeptSnapshotIds = append(w.KeptSnapshotIds, k.ID)
						listed++
					} else {
						fr.IdsTruncated = true
					}
				}
				for _, f := range res.Forget {
					if listed < maxListedIDs {
						w.ForgottenSnapshotIds = append(w.ForgottenSnapshotIds, f.ID.String())
						listed++
					} else {
						fr.IdsTruncated = true
					}
				}
				fr.Workspaces = append(fr.Workspaces, w)
				n += w.Forgotten
			}
			if !dryRun {
				// Counted even when the forget stopped part way: what it
				// deleted is gone and is the next prune's to free.
				s.forgotten(owner, "request", n)
			}
			if err != nil {
				return nil, err
			}
			return &pb.OperationResult{Forget: fr, ForgottenSnapshots: n}, nil
		}})
}

// forgotten counts n snapshots of owner forgotten, and marks the owner
// for the periodic maintenance.
func (s *Server) forgotten(owner, trigger string, n int64) {
	if n <= 0 {
		return
	}
	s.metrics.forgotten.WithLabelValues(trigger).Add(float64(n))
	s.maint.mark(owner)
}

func (sv *service) PruneRepository(ctx context.Context, req *pb.PruneRepositoryRequest) (*pb.PruneRepositoryResponse, error) {
	op, joined, err := sv.s.startPrune(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.PruneRepositoryResponse{Operation: op.proto(), Joined: joined}, nil
}

func (s *Server) startPrune(req *pb.PruneRepositoryRequest) (*operation, bool, error) {
	if err := checkID("request_id", req.GetRequestId(), false); err != nil {
		return nil, false, err
	}
	if err := checkID("owner", req.GetOwner(), true); err != nil {
		return nil, false, err
	}
	pct := int32(s.cfg.Maintenance.MaxUnused)
	if req.MaxUnusedPercent != nil {
		if pct = req.GetMaxUnusedPercent(); pct < 0 || pct > 100 {
			return nil, false, invalidField("max_unused_percent", fmt.Errorf("%d: want 0 to 100", pct))
		}
	}
	owner, dryRun := req.GetOwner(), req.GetDryRun()
	return s.ops.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_PRUNE, owner: owner,
		requestID: req.GetRequestId(), joinKey: "prune/" + owner, req: req,
		run: func(ctx context.Context, op *operation) (*pb.OperationResult, error) {
			seen := s.maint.seen()
			r, err := s.openRepoForPrune(ctx, owner)
			if errors.Is(err, repo.ErrNoRepository) {
				s.maint.drop(owner)
			}
			if err != nil {
				return nil, err
			}
			op.setPhase(pb.OperationPhase_OPERATION_PHASE_TRANSFERRING)
			log := s.log.With(zap.String("operation", op.id), zap.String("owner", owner))
			res, err := r.Prune(ctx, repo.PruneOptions{
				DryRun: dryRun, MaxUnused: float64(pct) / 100, Host: s.host, Hook: s.hooks.prune,
				Log: func(line string) { log.Debug("prune: " + line) },
			})
			if !dryRun {
				// The open repository's next refresh would load the index
				// again whole (the prune state changed); closing it frees
				// the memory of entries the prune made stale at once.
				s.repos.drop(owner)
			}
			if !dryRun {
				result := "succeeded"
				switch {
				case err != nil && ctx.Err() != nil:
					result = "cancelled"
				case err != nil:
					result = "failed"
				}
				s.metrics.pruneDuration.WithLabelValues(result).Observe(res.Duration.Seconds())
				// What a failed prune deleted before it stopped is freed all
				// the same.
				s.metrics.pruneFreedBytes.Add(float64(max(res.BytesFreed, 0)))
				s.metrics.pruneFreedObjects.Add(float64(res.ObjectsDeleted))
			}
			for _, w := range res.Warnings {
				log.Warn("prune warning", zap.String("warning", truncate(w)))
			}
			if err != nil {
				return nil, err
			}
			if !dryRun {
				s.maint.pruned(owner, seen)
			}
			return &pb.OperationResult{Prune: pruneResult(res)}, nil
		}})
}

func pruneResult(r *repo.PruneResult) *pb.PruneResult {
	warnings := make([]string, len(r.Warnings))
	for i, w := range r.Warnings {
		warnings[i] = truncate(w)
	}
	return &pb.PruneResult{
		DryRun: r.DryRun, Generation: r.Generation, Resumed: r.Resumed,
		Snapshots: int64(r.Snapshots), ReachableBlobs: int64(r.ReachableBlobs), CondemnedBlobs: int64(r.CondemnedBlobs),
		ResurrectedBlobs: int64(r.Resurrected), SessionsWaited: int64(r.SessionsWaited), SessionsFenced: int64(r.SessionsFenced),
		PacksBefore: int64(r.PacksBefore), BytesBefore: r.BytesBefore, PacksDeleted: int64(r.PacksDeleted),
		PacksRepacked: int64(r.PacksRepacked), PacksWritten: int64(r.PacksWritten),
		IndexObjectsBefore: int64(r.IndexObjectsBefore), IndexObjectsWritten: int64(r.IndexObjectsWritten),
		IndexObjectsDeleted: int64(r.IndexObjectsDeleted), BytesFreed: r.BytesFreed, BytesAfter: r.BytesAfter,
		ObjectsDeleted: int64(r.ObjectsDeleted), Warnings: warnings, Duration: durationpb.New(r.Duration),
	}
}

func (sv *service) DeleteWorkspace(ctx context.Context, req *pb.DeleteWorkspaceRequest) (*pb.DeleteWorkspaceResponse, error) {
	op, joined, err := sv.s.startDeleteWorkspace(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.DeleteWorkspaceResponse{Operation: op.proto(), Joined: joined}, nil
}

func (s *Server) startDeleteWorkspace(req *pb.DeleteWorkspaceRequest) (*operation, bool, error) {
	if err := checkID("request_id", req.GetRequestId(), false); err != nil {
		return nil, false, err
	}
	if err := checkOwnerWorkspace(req.GetOwner(), req.GetWorkspace(), true); err != nil {
		return nil, false, err
	}
	owner, workspace := req.GetOwner(), req.GetWorkspace()
	return s.ops.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_DELETE_WORKSPACE, owner: owner, workspace: workspace,
		requestID: req.GetRequestId(), joinKey: "delete-workspace/" + owner + "/" + workspace, req: req,
		run: func(ctx context.Context, op *operation) (*pb.OperationResult, error) {
			// This node's operations of the workspace were cancelled when
			// the request was accepted: a backup that went on would write
			// a snapshot after the deletion.
			if err := waitEnded(ctx, op.waitFor); err != nil {
				return nil, err
			}
			r, err := s.place.OpenSnapshots(ctx, owner)
			if errors.Is(err, repo.ErrNoRepository) {
				return &pb.OperationResult{Receipt: &pb.DeleteReceipt{Duration: durationpb.New(0), CancelledOperations: int64(len(op.waitFor))}}, nil
			}
			if err != nil {
				return nil, err
			}
			op.setPhase(pb.OperationPhase_OPERATION_PHASE_TRANSFERRING)
			rec, err := r.DeleteWorkspace(ctx, workspace)
			if rec.Objects > 0 {
				s.maint.mark(owner)
			}
			if err != nil {
				return nil, err
			}
			return &pb.OperationResult{Receipt: receipt(rec, len(op.waitFor))}, nil
		}})
}

func receipt(rec repo.Receipt, cancelled int) *pb.DeleteReceipt {
	return &pb.DeleteReceipt{Objects: int64(rec.Objects), Bytes: rec.Bytes, Duration: durationpb.New(rec.Duration), CancelledOperations: int64(cancelled)}
}

// waitEnded waits until every one of ops has ended.
func waitEnded(ctx context.Context, ops []*operation) error {
	for _, o := range ops {
		select {
		case <-o.done:
		case <-ctx.Done():
			return fmt.Errorf("waiting for operation %s to end: %w", o.id, ctx.Err())
		}
	}
	return nil
}

func (sv *service) DeleteOwner(ctx context.Context, req *pb.DeleteOwnerRequest) (*pb.DeleteOwnerResponse, error) {
	op, joined, err := sv.s.startDeleteOwner(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.DeleteOwnerResponse{Operation: op.proto(), Joined: joined}, nil
}

func (s *Server) startDeleteOwner(req *pb.DeleteOwnerRequest) (*operation, bool, error) {
	if err := checkID("request_id", req.GetRequestId(), false); err != nil {
		return nil, false, err
	}
	if err := checkID("owner", req.GetOwner(), true); err != nil {
		return nil, false, err
	}
	owner := req.GetOwner()
	return s.ops.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_DELETE_OWNER, owner: owner,
		requestID: req.GetRequestId(), joinKey: "delete-owner/" + owner, req: req,
		run: func(ctx context.Context, op *operation) (res *pb.OperationResult, err error) {
			defer func() {
				result := "succeeded"
				switch {
				case err != nil && ctx.Err() != nil:
					result = "cancelled"
				case err != nil:
					result = "failed"
				}
				s.metrics.purges.WithLabelValues(result).Inc()
			}()
			if err := waitEnded(ctx, op.waitFor); err != nil {
				return nil, err
			}
			// Purged, the owner's open repository must not serve another
			// operation (its operations here were cancelled and have ended;
			// dropped again at the end, in case one was loaded meanwhile).
			s.repos.drop(owner)
			defer s.repos.drop(owner)
			st, err := s.place.Owner(ctx, owner, false)
			if errors.Is(err, repo.ErrNoRepository) { // bucket-per-owner, and no bucket
				s.maint.drop(owner)
				return &pb.OperationResult{Receipt: &pb.DeleteReceipt{Duration: durationpb.New(0), CancelledOperations: int64(len(op.waitFor))}}, nil
			}
			if err != nil {
				return nil, err
			}
			// The repository's id names its node-local cache; a repository
			// whose config cannot be read is purged all the same.
			var repoID string
			if r, err := repo.Open(ctx, st); err == nil {
				repoID = r.Config().ID
			} else if !errors.Is(err, repo.ErrNoRepository) {
				s.log.Warn("delete owner: the repository's config is unreadable; its node-local cache, if any, stays",
					zap.String("operation", op.id), zap.String("owner", owner), zap.String("error", truncate(err.Error())))
			}
			op.setPhase(pb.OperationPhase_OPERATION_PHASE_TRANSFERRING)
			log := s.log.With(zap.String("operation", op.id), zap.String("owner", owner))
			rec, err := repo.PurgeOwner(ctx, st, repo.PurgeOptions{Settle: s.hooks.purgeSettle, Log: func(line string) { log.Info("purge: " + line) }})
			s.metrics.purgedObjects.Add(float64(rec.Objects))
			s.metrics.purgedBytes.Add(float64(rec.Bytes))
			if err != nil {
				return nil, err
			}
			s.maint.drop(owner)
			if repoID != "" && s.cacheDir != "" {
				if err := os.RemoveAll(filepath.Join(s.cacheDir, repoID)); err != nil {
					return nil, fmt.Errorf("remove the node-local cache of owner %s: %w", owner, err)
				}
			}
			return &pb.OperationResult{Receipt: receipt(rec, len(op.waitFor))}, nil
		}})
}

func (sv *service) CheckRepository(ctx context.Context, req *pb.CheckRepositoryRequest) (*pb.CheckRepositoryResponse, error) {
	resp, err := sv.checkRepository(ctx, req)
	return resp, toStatus(err)
}

// checkRepository starts the check's operation and, unless no_wait,
// waits for its end and returns its findings as the unary call always did.
func (sv *service) checkRepository(ctx context.Context, req *pb.CheckRepositoryRequest) (*pb.CheckRepositoryResponse, error) {
	s := sv.s
	if err := checkID("request_id", req.GetRequestId(), false); err != nil {
		return nil, err
	}
	if err := checkID("owner", req.GetOwner(), true); err != nil {
		return nil, err
	}
	owner, readData := req.GetOwner(), req.GetReadData()
	// The operation's parameters are those of the check: no_wait only says
	// how this call returns, and a waiting and a not waiting request join.
	key := &pb.CheckRepositoryRequest{RequestId: req.GetRequestId(), Owner: owner, ReadData: readData}
	op, joined, err := s.ops.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_CHECK, owner: owner,
		requestID: req.GetRequestId(), joinKey: fmt.Sprintf("check/%s/%t", owner, readData), req: key,
		run: func(ctx context.Context, op *operation) (*pb.OperationResult, error) {
			// The stored objects are checked, not the node-local cache's
			// copies nor an open repository's index (repoCache): a check
			// loads the index its own way, whole, from storage.
			r, err := s.loadRepo(ctx, owner, false, "")
			if err != nil {
				return nil, err
			}
			op.setPhase(pb.OperationPhase_OPERATION_PHASE_TRANSFERRING)
			res, err := r.Check(ctx, readData)
			if err != nil {
				return nil, err
			}
			problems, warnings := make([]string, len(res.Problems)), make([]string, len(res.Warnings))
			for i, p := range res.Problems {
				problems[i] = truncate(p)
			}
			for i, w := range res.Warnings {
				warnings[i] = truncate(w)
			}
			return &pb.OperationResult{Check: &pb.CheckResult{
				Ok: len(problems) == 0, Problems: problems, Warnings: warnings, Snapshots: res.Snapshots, Trees: res.Trees,
				Blobs: res.Blobs, PacksRead: res.PacksRead,
			}}, nil
		}})
	if err != nil {
		return nil, err
	}
	if req.GetNoWait() {
		return &pb.CheckRepositoryResponse{Operation: op.proto(), Joined: joined}, nil
	}
	select {
	case <-op.done:
	case <-ctx.Done():
		// A caller that goes away takes its check with it, unless the check
		// is another request's too or may be asked for again by its id.
		if !joined && req.GetRequestId() == "" {
			op.cancel()
		}
		return nil, ctx.Err()
	}
	p := op.proto()
	if p.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		op.mu.Lock()
		err := op.err
		op.mu.Unlock()
		return nil, err
	}
	c := p.Result.GetCheck()
	return &pb.CheckRepositoryResponse{
		Ok: c.Ok, Problems: c.Problems, Warnings: c.Warnings, Snapshots: c.Snapshots, Trees: c.Trees,
		Blobs: c.Blobs, PacksRead: c.PacksRead, Operation: p, Joined: joined,
	}, nil
}
