package daemon

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/backupd/backupd/pkg/retention"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// done follows an operation to its end and returns its final state.
func (e *env) done(op *pb.Operation) *pb.Operation {
	e.t.Helper()
	return lastOf(e.watch(op.Id, nil))
}

// succeeded follows an operation to its end, which must be a success.
func (e *env) succeeded(what string, op *pb.Operation) *pb.Operation {
	e.t.Helper()
	last := e.done(op)
	if last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		e.t.Fatalf("%s: %v %s", what, last.State, last.ErrorMessage)
	}
	return last
}

// usage is what the store holds under dir: objects and bytes.
func usage(t *testing.T, dir string) (objects int, bytes int64) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return fs.SkipDir
		}
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			objects++
			bytes += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objects, bytes
}

// restoreInto restores a workspace's latest snapshot into a new directory
// under the root and checks it is the same tree as want.
func (e *env) restoreInto(owner, ws, name, want string) {
	e.t.Helper()
	dst := filepath.Join(e.root, name)
	r, err := e.client.RestoreWorkspace(context.Background(), &pb.RestoreWorkspaceRequest{Owner: owner, Workspace: ws, Path: dst})
	if err != nil {
		e.t.Fatal(err)
	}
	e.succeeded("restore", r.Operation)
	sameTree(e.t, want, dst)
}

// twoGenerations backs up ws of owner twice, the second time with its
// large file replaced, so that a forget of the first snapshot leaves a
// pack's worth of data to prune. It returns the workspace directory and
// the two snapshot ids.
func (e *env) twoGenerations(owner, ws string, seed uint64) (string, string, string) {
	e.t.Helper()
	src := e.workspace(ws, seed, 2<<20)
	a := e.backup(src, owner, ws).Result.SnapshotId
	e.workspace(ws, seed+1000, 2<<20) // the same names, other content
	b := e.backup(src, owner, ws).Result.SnapshotId
	return src, a, b
}

// TestForgetThenPrune: ForgetSnapshots (a dry run, then for real) forgets
// what the policy does not keep and says so per workspace; a prune's dry
// run frees nothing; the prune frees the forgotten snapshot's data, the
// kept snapshot restores identical, and the repository checks clean.
func TestForgetThenPrune(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	src, a, b := e.twoGenerations("ann", "ws", 1)
	other := e.workspace("other", 2, 1000)
	o := e.backup(other, "ann", "other").Result.SnapshotId
	keep1 := &pb.RetentionPolicy{KeepLast: 1}

	forget := func(dry bool) *pb.ForgetResult {
		t.Helper()
		resp, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "ann", Retention: keep1, DryRun: dry})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Operation.Kind != pb.OperationKind_OPERATION_KIND_FORGET || resp.Operation.Owner != "ann" {
			t.Fatalf("forget operation: %v", resp.Operation)
		}
		last := e.succeeded("forget", resp.Operation)
		fr := last.Result.GetForget()
		if fr.GetDryRun() != dry || len(fr.GetWorkspaces()) != 2 {
			t.Fatalf("forget (dry run %v): %v", dry, fr)
		}
		byWS := map[string]*pb.WorkspaceForget{}
		for _, w := range fr.Workspaces {
			byWS[w.Workspace] = w
		}
		if w := byWS["ws"]; !slices.Equal(w.GetKeptSnapshotIds(), []string{b}) || !slices.Equal(w.GetForgottenSnapshotIds(), []string{a}) || w.Kept != 1 || w.Forgotten != 1 {
			t.Fatalf("forget of ws (dry run %v): %v", dry, w)
		}
		if w := byWS["other"]; !slices.Equal(w.GetKeptSnapshotIds(), []string{o}) || len(w.GetForgottenSnapshotIds()) != 0 {
			t.Fatalf("forget of other (dry run %v): %v", dry, w)
		}
		if last.Result.ForgottenSnapshots != 1 {
			t.Fatalf("forgotten_snapshots %d", last.Result.ForgottenSnapshots)
		}
		return fr
	}
	count := func() int {
		list, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "ann"})
		if err != nil {
			t.Fatal(err)
		}
		return len(list.Snapshots)
	}
	forget(true)
	if n := count(); n != 3 {
		t.Fatalf("a dry run forgot: %d snapshots left", n)
	}
	forget(false)
	if n := count(); n != 2 {
		t.Fatalf("after the forget: %d snapshots", n)
	}

	prune := func(dry bool) *pb.PruneResult {
		t.Helper()
		resp, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "ann", DryRun: dry})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Operation.Kind != pb.OperationKind_OPERATION_KIND_PRUNE {
			t.Fatalf("prune operation: %v", resp.Operation)
		}
		return e.succeeded("prune", resp.Operation).Result.GetPrune()
	}
	objs0, bytes0 := usage(t, filepath.Join(e.store, "ann"))
	dry := prune(true)
	if objs, bytes := usage(t, filepath.Join(e.store, "ann")); objs != objs0 || bytes != bytes0 {
		t.Fatalf("a dry run changed the store: %d objects, %d bytes, before %d, %d", objs, bytes, objs0, bytes0)
	}
	if !dry.DryRun || dry.BytesFreed < 2<<20 || dry.Snapshots != 2 {
		t.Fatalf("dry run: %v", dry)
	}
	res := prune(false)
	_, bytes1 := usage(t, filepath.Join(e.store, "ann"))
	if res.DryRun || res.BytesFreed < 2<<20 || res.PacksDeleted+res.PacksRepacked == 0 || res.ObjectsDeleted == 0 || res.Duration.AsDuration() <= 0 || res.Generation == 0 {
		t.Fatalf("prune: %v", res)
	}
	if bytes0-bytes1 < 2<<20 {
		t.Fatalf("the store holds %d bytes after the prune, %d before: the forgotten file's 2 MiB are not freed", bytes1, bytes0)
	}
	e.restoreInto("ann", "ws", "back", src)
	e.restoreInto("ann", "other", "back-other", other)
	chk, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "ann", ReadData: true})
	if err != nil || !chk.Ok || chk.Snapshots != 2 || chk.Operation.GetKind() != pb.OperationKind_OPERATION_KIND_CHECK || chk.Operation.GetState() != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("check after the prune: %v %v", chk, err)
	}
	m := scrape(t, e.srv)
	for series, want := range map[string]float64{
		`backupd_forgotten_snapshots_total{trigger="request"}`:                       1,
		`backupd_operations_total{kind="prune",result="succeeded"}`:                  2,
		`backupd_operations_total{kind="forget",result="succeeded"}`:                 2,
		`backupd_operations_total{kind="check",result="succeeded"}`:                  1,
		`backupd_prune_duration_seconds_count{result="succeeded"}`:                   1, // dry runs are not prunes
		`backupd_prune_freed_bytes_total`:                                            float64(res.BytesFreed),
		`backupd_prune_deleted_objects_total`:                                        float64(res.ObjectsDeleted),
		`backupd_queue_wait_seconds_count{kind="prune"}`:                             2,
		`backupd_operation_duration_seconds_count{kind="forget",result="succeeded"}`: 2,
	} {
		if got := metricValue(t, m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// A second prune finds nothing to free.
	if again := prune(false); again.BytesFreed != 0 || again.PacksDeleted != 0 {
		t.Fatalf("second prune: %v", again)
	}
}

// TestCheckRepositoryNoWait: with no_wait the call returns the check's
// operation at once, and its result holds the findings.
func TestCheckRepositoryNoWait(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	e.backup(e.workspace("ws", 3, 1000), "cat", "ws")
	resp, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "cat", NoWait: true, RequestId: "chk-1"})
	if err != nil || resp.Operation == nil || resp.Snapshots != 0 || resp.Ok {
		t.Fatalf("no_wait: %v %v", resp, err)
	}
	last := e.succeeded("check", resp.Operation)
	if c := last.Result.GetCheck(); !c.GetOk() || c.GetSnapshots() != 1 || c.GetTrees() == 0 {
		t.Fatalf("check result: %v", c)
	}
	// The same request id, waiting this time, returns that check.
	again, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "cat", RequestId: "chk-1"})
	if err != nil || !again.Joined || again.Operation.Id != resp.Operation.Id || !again.Ok || again.Snapshots != 1 {
		t.Fatalf("retry by request id: %v %v", again, err)
	}
	if _, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "cat", RequestId: "chk-1", ReadData: true}); badField(err) != "request_id" {
		t.Fatalf("request id reused for another check: %v", err)
	}
}

// TestDeleteWorkspace: every snapshot of the workspace goes, with a
// receipt; the owner's other workspace stays; the prune that follows
// frees the data.
func TestDeleteWorkspace(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	e.twoGenerations("dan", "gone", 4)
	kept := e.workspace("kept", 5, 1000)
	e.backup(kept, "dan", "kept")
	del := func() *pb.DeleteReceipt {
		t.Helper()
		resp, err := e.client.DeleteWorkspace(ctx, &pb.DeleteWorkspaceRequest{Owner: "dan", Workspace: "gone"})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Operation.Kind != pb.OperationKind_OPERATION_KIND_DELETE_WORKSPACE || resp.Operation.Workspace != "gone" {
			t.Fatalf("delete operation: %v", resp.Operation)
		}
		return e.succeeded("delete workspace", resp.Operation).Result.GetReceipt()
	}
	if rec := del(); rec.GetObjects() != 2 || rec.GetBytes() == 0 || rec.GetDuration() == nil {
		t.Fatalf("receipt: %v", rec)
	}
	list, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "dan"})
	if err != nil || len(list.Snapshots) != 1 || list.Snapshots[0].Workspace != "kept" {
		t.Fatalf("snapshots after the delete: %v %v", list, err)
	}
	if rec := del(); rec.GetObjects() != 0 {
		t.Fatalf("deleting it again: %v", rec)
	}
	resp, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "dan"})
	if err != nil {
		t.Fatal(err)
	}
	if res := e.succeeded("prune", resp.Operation).Result.GetPrune(); res.BytesFreed < 4<<20 {
		t.Fatalf("prune after the delete freed %d bytes, want the 4 MiB of the workspace", res.BytesFreed)
	}
	e.restoreInto("dan", "kept", "back", kept)
	if _, err := e.client.DeleteWorkspace(ctx, &pb.DeleteWorkspaceRequest{Owner: "nobody", Workspace: "w"}); err != nil {
		t.Fatalf("delete of a workspace of an owner with nothing stored: %v", err)
	}
}

// TestDeleteOwner: a backup of the owner running when DeleteOwner
// arrives is cancelled and writes nothing; nothing of the owner is left,
// in storage or in the node-local cache; other owners are untouched; the
// owner may back up again afterwards.
func TestDeleteOwner(t *testing.T) {
	e := slowEnv(t, nil)
	ctx := context.Background()
	bob := e.workspace("bob-ws", 6, 64<<10)
	e.backup(bob, "bob", "ws")
	ann := e.workspace("ann-ws", 7, 64<<10)
	e.backup(ann, "ann", "ws")
	caches, _ := os.ReadDir(e.srv.cacheDir)
	if len(caches) != 2 {
		t.Fatalf("%d cache directories, want one per owner", len(caches))
	}
	e.workspace("ann-ws", 8, 8<<20) // a backup of 8 MiB at 1 MiB/s runs for seconds
	bk, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "ann", Workspace: "ws", Path: ann})
	if err != nil {
		t.Fatal(err)
	}
	var del *pb.DeleteOwnerResponse
	seen := e.watch(bk.Operation.Id, func(op *pb.Operation) {
		if del == nil && op.Progress.Phase == pb.OperationPhase_OPERATION_PHASE_TRANSFERRING && op.Progress.BytesDone > 0 {
			if del, err = e.client.DeleteOwner(ctx, &pb.DeleteOwnerRequest{Owner: "ann", RequestId: "purge-ann"}); err != nil {
				t.Fatal(err)
			}
		}
	})
	if del == nil {
		t.Fatal("the backup ended before it transferred anything")
	}
	if last := lastOf(seen); last.State != pb.OperationState_OPERATION_STATE_CANCELLED || codes.Code(last.ErrorCode) != codes.Canceled {
		t.Fatalf("the owner's running backup: %v %s", last.State, last.ErrorMessage)
	}
	last := e.succeeded("delete owner", del.Operation)
	rec := last.Result.GetReceipt()
	if last.Kind != pb.OperationKind_OPERATION_KIND_DELETE_OWNER || rec.GetObjects() < 4 || rec.GetBytes() == 0 || rec.GetCancelledOperations() != 1 {
		t.Fatalf("delete owner: %v", last)
	}
	if objs, _ := usage(t, filepath.Join(e.store, "ann")); objs != 0 {
		t.Fatalf("%d objects of the deleted owner left", objs)
	}
	if caches, _ := os.ReadDir(e.srv.cacheDir); len(caches) != 1 {
		t.Fatalf("%d cache directories after the delete, want bob's alone", len(caches))
	}
	// The same request id returns the same operation.
	again, err := e.client.DeleteOwner(ctx, &pb.DeleteOwnerRequest{Owner: "ann", RequestId: "purge-ann"})
	if err != nil || !again.Joined || again.Operation.Id != del.Operation.Id {
		t.Fatalf("retry: %v %v", again, err)
	}
	list, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "ann"})
	if err != nil || len(list.Snapshots)+len(list.UnreadableSnapshots) != 0 {
		t.Fatalf("snapshots of the deleted owner: %v %v", list, err)
	}
	e.restoreInto("bob", "ws", "bob-back", bob)
	if chk, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "bob", ReadData: true}); err != nil || !chk.Ok {
		t.Fatalf("check of the other owner: %v %v", chk, err)
	}
	// Deleting an owner with nothing stored succeeds with an empty receipt.
	none, err := e.client.DeleteOwner(ctx, &pb.DeleteOwnerRequest{Owner: "ann"})
	if err != nil {
		t.Fatal(err)
	}
	if rec := e.succeeded("delete again", none.Operation).Result.GetReceipt(); rec.GetObjects() != 0 {
		t.Fatalf("second delete: %v", rec)
	}
	m := scrape(t, e.srv)
	if v := metricValue(t, m, `backupd_owner_purges_total{result="succeeded"}`); v != 2 {
		t.Errorf("purges: %v", v)
	}
	if v := metricValue(t, m, `backupd_owner_purged_objects_total`); v != float64(rec.GetObjects()) {
		t.Errorf("purged objects: %v, receipt %d", v, rec.GetObjects())
	}
}

// TestDeleteRefusesOperationsMeanwhile: while a delete of an owner waits
// for the owner's operations it cancelled, new requests for the owner are
// refused, another owner's are not; a delete of a workspace cancels only
// that workspace's operations.
func TestDeleteRefusesOperationsMeanwhile(t *testing.T) {
	m := newManager(zaptest.NewLogger(t), newMetrics(prometheus.NewRegistry()), Limits{Backups: 4, Restores: 1, Maintenance: 2, QueueTimeout: time.Minute}, time.Hour)
	release := make(chan struct{})
	// A backup that ends only once released, whatever its context says
	// (a slow storage call that does not notice the cancel at once).
	running := make(chan struct{}, 2)
	stubborn := func(ctx context.Context, _ *operation) (*pb.OperationResult, error) {
		running <- struct{}{}
		<-release
		return nil, ctx.Err()
	}
	idle := func(ctx context.Context, _ *operation) (*pb.OperationResult, error) {
		return &pb.OperationResult{}, nil
	}
	backup := func(owner, ws string, run runFunc) (*operation, error) {
		op, _, err := m.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_BACKUP, owner: owner, workspace: ws, path: "/w/" + owner + ws,
			joinKey: "backup/" + owner + "/" + ws, req: &pb.BackupWorkspaceRequest{Owner: owner, Workspace: ws}, run: run})
		return op, err
	}
	a, err := backup("o", "a", stubborn)
	if err != nil {
		t.Fatal(err)
	}
	b, err := backup("o", "b", stubborn)
	if err != nil {
		t.Fatal(err)
	}
	<-running // both run (one cancelled while queued would end at once)
	<-running
	deleted := make(chan []*operation, 1)
	dw, _, err := m.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_DELETE_WORKSPACE, owner: "o", workspace: "a", joinKey: "delete-workspace/o/a",
		req: &pb.DeleteWorkspaceRequest{Owner: "o", Workspace: "a"},
		run: func(ctx context.Context, op *operation) (*pb.OperationResult, error) {
			deleted <- op.waitFor
			return &pb.OperationResult{}, waitEnded(ctx, op.waitFor)
		}})
	if err != nil {
		t.Fatal(err)
	}
	if w := <-deleted; len(w) != 1 || w[0] != a || a.ctx.Err() == nil || b.ctx.Err() != nil {
		t.Fatalf("delete of workspace a waits for %v; a cancelled: %v, b cancelled: %v", w, a.ctx.Err(), b.ctx.Err())
	}
	var ce *conflictError
	if _, err := backup("o", "a", idle); !errors.As(err, &ce) || !strings.Contains(err.Error(), dw.id) {
		t.Fatalf("a backup of the workspace being deleted: %v", err)
	}
	do, _, err := m.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_DELETE_OWNER, owner: "o", joinKey: "delete-owner/o",
		req: &pb.DeleteOwnerRequest{Owner: "o"},
		run: func(ctx context.Context, op *operation) (*pb.OperationResult, error) {
			deleted <- op.waitFor
			return &pb.OperationResult{}, waitEnded(ctx, op.waitFor)
		}})
	if err != nil {
		t.Fatal(err)
	}
	// It waits for those of a, b and the workspace's delete not ended yet
	// (one cancelled while queued ends at once), and cancelled them all.
	w := <-deleted
	if b.ctx.Err() == nil || dw.ctx.Err() == nil {
		t.Fatalf("delete of the owner: b cancelled: %v, the workspace's delete cancelled: %v", b.ctx.Err(), dw.ctx.Err())
	}
	for _, op := range w {
		if op != a && op != b && op != dw {
			t.Fatalf("delete of the owner waits for %s, not an operation of the owner", op.id)
		}
	}
	if _, err := backup("o", "c", idle); !errors.As(err, &ce) || !strings.Contains(err.Error(), "owner o is being deleted by operation "+do.id) {
		t.Fatalf("a backup of the owner being deleted: %v", err)
	}
	other, err := backup("p", "a", idle)
	if err != nil {
		t.Fatalf("another owner's backup: %v", err)
	}
	<-other.done
	close(release)
	for _, op := range []*operation{a, b, dw, do} {
		<-op.done
	}
	if p := do.proto(); p.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("delete owner: %v %s", p.State, p.ErrorMessage)
	}
	for _, op := range []*operation{a, b, dw} {
		if p := op.proto(); p.State != pb.OperationState_OPERATION_STATE_CANCELLED {
			t.Fatalf("%s: %v", kindName(op.kind), p.State)
		}
	}
	c, err := backup("o", "c", idle)
	if err != nil {
		t.Fatalf("a backup once the delete ended: %v", err)
	}
	<-c.done // not to log after the test
}

// TestLifecycleIdempotency: a request id names its operation, running or
// ended; reused for another request it is INVALID_ARGUMENT; an identical
// request while one runs joins it.
func TestLifecycleIdempotency(t *testing.T) {
	block := make(chan struct{})
	reached := make(chan struct{}, 1)
	e := newEnvHooks(t, nil, hooks{prune: func(step string) error {
		if step == "marked" {
			reached <- struct{}{}
			<-block
		}
		return nil
	}})
	ctx := context.Background()
	e.twoGenerations("eve", "ws", 9)
	first, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "eve", RequestId: "p-1"})
	if err != nil {
		t.Fatal(err)
	}
	<-reached
	join, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "eve"})
	if err != nil || !join.Joined || join.Operation.Id != first.Operation.Id {
		t.Fatalf("an identical prune while one runs: %v %v", join, err)
	}
	pct := int32(50)
	_, err = e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "eve", MaxUnusedPercent: &pct})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), first.Operation.Id) || !strings.Contains(err.Error(), "max_unused_percent") {
		t.Fatalf("another prune of the owner while one runs: %v", err)
	}
	close(block)
	e.succeeded("prune", first.Operation)
	again, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "eve", RequestId: "p-1"})
	if err != nil || !again.Joined || again.Operation.Id != first.Operation.Id || again.Operation.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("retry of an ended prune: %v %v", again, err)
	}
	if _, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "eve", RequestId: "p-1", DryRun: true}); badField(err) != "request_id" {
		t.Fatalf("request id reused for a dry run: %v", err)
	}
	// Request ids are one namespace over every kind.
	if _, err := e.client.DeleteWorkspace(ctx, &pb.DeleteWorkspaceRequest{Owner: "eve", Workspace: "ws", RequestId: "p-1"}); badField(err) != "request_id" {
		t.Fatalf("request id reused for a delete: %v", err)
	}
	f1, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "eve", Retention: &pb.RetentionPolicy{KeepLast: 1}, RequestId: "f-1"})
	if err != nil {
		t.Fatal(err)
	}
	e.succeeded("forget", f1.Operation)
	f2, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "eve", Retention: &pb.RetentionPolicy{KeepLast: 1}, RequestId: "f-1"})
	if err != nil || f2.Operation.Id != f1.Operation.Id || f2.Operation.Result.GetForgottenSnapshots() != 1 {
		t.Fatalf("retry of a forget: %v %v", f2, err)
	}
}

// TestCancelPrune: a prune cancelled while it waits between its steps
// ends CANCELLED; backups go on and the kept snapshots restore identical.
func TestCancelPrune(t *testing.T) {
	block := make(chan struct{})
	reached := make(chan string, 8)
	e := newEnvHooks(t, nil, hooks{prune: func(step string) error {
		reached <- step
		if step == "marked" {
			<-block
		}
		return nil
	}})
	ctx := context.Background()
	src, _, _ := e.twoGenerations("fay", "ws", 11)
	f, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "fay", Retention: &pb.RetentionPolicy{KeepLast: 1}})
	if err != nil {
		t.Fatal(err)
	}
	e.succeeded("forget", f.Operation)
	_, before := usage(t, filepath.Join(e.store, "fay"))
	resp, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "fay"})
	if err != nil {
		t.Fatal(err)
	}
	if step := <-reached; step != "marked" {
		t.Fatalf("first step %q", step)
	}
	c, err := e.client.CancelOperation(ctx, &pb.CancelOperationRequest{OperationId: resp.Operation.Id})
	if err != nil || c.Operation.State != pb.OperationState_OPERATION_STATE_RUNNING {
		t.Fatalf("cancel: %v %v", c, err)
	}
	close(block)
	last := e.done(resp.Operation)
	if last.State != pb.OperationState_OPERATION_STATE_CANCELLED || codes.Code(last.ErrorCode) != codes.Canceled {
		t.Fatalf("cancelled prune: %v %s", last.State, last.ErrorMessage)
	}
	close(reached)
	for step := range reached {
		t.Errorf("the cancelled prune went on to step %q", step)
	}
	if _, after := usage(t, filepath.Join(e.store, "fay")); after < before-1<<10 {
		t.Fatalf("the cancelled prune deleted data: %d bytes, %d before", after, before)
	}
	// A backup after it succeeds, and both restore identical.
	e.backup(src, "fay", "ws")
	e.restoreInto("fay", "ws", "back", src)
	if chk, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "fay", ReadData: true}); err != nil || !chk.Ok {
		t.Fatalf("check after a cancelled prune: %v %v", chk, err)
	}
	m := scrape(t, e.srv)
	if v := metricValue(t, m, `backupd_operations_total{kind="prune",result="cancelled"}`); v != 1 {
		t.Errorf("cancelled prunes: %v", v)
	}
}

// TestMaintenancePrunesForgottenOwners: the periodic maintenance, at its
// (injected) trigger, prunes the owners whose snapshots retention forgot
// on this node, and only those, once.
func TestMaintenancePrunesForgottenOwners(t *testing.T) {
	tick := make(chan time.Time)
	passes := make(chan maintenancePass)
	var (
		mu    gosync.Mutex
		waits []time.Duration
	)
	e := newEnvHooks(t, func(c *Config) {
		c.Retention = retention.Policy{KeepLast: 1}
		c.Maintenance = Maintenance{Interval: time.Hour, Jitter: time.Minute}
	}, hooks{
		maintenanceWait: func(d time.Duration) <-chan time.Time {
			mu.Lock()
			defer mu.Unlock()
			waits = append(waits, d)
			return tick
		},
		maintenancePassed: func(p maintenancePass) { passes <- p },
	})
	pass := func() maintenancePass {
		t.Helper()
		tick <- time.Now()
		return <-passes
	}
	// Nothing pending: a pass does nothing.
	if p := pass(); len(p.Operations) != 0 {
		t.Fatalf("a pass with nothing forgotten: %+v", p)
	}
	src, _, _ := e.twoGenerations("gus", "ws", 13) // the second backup's retention forgets the first
	e.backup(e.workspace("hal", 14, 1<<20), "hal", "ws")
	m := scrape(t, e.srv)
	if v := metricValue(t, m, `backupd_maintenance_pending_owners`); v != 1 {
		t.Fatalf("pending owners: %v", v)
	}
	if v := metricValue(t, m, `backupd_forgotten_snapshots_total{trigger="backup"}`); v != 1 {
		t.Fatalf("forgotten by retention: %v", v)
	}
	_, before := usage(t, filepath.Join(e.store, "gus"))
	_, halBefore := usage(t, filepath.Join(e.store, "hal"))
	p := pass()
	if !slices.Equal(p.Pruned, []string{"gus"}) || len(p.Failed) != 0 || len(p.Operations) != 1 {
		t.Fatalf("pass: %+v", p)
	}
	op, err := e.client.GetOperation(context.Background(), &pb.GetOperationRequest{OperationId: p.Operations[0]})
	if err != nil || op.Operation.Kind != pb.OperationKind_OPERATION_KIND_PRUNE || op.Operation.Result.GetPrune().GetBytesFreed() < 2<<20 {
		t.Fatalf("the maintenance's prune: %v %v", op, err)
	}
	if _, after := usage(t, filepath.Join(e.store, "gus")); before-after < 2<<20 {
		t.Fatalf("gus holds %d bytes after the maintenance, %d before", after, before)
	}
	if _, halAfter := usage(t, filepath.Join(e.store, "hal")); halAfter != halBefore {
		t.Fatalf("hal, with nothing forgotten, changed: %d bytes, %d before", halAfter, halBefore)
	}
	e.restoreInto("gus", "ws", "back", src)
	if v := metricValue(t, scrape(t, e.srv), `backupd_maintenance_pending_owners`); v != 0 {
		t.Fatalf("pending owners after the pass: %v", v)
	}
	// Pruned once: the next pass has nothing to do.
	if p := pass(); len(p.Operations) != 0 {
		t.Fatalf("a pass after the prune: %+v", p)
	}
	// A deleted workspace makes its owner pending too.
	d, err := e.client.DeleteWorkspace(context.Background(), &pb.DeleteWorkspaceRequest{Owner: "hal", Workspace: "ws"})
	if err != nil {
		t.Fatal(err)
	}
	e.succeeded("delete workspace", d.Operation)
	if p := pass(); !slices.Equal(p.Pruned, []string{"hal"}) {
		t.Fatalf("a pass after a workspace was deleted: %+v", p)
	}
	if _, halAfter := usage(t, filepath.Join(e.store, "hal")); halBefore-halAfter < 1<<20 {
		t.Fatalf("hal holds %d bytes after its workspace was deleted and pruned, %d before", halAfter, halBefore)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, w := range waits {
		if w < time.Hour || w > time.Hour+time.Minute {
			t.Fatalf("waited %v between passes, want an hour and up to a minute's jitter", w)
		}
	}
}

// TestLifecycleInvalidArguments: every field of the new requests is
// checked, naming the field.
func TestLifecycleInvalidArguments(t *testing.T) {
	e := newEnv(t, nil) // no default retention policy
	ctx := context.Background()
	neg, over := int32(-1), int32(101)
	long := strings.Repeat("o", maxName+1)
	for _, c := range []struct {
		name, field string
		call        func() error
	}{
		{"forget without owner", "owner", func() error {
			_, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Retention: &pb.RetentionPolicy{KeepLast: 1}})
			return err
		}},
		{"forget bad workspace", "workspace", func() error {
			_, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "o", Workspace: "../x", Retention: &pb.RetentionPolicy{KeepLast: 1}})
			return err
		}},
		{"forget without a policy and no default", "retention", func() error {
			_, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "o"})
			return err
		}},
		{"forget with an empty policy", "retention", func() error {
			_, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "o", Retention: &pb.RetentionPolicy{}})
			return err
		}},
		{"forget keep_last", "retention.keep_last", func() error {
			_, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{Owner: "o", Retention: &pb.RetentionPolicy{KeepLast: -2}})
			return err
		}},
		{"forget request_id", "request_id", func() error {
			_, err := e.client.ForgetSnapshots(ctx, &pb.ForgetSnapshotsRequest{RequestId: "a b", Owner: "o", Retention: &pb.RetentionPolicy{KeepLast: 1}})
			return err
		}},
		{"prune owner", "owner", func() error {
			_, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: long})
			return err
		}},
		{"prune request_id", "request_id", func() error {
			_, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "o", RequestId: long})
			return err
		}},
		{"prune max_unused -1", "max_unused_percent", func() error {
			_, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "o", MaxUnusedPercent: &neg})
			return err
		}},
		{"prune max_unused 101", "max_unused_percent", func() error {
			_, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: "o", MaxUnusedPercent: &over})
			return err
		}},
		{"delete workspace without workspace", "workspace", func() error {
			_, err := e.client.DeleteWorkspace(ctx, &pb.DeleteWorkspaceRequest{Owner: "o"})
			return err
		}},
		{"delete workspace owner", "owner", func() error {
			_, err := e.client.DeleteWorkspace(ctx, &pb.DeleteWorkspaceRequest{Owner: "-o", Workspace: "w"})
			return err
		}},
		{"delete owner without owner", "owner", func() error {
			_, err := e.client.DeleteOwner(ctx, &pb.DeleteOwnerRequest{})
			return err
		}},
		{"delete owner request_id", "request_id", func() error {
			_, err := e.client.DeleteOwner(ctx, &pb.DeleteOwnerRequest{Owner: "o", RequestId: strings.Repeat("r", 1<<20)})
			return err
		}},
		{"check request_id", "request_id", func() error {
			_, err := e.client.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: "o", RequestId: "/"})
			return err
		}},
	} {
		err := c.call()
		if got := badField(err); got != c.field {
			t.Errorf("%s: want InvalidArgument naming %s, got %s", c.name, c.field, trimmed(got))
		}
		if st, _ := status.FromError(err); len(st.Message()) > 512 {
			t.Errorf("%s: a %d-byte message", c.name, len(st.Message()))
		}
	}
	// Valid at the limits: a 128-byte owner's prune runs (and finds no
	// repository); max_unused 0 and 100 are accepted.
	zero, hundred := int32(0), int32(100)
	for _, p := range []*int32{&zero, &hundred} {
		resp, err := e.client.PruneRepository(ctx, &pb.PruneRepositoryRequest{Owner: strings.Repeat("o", maxName), MaxUnusedPercent: p})
		if err != nil {
			t.Fatalf("max_unused %d: %v", *p, err)
		}
		if last := e.done(resp.Operation); codes.Code(last.ErrorCode) != codes.NotFound {
			t.Fatalf("prune of an owner with no repository: %v %s", codes.Code(last.ErrorCode), last.ErrorMessage)
		}
	}
}
