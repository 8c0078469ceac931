package daemon

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/backupd/backupd/internal/iogate"
	"github.com/backupd/backupd/internal/panics"
	"github.com/backupd/backupd/pkg/dirfd"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/retention"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/location"
	bsync "github.com/backupd/backupd/pkg/sync"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// service implements pb.BackupServiceServer. Handlers validate, then hand
// long work to the operation manager; every error leaves through toStatus.
type service struct {
	pb.UnimplementedBackupServiceServer
	s *Server
}

func (sv *service) BackupWorkspace(ctx context.Context, req *pb.BackupWorkspaceRequest) (*pb.BackupWorkspaceResponse, error) {
	op, joined, err := sv.startBackup(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.BackupWorkspaceResponse{Operation: op.proto(), Joined: joined}, nil
}

func (sv *service) startBackup(req *pb.BackupWorkspaceRequest) (*operation, bool, error) {
	s := sv.s
	opts, dir, err := sv.backupOptions(req)
	if err != nil {
		return nil, false, err
	}
	policy, err := retentionPolicy(req.GetRetention(), s.cfg.Retention)
	if err != nil {
		dir.Close()
		return nil, false, err
	}
	path := dir.Name()
	key := "backup/" + req.GetOwner() + "/" + req.GetWorkspace()
	return s.ops.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_BACKUP, owner: req.GetOwner(), workspace: req.GetWorkspace(), path: path,
		requestID: req.GetRequestId(), joinKey: key, req: req, release: dir.Close,
		run: func(ctx context.Context, op *operation) (*pb.OperationResult, error) {
			// The checkpoints of the workspace it cancelled end first:
			// their stored packs are then indexed, for this backup to use.
			if err := waitEnded(ctx, op.waitFor); err != nil {
				return nil, err
			}
			// Checkpoints are not counted: the policy applies to the other
			// snapshots, checkpoints have their own (checkpoint.keep).
			return s.runBackup(ctx, op, dir, opts, "backup", func(r *repo.Repository) (repo.ForgetResult, error) {
				if policy.Empty() {
					return repo.ForgetResult{}, nil
				}
				return r.ForgetKind(ctx, op.workspace, policy, false, false)
			})
		}})
}

// backupOptions validates what a backup or checkpoint request asks, and
// opens its directory (last, once every other field is valid: the open is
// the check).
func (sv *service) backupOptions(req *pb.BackupWorkspaceRequest) (bsync.BackupOptions, *dirfd.Dir, error) {
	s := sv.s
	var opts bsync.BackupOptions
	if err := checkID("request_id", req.GetRequestId(), false); err != nil {
		return opts, nil, err
	}
	if err := checkOwnerWorkspace(req.GetOwner(), req.GetWorkspace(), true); err != nil {
		return opts, nil, err
	}
	if err := checkPath(req.GetPath()); err != nil {
		return opts, nil, err
	}
	if err := checkTags(req.GetTags()); err != nil {
		return opts, nil, err
	}
	if err := checkExcludes(req.GetExcludes()); err != nil {
		return opts, nil, err
	}
	if req.GetParentSnapshotId() != "" {
		if err := checkSnapshotID("parent_snapshot_id", req.GetParentSnapshotId(), false, false); err != nil {
			return opts, nil, err
		}
	}
	uids, err := idMap("uid_mappings", req.GetUidMappings())
	if err != nil {
		return opts, nil, err
	}
	gids, err := idMap("gid_mappings", req.GetGidMappings())
	if err != nil {
		return opts, nil, err
	}
	if _, err := retentionPolicy(req.GetRetention(), s.cfg.Retention); err != nil {
		return opts, nil, err
	}
	opts = bsync.BackupOptions{
		Owner: req.GetOwner(), Workspace: req.GetWorkspace(), Tags: req.GetTags(), Exclude: req.GetExcludes(),
		Parent: req.GetParentSnapshotId(), Force: req.GetForce(), Strict: req.GetStrict(), UIDMap: uids, GIDMap: gids, Uploads: s.uploads,
	}
	dir, err := workspaceDir(s.roots, req.GetPath(), false)
	if err != nil {
		return opts, nil, err
	}
	return opts, dir, nil
}

// runBackup runs a backup or checkpoint operation's backup, then its
// retention (forget, by trigger).
func (s *Server) runBackup(ctx context.Context, op *operation, dir *dirfd.Dir, opts bsync.BackupOptions,
	trigger string, forget func(*repo.Repository) (repo.ForgetResult, error)) (*pb.OperationResult, error) {
	r, done, err := s.useRepo(ctx, opts.Owner, true)
	if err != nil {
		return nil, err
	}
	succeeded := false // a panic fails it too
	defer func() { done(!succeeded) }()
	op.setPhase(pb.OperationPhase_OPERATION_PHASE_TRANSFERRING)
	opts.Progress, opts.Warn = &op.progress, s.warner(op)
	res, err := bsync.BackupDir(ctx, r, dir, opts)
	if err != nil {
		// Every pack it stored is in an index object: the repository
		// stays open, its index as the storage's (see repoCache).
		succeeded = errors.As(err, new(*bsync.IndexedError))
		return nil, err
	}
	succeeded = true
	st := res.Snapshot.Stats
	s.metrics.uploaded.WithLabelValues(kindName(op.kind)).Add(float64(st.StoredBytes))
	return &pb.OperationResult{
		SnapshotId: res.SnapshotID.String(), Files: st.Files, Dirs: st.Dirs, Symlinks: st.Symlinks, Bytes: st.Bytes,
		UnchangedFiles: st.UnchangedFiles, NewBytes: st.NewBytes, StoredBytes: st.StoredBytes,
		Skipped: st.Skipped, UnreadableEntries: st.Unreadable, ChangingFiles: st.Changing, RereadFiles: st.Reread, Excluded: st.Excluded, Blobs: st.Blobs, NewBlobs: st.NewBlobs, ObjectsWritten: st.ObjectsWritten,
		Checkpoint: res.Snapshot.Checkpoint, ResumedBytes: res.ResumedBytes, ForgottenSnapshots: s.applyRetention(op, r, trigger, forget),
	}, nil
}

func (sv *service) CheckpointWorkspace(ctx context.Context, req *pb.CheckpointWorkspaceRequest) (*pb.CheckpointWorkspaceResponse, error) {
	op, joined, err := sv.startCheckpoint(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.CheckpointWorkspaceResponse{Operation: op.proto(), Joined: joined}, nil
}

// startCheckpoint starts a checkpoint: a backup marked as one, run under
// the checkpoint limits (config Checkpoint) with its workers at
// background priority. A BackupWorkspace of the workspace cancels it (see
// manager.start); while such a backup is queued or running, a checkpoint
// is refused (FAILED_PRECONDITION): the backup is newer than it would be.
func (sv *service) startCheckpoint(req *pb.CheckpointWorkspaceRequest) (*operation, bool, error) {
	s := sv.s
	keep := int(req.GetKeep())
	if keep < 0 || keep > maxKeepCheckpoints {
		return nil, false, invalidField("keep", fmt.Errorf("%d: want 0 (the daemon's default, %d) to %d", keep, s.cfg.Checkpoint.Keep, maxKeepCheckpoints))
	}
	if keep == 0 {
		keep = s.cfg.Checkpoint.Keep
	}
	opts, dir, err := sv.backupOptions(&pb.BackupWorkspaceRequest{
		RequestId: req.GetRequestId(), Owner: req.GetOwner(), Workspace: req.GetWorkspace(), Path: req.GetPath(),
		Tags: req.GetTags(), Excludes: req.GetExcludes(), UidMappings: req.GetUidMappings(), GidMappings: req.GetGidMappings(),
	})
	if err != nil {
		return nil, false, err
	}
	opts.SetCheckpoint()
	path := dir.Name()
	key := "checkpoint/" + req.GetOwner() + "/" + req.GetWorkspace()
	return s.ops.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_CHECKPOINT, owner: req.GetOwner(), workspace: req.GetWorkspace(), path: path,
		requestID: req.GetRequestId(), joinKey: key, req: req, release: dir.Close,
		run: func(ctx context.Context, op *operation) (*pb.OperationResult, error) {
			gate := s.checkpointGate(dir)
			defer func() {
				held, waits, _ := gate.Stats()
				gate.Close()
				s.metrics.checkpointDiskWait.Add(held.Seconds())
				if waits > 0 {
					s.log.Debug("checkpoint held back while others used the disk", zap.String("operation", op.id),
						zap.Duration("held", held), zap.Int64("waits", waits))
				}
			}()
			opts.Throttle = func(ctx context.Context, n int) error {
				if err := gate.Wait(ctx); err != nil {
					return err
				}
				return s.checkpointThrottle(ctx, n)
			}
			return s.runBackup(ctx, op, dir, opts, "checkpoint", func(r *repo.Repository) (repo.ForgetResult, error) {
				return r.ForgetKind(ctx, op.workspace, retention.Policy{KeepLast: keep}, true, false)
			})
		}})
}

// maxKeepCheckpoints is the most checkpoints a request may keep.
const maxKeepCheckpoints = 1000

// checkpointGate returns the gate that holds a checkpoint's packs back
// while others use the disk of its workspace dir or of the local store
// (checkpoint.disk_wait); nil, which never waits, when that is off.
func (s *Server) checkpointGate(dir *dirfd.Dir) *iogate.Gate {
	if s.cfg.Checkpoint.DiskWait < 0 {
		return nil
	}
	var devs []uint64
	if dev, ok := iogate.DeviceOfFd(dir.Fd()); ok {
		devs = append(devs, dev)
	}
	if local, ok := location.LocalDir(s.cfg.Storage.URL); ok {
		if dev, ok := iogate.DeviceOf(local); ok {
			devs = append(devs, dev)
		}
	}
	return iogate.New(devs, iogate.Options{MaxWait: s.cfg.Checkpoint.DiskWait})
}

// checkpointThrottle waits until the checkpoints' bandwidth budget
// (checkpoint.bandwidth) pays for n bytes; a pack is paid for before it
// is stored.
func (s *Server) checkpointThrottle(ctx context.Context, n int) error {
	if s.checkpointRate == nil {
		if s.hooks.checkpointPack != nil {
			return s.hooks.checkpointPack(ctx)
		}
		return nil
	}
	if s.hooks.checkpointPack != nil {
		if err := s.hooks.checkpointPack(ctx); err != nil {
			return err
		}
	}
	for n > 0 {
		k := min(n, s.checkpointRate.Burst())
		if err := s.checkpointRate.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func (sv *service) RestoreWorkspace(ctx context.Context, req *pb.RestoreWorkspaceRequest) (*pb.RestoreWorkspaceResponse, error) {
	op, joined, err := sv.startRestore(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.RestoreWorkspaceResponse{Operation: op.proto(), Joined: joined}, nil
}

func (sv *service) startRestore(req *pb.RestoreWorkspaceRequest) (*operation, bool, error) {
	s := sv.s
	if err := checkID("request_id", req.GetRequestId(), false); err != nil {
		return nil, false, err
	}
	if err := checkOwnerWorkspace(req.GetOwner(), req.GetWorkspace(), true); err != nil {
		return nil, false, err
	}
	if err := checkSnapshotID("snapshot_id", req.GetSnapshotId(), true, false); err != nil {
		return nil, false, err
	}
	if err := checkPath(req.GetPath()); err != nil {
		return nil, false, err
	}
	uids, err := idMap("uid_mappings", req.GetUidMappings())
	if err != nil {
		return nil, false, err
	}
	gids, err := idMap("gid_mappings", req.GetGidMappings())
	if err != nil {
		return nil, false, err
	}
	if !req.GetOverwrite() {
		if req.GetVerify() {
			return nil, false, invalidField("verify", errors.New("needs overwrite"))
		}
		if req.GetDelete() {
			return nil, false, invalidField("delete", errors.New("needs overwrite"))
		}
	}
	if err := checkIncludes(req.GetIncludes()); err != nil {
		return nil, false, err
	}
	if err := checkReady(req); err != nil {
		return nil, false, err
	}
	opts := bsync.RestoreOptions{
		Downloads: s.downloads, UIDMap: uids, GIDMap: gids,
		Overwrite: req.GetOverwrite(), Verify: req.GetVerify(), Delete: req.GetDelete(), Include: req.GetIncludes(),
		ReadyBeforeComplete: req.GetReadyBeforeComplete(), Priority: req.GetPriority(), ReadyMaxFileSize: req.GetReadyMaxFileSize(),
		Late: req.GetLate(),
	}
	// Last, once every other field is valid: the open is the check.
	dir, err := workspaceDir(s.roots, req.GetPath(), true)
	if err != nil {
		return nil, false, err
	}
	path := dir.Name()
	owner, workspace, snapshot := req.GetOwner(), req.GetWorkspace(), req.GetSnapshotId()
	key := "restore/" + owner + "/" + workspace + "/" + path
	return s.ops.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_RESTORE, owner: owner, workspace: workspace, path: path,
		requestID: req.GetRequestId(), joinKey: key, req: req, release: dir.Close,
		run: func(ctx context.Context, op *operation) (*pb.OperationResult, error) {
			r, done, err := s.useRepo(ctx, owner, false)
			if err != nil {
				return nil, err
			}
			succeeded := false
			defer func() { done(!succeeded) }()
			snap, ref, err := r.FindSnapshot(ctx, workspace, snapshot)
			if err != nil {
				return nil, err
			}
			op.setPhase(pb.OperationPhase_OPERATION_PHASE_TRANSFERRING)
			opts.Progress, opts.Warn = &op.progress, s.warner(op)
			if opts.ReadyBeforeComplete {
				opts.Ready = func(left int64) {
					s.ops.ready(op, left)
					if s.hooks.ready != nil {
						s.hooks.ready(op)
					}
				}
			}
			res, err := bsync.RestoreDir(ctx, r, snap, dir, opts)
			if err != nil {
				return nil, fmt.Errorf("restore of snapshot %s: %w", ref.ID.Short(), err)
			}
			succeeded = true
			return &pb.OperationResult{
				SnapshotId: ref.ID.String(), Files: res.Files, Dirs: res.Dirs, Symlinks: res.Symlinks, Bytes: res.Bytes,
				UnchangedFiles: res.Unchanged, NewBytes: res.PackBytes, ReusedBytes: res.ReusedBytes, Deleted: res.Deleted,
				Conflicts: res.Conflicts, ConflictPaths: res.ConflictPaths,
			}, nil
		}})
}

// applyRetention forgets, after a successful backup or checkpoint (by
// trigger), the snapshots of its workspace that forget decides, and
// returns how many. The backup has succeeded whatever happens here: a
// failure is logged, not returned.
func (s *Server) applyRetention(op *operation, r *repo.Repository, trigger string, forget func(*repo.Repository) (repo.ForgetResult, error)) int64 {
	res, err := forget(r)
	n := int64(len(res.Forget))
	s.forgotten(op.owner, trigger, n)
	if err != nil {
		s.log.Warn("retention after the backup failed; the snapshots are kept until the next backup's", zap.String("operation", op.id),
			zap.String("owner", op.owner), zap.String("workspace", op.workspace), zap.Int64("forgotten", n), zap.String("error", truncate(err.Error())))
	} else if n > 0 {
		s.log.Info("retention forgot snapshots", zap.String("operation", op.id), zap.String("owner", op.owner),
			zap.String("workspace", op.workspace), zap.Int64("forgotten", n), zap.String("trigger", trigger))
	}
	return n
}

// warner logs the first warnings of an operation (skipped entries,
// unsupported metadata); later ones are only counted.
func (s *Server) warner(op *operation) func(path string, err error) {
	const max = 20
	var n atomic.Int64
	return func(path string, err error) {
		if k := n.Add(1); k <= max {
			s.log.Warn("operation warning", zap.String("operation", op.id), zap.String("entry", truncate(path)), zap.String("error", truncate(err.Error())))
		} else if k == max+1 {
			s.log.Warn("operation warning: further warnings not logged", zap.String("operation", op.id))
		}
	}
}

func (sv *service) operation(id string) (*operation, error) {
	if id == "" {
		return nil, invalidField("operation_id", errors.New("required"))
	}
	if err := checkLen("operation_id", "", id, maxOperationID); err != nil {
		return nil, err
	}
	op, ok := sv.s.ops.get(id)
	if !ok {
		return nil, &notFoundError{fmt.Sprintf("operation %s not found (finished operations are kept for %v)", quote(id), sv.s.cfg.OperationRetention)}
	}
	return op, nil
}

func (sv *service) GetOperation(ctx context.Context, req *pb.GetOperationRequest) (*pb.GetOperationResponse, error) {
	op, err := sv.operation(req.GetOperationId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetOperationResponse{Operation: op.proto()}, nil
}

func (sv *service) CancelOperation(ctx context.Context, req *pb.CancelOperationRequest) (*pb.CancelOperationResponse, error) {
	op, err := sv.operation(req.GetOperationId())
	if err != nil {
		return nil, toStatus(err)
	}
	op.cancel()
	return &pb.CancelOperationResponse{Operation: op.proto()}, nil
}

func (sv *service) WatchOperation(req *pb.WatchOperationRequest, stream pb.BackupService_WatchOperationServer) error {
	interval := defaultWatch
	if req.GetInterval() != nil {
		if err := req.GetInterval().CheckValid(); err != nil {
			return toStatus(invalidField("interval", err))
		}
		if interval = req.GetInterval().AsDuration(); interval < minInterval {
			return toStatus(invalidField("interval", fmt.Errorf("%v is below the minimum %v", interval, minInterval)))
		}
	}
	op, err := sv.operation(req.GetOperationId())
	if err != nil {
		return toStatus(err)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		changed := op.changes()
		final := op.finished()
		if err := stream.Send(&pb.WatchOperationResponse{Operation: op.proto()}); err != nil {
			return err
		}
		if final {
			return nil
		}
		select {
		case <-changed:
		case <-op.done:
		case <-tick.C:
		case <-stream.Context().Done():
			return toStatus(stream.Context().Err())
		}
	}
}

// pageToken is where a snapshot listing goes on: after the snapshot with
// this time and key, in newest-first order.
func encodePageToken(ref repo.SnapshotRef) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(ref.Time.UnixNano(), 10) + "/" + ref.Key))
}

func decodePageToken(tok string) (int64, string, error) {
	if err := checkLen("page_token", "", tok, maxPageToken); err != nil {
		return 0, "", err
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, "", invalidField("page_token", errors.New("not a token from a previous response"))
	}
	ts, key, ok := strings.Cut(string(b), "/")
	n, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil || key == "" {
		return 0, "", invalidField("page_token", errors.New("not a token from a previous response"))
	}
	return n, key, nil
}

func (sv *service) ListSnapshots(ctx context.Context, req *pb.ListSnapshotsRequest) (*pb.ListSnapshotsResponse, error) {
	resp, err := sv.listSnapshots(ctx, req)
	return resp, toStatus(err)
}

func (sv *service) listSnapshots(ctx context.Context, req *pb.ListSnapshotsRequest) (*pb.ListSnapshotsResponse, error) {
	if err := checkOwnerWorkspace(req.GetOwner(), req.GetWorkspace(), false); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0 || size > maxPageSize:
		return nil, invalidField("page_size", fmt.Errorf("%d: want 0 (default %d) to %d", size, defaultPage, maxPageSize))
	case size == 0:
		size = defaultPage
	}
	var afterTime int64
	var afterKey string
	if req.GetPageToken() != "" {
		var err error
		if afterTime, afterKey, err = decodePageToken(req.GetPageToken()); err != nil {
			return nil, err
		}
	}
	r, err := sv.s.place.OpenSnapshots(ctx, req.GetOwner())
	if errors.Is(err, repo.ErrNoRepository) {
		return &pb.ListSnapshotsResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	refs, err := r.ListSnapshots(ctx, req.GetWorkspace())
	if err != nil {
		return nil, err
	}
	// Newest first; a page starts after the token's snapshot.
	sort.Slice(refs, func(i, j int) bool { return newer(refs[i], refs[j]) })
	start := 0
	if afterKey != "" {
		start = sort.Search(len(refs), func(i int) bool {
			t := refs[i].Time.UnixNano()
			return t < afterTime || (t == afterTime && refs[i].Key < afterKey)
		})
	}
	page := refs[start:min(start+size, len(refs))]
	read := make([]*pb.Snapshot, len(page))
	unreadable := make([]*pb.UnreadableSnapshot, len(page))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, ref := range page {
		g.Go(panics.Safe(func() error {
			snap, err := r.LoadSnapshot(gctx, ref)
			switch {
			case errors.Is(err, storage.ErrNotFound):
				return nil // deleted since the listing
			case err != nil && gctx.Err() == nil && repo.Damaged(err):
				unreadable[i] = &pb.UnreadableSnapshot{Id: ref.ID.String(), Owner: req.GetOwner(), Workspace: ref.Workspace,
					Time: timestamppb.New(ref.Time), Error: truncate(err.Error())}
				return nil
			case err != nil:
				return err
			}
			read[i] = &pb.Snapshot{Checkpoint: snap.Checkpoint,
				Id: ref.ID.String(), Owner: snap.Owner, Workspace: snap.Workspace, Time: timestamppb.New(snap.Time),
				Host: snap.Host, Path: snap.Path, ParentId: snap.Parent, Tags: snap.Tags,
				Files: snap.Stats.Files, Dirs: snap.Stats.Dirs, Bytes: snap.Stats.Bytes,
				NewBytes: snap.Stats.NewBytes, StoredBytes: snap.Stats.StoredBytes, UnreadableEntries: snap.Stats.Unreadable,
				ChangingFiles: snap.Stats.Changing,
			}
			return nil
		}))
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	resp := &pb.ListSnapshotsResponse{}
	for i := range page {
		if read[i] != nil {
			resp.Snapshots = append(resp.Snapshots, read[i])
		}
		if unreadable[i] != nil {
			resp.UnreadableSnapshots = append(resp.UnreadableSnapshots, unreadable[i])
		}
	}
	if start+size < len(refs) {
		resp.NextPageToken = encodePageToken(page[len(page)-1])
	}
	return resp, nil
}

// newer orders snapshots newest first, by time then key.
func newer(a, b repo.SnapshotRef) bool {
	if !a.Time.Equal(b.Time) {
		return a.Time.After(b.Time)
	}
	return a.Key > b.Key
}

func (sv *service) DeleteSnapshot(ctx context.Context, req *pb.DeleteSnapshotRequest) (*pb.DeleteSnapshotResponse, error) {
	err := sv.deleteSnapshot(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.DeleteSnapshotResponse{}, nil
}

func (sv *service) deleteSnapshot(ctx context.Context, req *pb.DeleteSnapshotRequest) error {
	if err := checkOwnerWorkspace(req.GetOwner(), req.GetWorkspace(), true); err != nil {
		return err
	}
	if err := checkSnapshotID("snapshot_id", req.GetSnapshotId(), false, true); err != nil {
		return err
	}
	r, err := sv.s.place.OpenSnapshots(ctx, req.GetOwner())
	if err != nil {
		return err
	}
	refs, err := r.ListSnapshots(ctx, req.GetWorkspace())
	if err != nil {
		return err
	}
	for _, ref := range refs {
		if ref.ID.String() == req.GetSnapshotId() {
			if err := r.DeleteSnapshot(ctx, ref); err != nil {
				return err
			}
			sv.s.log.Info("snapshot deleted", zap.String("owner", req.GetOwner()), zap.String("workspace", req.GetWorkspace()), zap.String("snapshot", ref.ID.String()))
			return nil
		}
	}
	return &notFoundError{fmt.Sprintf("snapshot %s not found in workspace %s", req.GetSnapshotId(), req.GetWorkspace())}
}
