package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/backupd/backupd/pkg/retention"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// TestRetentionAfterBackup: the daemon's default policy, or a request's
// own, forgets the workspace's older snapshots right after each backup
// succeeds, and says how many in the result.
func TestRetentionAfterBackup(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Retention = retention.Policy{KeepLast: 2} })
	ctx := context.Background()
	src := e.workspace("ws", 7, 20)
	count := func(ws string) int {
		list, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "ann", Workspace: ws})
		if err != nil {
			t.Fatal(err)
		}
		return len(list.Snapshots)
	}
	var forgotten []int64
	for i := range 4 {
		os.WriteFile(filepath.Join(src, "changing"), []byte{byte(i)}, 0o644)
		forgotten = append(forgotten, e.backup(src, "ann", "ws").Result.ForgottenSnapshots)
	}
	if count("ws") != 2 || forgotten[0] != 0 || forgotten[1] != 0 || forgotten[2] != 1 || forgotten[3] != 1 {
		t.Fatalf("default keep_last 2: %d left, forgotten per backup %v", count("ws"), forgotten)
	}
	// A request's own policy wins; one without a rule keeps everything.
	run := func(p *pb.RetentionPolicy) *pb.Operation {
		resp, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "ann", Workspace: "ws", Path: src, Retention: p})
		if err != nil {
			t.Fatal(err)
		}
		seen := e.watch(resp.Operation.Id, nil)
		return seen[len(seen)-1]
	}
	if op := run(&pb.RetentionPolicy{}); op.Result.ForgottenSnapshots != 0 || count("ws") != 3 {
		t.Fatalf("no rule: forgot %d, %d left", op.Result.ForgottenSnapshots, count("ws"))
	}
	if op := run(&pb.RetentionPolicy{KeepLast: 1, KeepWithin: durationpb.New(0)}); op.Result.ForgottenSnapshots != 3 || count("ws") != 1 {
		t.Fatalf("keep_last 1: forgot %d, %d left", op.Result.ForgottenSnapshots, count("ws"))
	}
	for _, bad := range []*pb.RetentionPolicy{{KeepLast: -1}, {KeepWithin: durationpb.New(-time.Hour)}, {KeepTags: []string{"=v"}}} {
		_, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "ann", Workspace: "ws", Path: src, Retention: bad})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("retention %v: %v", bad, err)
		}
	}
}
