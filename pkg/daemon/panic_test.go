package daemon

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// TestPanicFailsOnlyItsOperation: an operation whose work panics (a bug a
// crafted object reached) fails with an internal error, and the manager
// goes on running the next one.
func TestPanicFailsOnlyItsOperation(t *testing.T) {
	m := newManager(zaptest.NewLogger(t), newMetrics(prometheus.NewRegistry()), Limits{Backups: 1, Restores: 1, Maintenance: 1, QueueTimeout: time.Minute}, time.Hour)
	released := 0
	release := func() error { released++; return nil }
	start := func(ws string, run runFunc) *operation {
		op, _, err := m.start(opSpec{kind: pb.OperationKind_OPERATION_KIND_BACKUP, owner: "o", workspace: ws, path: "/w/" + ws,
			joinKey: "backup/o/" + ws, req: &pb.BackupWorkspaceRequest{Owner: "o", Workspace: ws}, release: release, run: run})
		if err != nil {
			t.Fatal(err)
		}
		<-op.done
		return op
	}
	bad := start("bad", func(context.Context, *operation) (*pb.OperationResult, error) {
		var entries []int
		return &pb.OperationResult{Files: int64(entries[1])}, nil // out of range: panics
	})
	good := start("good", func(context.Context, *operation) (*pb.OperationResult, error) {
		return &pb.OperationResult{SnapshotId: "s"}, nil
	})
	if p := bad.proto(); p.State != pb.OperationState_OPERATION_STATE_FAILED || !strings.Contains(p.ErrorMessage, "internal error: panic") {
		t.Fatalf("panicking operation: %v %q", p.State, p.ErrorMessage)
	}
	if p := good.proto(); p.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || released != 2 {
		t.Fatalf("next operation: %v, %d released", p.State, released)
	}
}
