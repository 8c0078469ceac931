package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/s3"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// Storage errors map to their codes: a refusal (401, 403) is
// PERMISSION_DENIED, a bucket gone NOT_FOUND, whatever wraps them.
func TestGRPCCodeOfStorageErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("owner o: s3: put data/x in bucket b: %w: AccessDenied (HTTP 403)", storage.ErrPermission), codes.PermissionDenied},
		{fmt.Errorf("s3: get x in bucket b: %w: NoSuchBucket", s3.ErrNoBucket), codes.NotFound},
		{fmt.Errorf("owner o: bucket b: %w", repo.ErrNoRepository), codes.NotFound},
		{storage.Transient(errors.New("503")), codes.Unavailable},
		{fmt.Errorf("read: %w", os.ErrPermission), codes.PermissionDenied},
	} {
		if got := grpcCode(tc.err); got != tc.want {
			t.Errorf("grpcCode(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// Against MinIO as the restricted user of the seeds' IAM policy, with a
// bucket per owner: an owner whose bucket the user may not touch (created
// by root, not granted) gets PERMISSION_DENIED naming the bucket, from an
// operation (backup) and from a call (ListSnapshots); so does an owner
// whose bucket is missing (S3 answers 403 to who may not see it; the user
// may not create it). With root's credentials a missing bucket is no
// repository: NOT_FOUND for a restore, no snapshots in a listing. An
// owner of a granted bucket backs up and restores meanwhile.
func TestStorageErrorsThroughDaemonOnMinIO(t *testing.T) {
	srv := testservers.MinIO(t)
	granted := srv.NewBucket(t)
	mc, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(srv.RootUser, srv.RootPassword, "")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	suffix := make([]byte, 4)
	rand.Read(suffix)
	denied, missing := "backupd-denied-"+hex.EncodeToString(suffix), "backupd-missing-"+hex.EncodeToString(suffix)
	if err := mc.MakeBucket(ctx, denied, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mc.RemoveBucket(context.Background(), denied) })
	e := newEnv(t, func(c *Config) {
		c.Storage.URL = "s3://unused/backups?region=" + srv.Region + "&endpoint=" + srv.URL
		c.Storage.Placement, c.Storage.BucketTemplate = "bucket-per-owner", "{owner}"
		c.Storage.S3 = s3.Config{AccessKey: srv.UserAccessKey, SecretKey: srv.UserSecretKey}
	})
	src := e.workspace("ws", 1, 1000)
	first := e.backup(src, granted, "ws")

	failed := func(owner string) *pb.Operation {
		t.Helper()
		resp, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: owner, Workspace: "ws", Path: src})
		if err != nil {
			t.Fatal(err)
		}
		last := e.done(resp.Operation)
		if last.State != pb.OperationState_OPERATION_STATE_FAILED {
			t.Fatalf("backup for %s: %v", owner, last)
		}
		return last
	}
	for _, owner := range []string{denied, missing} {
		op := failed(owner)
		if codes.Code(op.ErrorCode) != codes.PermissionDenied || !strings.Contains(op.ErrorMessage, "bucket "+owner) {
			t.Errorf("backup for %s: %v %q, want PERMISSION_DENIED naming the bucket", owner, codes.Code(op.ErrorCode), op.ErrorMessage)
		}
		if strings.Contains(op.ErrorMessage, srv.UserSecretKey) {
			t.Errorf("error shows the secret: %s", op.ErrorMessage)
		}
	}
	_, err = e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: denied, Workspace: "ws"})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "bucket "+denied) {
		t.Errorf("ListSnapshots of the denied bucket: %v, want PERMISSION_DENIED naming it", err)
	}
	// S3 tells a missing bucket from a forbidden one only to whoever may
	// see it: to the restricted user a missing bucket is forbidden too.
	_, err = e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: missing, Workspace: "ws"})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "bucket "+missing) {
		t.Errorf("ListSnapshots of a missing bucket as the restricted user: %v, want PERMISSION_DENIED naming it", err)
	}
	// To root it is a missing repository.
	root := newEnv(t, func(c *Config) {
		c.Storage.URL = "s3://unused/backups?region=" + srv.Region + "&endpoint=" + srv.URL
		c.Storage.Placement, c.Storage.BucketTemplate = "bucket-per-owner", "{owner}"
		c.Storage.S3 = s3.Config{AccessKey: srv.RootUser, SecretKey: srv.RootPassword}
	})
	if list, err := root.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: missing, Workspace: "ws"}); err != nil || len(list.Snapshots) != 0 {
		t.Errorf("ListSnapshots of a missing bucket as root: %v, %v; want none, as of any owner without a repository", list, err)
	}
	r, err := root.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: missing, Workspace: "ws", Path: root.root + "/back-missing"})
	if err == nil {
		last := root.done(r.Operation)
		err = status.Error(codes.Code(last.ErrorCode), last.ErrorMessage)
	}
	if st, _ := status.FromError(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), "bucket "+missing) {
		t.Errorf("restore from a missing bucket as root: %v, want NOT_FOUND naming it", err)
	}
	if _, err := mc.StatObject(ctx, missing, "x", minio.StatObjectOptions{}); err == nil || minio.ToErrorResponse(err).Code != "NoSuchBucket" {
		t.Errorf("the missing bucket exists after the calls: %v", err)
	}
	// The granted owner is unaffected.
	r, err = e.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: granted, Workspace: "ws", Path: e.root + "/back"})
	if err != nil {
		t.Fatal(err)
	}
	if last := e.succeeded("restore", r.Operation); last.Result.SnapshotId != first.Result.SnapshotId {
		t.Fatalf("restored %s, want %s", last.Result.SnapshotId, first.Result.SnapshotId)
	}
	sameTree(t, src, e.root+"/back")
}
