package daemon

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// conflictNaming fails unless err is FAILED_PRECONDITION naming the
// operation id and exactly the fields listed, in proto order.
func conflictNaming(t *testing.T, what string, err error, opID string, fields ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), opID) ||
		!strings.Contains(st.Message(), "with different parameters ("+strings.Join(fields, ", ")+"); wait for it or cancel it") {
		t.Errorf("%s: want FailedPrecondition naming %s and (%s), got %v", what, opID, strings.Join(fields, ", "), err)
	}
}

func TestBackupJoinsOnlyTheSameRequest(t *testing.T) {
	e := slowEnv(t, nil)
	ctx := context.Background()
	src := e.workspace("ws", 40, 8<<20)
	other := e.workspace("other", 41, 10)
	req := func() *pb.BackupWorkspaceRequest {
		return &pb.BackupWorkspaceRequest{Owner: "alice", Workspace: "ws1", Path: src, Excludes: []string{"*.log"},
			Tags: map[string]string{"reason": "stop"}, UidMappings: []*pb.IdMapping{{ContainerId: 0, HostId: 100000, Count: 65536}}}
	}
	first := req()
	first.RequestId = "first"
	a, err := e.client.BackupWorkspace(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	id := a.Operation.Id
	defer func() {
		e.client.CancelOperation(ctx, &pb.CancelOperationRequest{OperationId: id})
		e.watch(id, nil)
	}()

	// The same request (another or no request id; tags in another map
	// order do not matter) joins.
	for _, rid := range []string{"", "second"} {
		same := req()
		same.RequestId = rid
		b, err := e.client.BackupWorkspace(ctx, same)
		if err != nil || !b.Joined || b.Operation.Id != id {
			t.Fatalf("same request (request id %q): %v %v", rid, b, err)
		}
	}
	// A retry with the first request id returns the same operation.
	if b, err := e.client.BackupWorkspace(ctx, first); err != nil || !b.Joined || b.Operation.Id != id {
		t.Fatalf("retry: %v %v", b, err)
	}

	for _, c := range []struct {
		name   string
		mut    func(*pb.BackupWorkspaceRequest)
		fields []string
	}{
		{"path", func(r *pb.BackupWorkspaceRequest) { r.Path = other }, []string{"path"}},
		{"excludes", func(r *pb.BackupWorkspaceRequest) { r.Excludes = []string{"*.log", "/build"} }, []string{"excludes"}},
		{"excludes order", func(r *pb.BackupWorkspaceRequest) { r.Excludes = []string{"*.log", "!keep.log"} }, []string{"excludes"}},
		{"no excludes", func(r *pb.BackupWorkspaceRequest) { r.Excludes = nil }, []string{"excludes"}},
		{"force", func(r *pb.BackupWorkspaceRequest) { r.Force = true }, []string{"force"}},
		{"tags", func(r *pb.BackupWorkspaceRequest) { r.Tags["reason"] = "manual" }, []string{"tags"}},
		{"parent", func(r *pb.BackupWorkspaceRequest) { r.ParentSnapshotId = "abcd" }, []string{"parent_snapshot_id"}},
		{"uid mappings", func(r *pb.BackupWorkspaceRequest) { r.UidMappings[0].Count = 1000 }, []string{"uid_mappings"}},
		{"gid mappings", func(r *pb.BackupWorkspaceRequest) { r.GidMappings = r.UidMappings }, []string{"gid_mappings"}},
		{"path and excludes", func(r *pb.BackupWorkspaceRequest) { r.Path, r.Excludes = other, nil }, []string{"path", "excludes"}},
	} {
		r := req()
		c.mut(r)
		_, err := e.client.BackupWorkspace(ctx, r)
		conflictNaming(t, c.name, err, id, c.fields...)
		if err != nil && !strings.Contains(err.Error(), "workspace alice/ws1 is being backed up by operation "+id) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// The first request id with other parameters is refused, naming them.
	r := req()
	r.RequestId, r.Force = "first", true
	_, err = e.client.BackupWorkspace(ctx, r)
	if badField(err) != "request_id" || !strings.Contains(err.Error(), "(operation "+id+" (force))") {
		t.Errorf("request id reused with force: %v", err)
	}
	// Nothing else was started.
	if got, err := e.client.GetOperation(ctx, &pb.GetOperationRequest{OperationId: id}); err != nil || got.Operation.State != pb.OperationState_OPERATION_STATE_RUNNING {
		t.Fatalf("the first backup: %v %v", got, err)
	}
	if n := len(e.srv.ops.ops); n != 1 {
		t.Errorf("%d operations, want 1", n)
	}
}

func TestRestoreJoinsOnlyTheSameRequest(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Limits.DownloadBytesPerSecond = 1 << 20 })
	ctx := context.Background()
	src := e.workspace("ws", 42, 8<<20)
	snap := e.backup(src, "bob", "ws").Result.SnapshotId
	dst := filepath.Join(e.root, "restored")
	req := func() *pb.RestoreWorkspaceRequest {
		return &pb.RestoreWorkspaceRequest{Owner: "bob", Workspace: "ws", Path: dst, SnapshotId: snap[:8], Includes: []string{"data"}}
	}
	a, err := e.client.RestoreWorkspace(ctx, req())
	if err != nil {
		t.Fatal(err)
	}
	id := a.Operation.Id
	defer func() {
		e.client.CancelOperation(ctx, &pb.CancelOperationRequest{OperationId: id})
		e.watch(id, nil)
	}()
	if b, err := e.client.RestoreWorkspace(ctx, req()); err != nil || !b.Joined || b.Operation.Id != id {
		t.Fatalf("same request: %v %v", b, err)
	}
	for _, c := range []struct {
		name   string
		mut    func(*pb.RestoreWorkspaceRequest)
		fields []string
	}{
		{"snapshot", func(r *pb.RestoreWorkspaceRequest) { r.SnapshotId = "latest" }, []string{"snapshot_id"}},
		{"overwrite", func(r *pb.RestoreWorkspaceRequest) { r.Overwrite = true }, []string{"overwrite"}},
		{"includes", func(r *pb.RestoreWorkspaceRequest) { r.Includes = nil }, []string{"includes"}},
		{"snapshot and overwrite", func(r *pb.RestoreWorkspaceRequest) { r.SnapshotId, r.Overwrite, r.Delete = snap, true, true },
			[]string{"snapshot_id", "overwrite", "delete"}},
	} {
		r := req()
		c.mut(r)
		_, err := e.client.RestoreWorkspace(ctx, r)
		conflictNaming(t, c.name, err, id, c.fields...)
		if err != nil && !strings.Contains(err.Error(), dst+" is being restored from workspace bob/ws by operation "+id) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// Another path is another restore: it runs beside the first.
	r := req()
	r.Path = filepath.Join(e.root, "elsewhere")
	b, err := e.client.RestoreWorkspace(ctx, r)
	if err != nil || b.Joined || b.Operation.Id == id {
		t.Fatalf("restore into another path: %v %v", b, err)
	}
	e.client.CancelOperation(ctx, &pb.CancelOperationRequest{OperationId: b.Operation.Id})
	e.watch(b.Operation.Id, nil)
	if got, err := e.client.GetOperation(ctx, &pb.GetOperationRequest{OperationId: id}); err != nil || got.Operation.State != pb.OperationState_OPERATION_STATE_RUNNING {
		t.Fatalf("the first restore: %v %v", got, err)
	}
}
