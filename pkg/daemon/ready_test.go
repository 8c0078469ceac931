package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// TestReadyRestoreReportsReady: a ready_before_complete restore through
// the gRPC API enters OPERATION_PHASE_READY, seen on WatchOperation with
// ready_time and the bytes still to come, before it succeeds; a file the
// workspace makes at a late file's name after READY is kept and reported.
func TestReadyRestoreReportsReady(t *testing.T) {
	seenReady := make(chan struct{})
	var dst string
	e := newEnvHooks(t, nil, hooks{ready: func(*operation) {
		// The restore stays READY until the watcher has seen it (a bound,
		// not a synchronisation: a missing READY fails the test).
		select {
		case <-seenReady:
		case <-time.After(time.Minute):
			t.Error("the watcher never saw READY")
		}
		if err := os.WriteFile(filepath.Join(dst, "data", "bloba"), []byte("the workspace's"), 0o644); err != nil {
			t.Error(err)
		}
	}})
	src := e.workspace("ws1", 1, 3<<20, 2<<20, 100)
	// More recently modified files than the snapshot lists, so that the
	// large ones, older, are not among them.
	old := time.Unix(1e9, 0)
	for _, name := range []string{"bloba", "blobb"} {
		if err := os.Chtimes(filepath.Join(src, "data", name), old, old); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 300 {
		write(t, filepath.Join(src, "gen", fmt.Sprintf("f%d", i)), []byte("x"))
	}
	e.backup(src, "alice", "ws1")
	ctx := context.Background()
	dst = filepath.Join(e.root, "restored")
	resp, err := e.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "alice", Workspace: "ws1", Path: dst,
		ReadyBeforeComplete: true, Priority: []string{"data/blobb"}})
	if err != nil {
		t.Fatal(err)
	}
	var ready *pb.Operation
	seen := e.watch(resp.Operation.Id, func(op *pb.Operation) {
		if ready == nil && op.Progress.GetPhase() == pb.OperationPhase_OPERATION_PHASE_READY {
			ready = op
			close(seenReady)
		}
	})
	last := lastOf(seen)
	if last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("restore: %v %s", last.State, last.ErrorMessage)
	}
	if ready == nil {
		t.Fatal("no READY phase on the stream")
	}
	if ready.State != pb.OperationState_OPERATION_STATE_RUNNING || ready.ReadyTime == nil ||
		ready.ReadyTime.AsTime().Before(ready.StartTime.AsTime()) {
		t.Fatalf("at READY: %v", ready)
	}
	if left := ready.Progress.BytesTotal - ready.Progress.BytesDone; left != 3<<20 {
		t.Fatalf("at READY, %d bytes to come, want the late file's %d", left, 3<<20)
	}
	if last.ReadyTime == nil || !last.ReadyTime.AsTime().Equal(ready.ReadyTime.AsTime()) || last.EndTime.AsTime().Before(last.ReadyTime.AsTime()) {
		t.Fatalf("final: ready %v, end %v", last.ReadyTime, last.EndTime)
	}
	if last.Result.Conflicts != 1 || len(last.Result.ConflictPaths) != 1 || !strings.HasSuffix(last.Result.ConflictPaths[0], "data/bloba") {
		t.Fatalf("conflicts %d %q", last.Result.Conflicts, last.Result.ConflictPaths)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "data", "bloba")); err != nil || string(b) != "the workspace's" {
		t.Fatalf("the workspace's file: %q %v", b, err)
	}
	// Everything else as backed up.
	want, got := tree(t, src), tree(t, dst)
	delete(want, "data/bloba")
	delete(got, "data/bloba")
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s differs after the restore", p)
		}
	}
	if v := metricValue(t, scrape(t, e.srv), "backupd_restore_ready_seconds_count"); v != 1 {
		t.Errorf("backupd_restore_ready_seconds_count %v", v)
	}
}

// TestReadyRestoreLeavesLateDirectoriesForAfterReady: a directory the
// request's late patterns match is not there at READY, and is complete
// once the restore succeeds.
func TestReadyRestoreLeavesLateDirectoriesForAfterReady(t *testing.T) {
	var dst string
	sawReady := false
	e := newEnvHooks(t, nil, hooks{ready: func(*operation) {
		sawReady = true
		if _, err := os.Lstat(filepath.Join(dst, "gen")); !os.IsNotExist(err) {
			t.Errorf("at READY, the late directory gen is there (%v)", err)
		}
		if _, err := os.Stat(filepath.Join(dst, "data")); err != nil {
			t.Errorf("at READY, data: %v", err)
		}
	}})
	src := e.workspace("ws1", 1, 1<<20, 1<<20, 10)
	for i := range 50 {
		write(t, filepath.Join(src, "gen", "pkg", fmt.Sprintf("f%d.js", i)), []byte("module.exports = 1\n"))
	}
	e.backup(src, "alice", "ws1")
	dst = filepath.Join(e.root, "restored")
	resp, err := e.client.RestoreWorkspace(context.Background(), &pb.RestoreWorkspaceRequest{Owner: "alice", Workspace: "ws1", Path: dst,
		ReadyBeforeComplete: true, Late: []string{"gen/"}})
	if err != nil {
		t.Fatal(err)
	}
	last := lastOf(e.watch(resp.Operation.Id, nil))
	if last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || last.Result.Conflicts != 0 {
		t.Fatalf("restore: %v %s, conflicts %d", last.State, last.ErrorMessage, last.Result.GetConflicts())
	}
	if !sawReady {
		t.Fatal("the restore never reached READY")
	}
	want, got := tree(t, src), tree(t, dst)
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s differs after the restore", p)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d entries restored, want %d", len(got), len(want))
	}
}

func TestReadyRestoreInvalidArguments(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	for _, c := range []struct {
		name, field string
		req         *pb.RestoreWorkspaceRequest
	}{
		{"with overwrite", "ready_before_complete", &pb.RestoreWorkspaceRequest{ReadyBeforeComplete: true, Overwrite: true}},
		{"bad pattern", "priority", &pb.RestoreWorkspaceRequest{ReadyBeforeComplete: true, Priority: []string{"[oops"}}},
		{"priority alone", "priority", &pb.RestoreWorkspaceRequest{Priority: []string{"*.go"}}},
		{"negative size", "ready_max_file_size", &pb.RestoreWorkspaceRequest{ReadyBeforeComplete: true, ReadyMaxFileSize: -1}},
		{"size alone", "ready_max_file_size", &pb.RestoreWorkspaceRequest{ReadyMaxFileSize: 5}},
		{"late alone", "late", &pb.RestoreWorkspaceRequest{Late: []string{"node_modules/"}}},
		{"bad late pattern", "late", &pb.RestoreWorkspaceRequest{ReadyBeforeComplete: true, Late: []string{"[oops"}}},
	} {
		c.req.Owner, c.req.Workspace, c.req.Path = "o", "w", filepath.Join(e.root, "new")
		_, err := e.client.RestoreWorkspace(ctx, c.req)
		if got := badField(err); got != c.field {
			t.Errorf("%s: want InvalidArgument naming %s, got %s (%v)", c.name, c.field, got, err)
		}
	}
	// Requests join only when their ready fields are the same too.
	if fingerprint(&pb.RestoreWorkspaceRequest{Owner: "o", ReadyBeforeComplete: true}) == fingerprint(&pb.RestoreWorkspaceRequest{Owner: "o"}) {
		t.Error("ready_before_complete does not count in the fingerprint")
	}
	if fingerprint(&pb.RestoreWorkspaceRequest{Owner: "o", Priority: []string{"a"}}) == fingerprint(&pb.RestoreWorkspaceRequest{Owner: "o", Priority: []string{"b"}}) {
		t.Error("priority does not count in the fingerprint")
	}
}
