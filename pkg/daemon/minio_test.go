package daemon

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/storage/s3"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

func TestMain(m *testing.M) {
	if job := os.Getenv(daemonChildEnv); job != "" {
		os.Exit(daemonChild(job)) // a child of TestUnreadableThroughDaemon
	}
	testservers.Main(m)
}

// A backup to S3 (MinIO, as the restricted user of the seeds' IAM policy)
// cancelled while packs are being uploaded in 5 MiB parts leaves no
// snapshot and no multipart upload behind; the previous snapshot
// restores. Shutdown after its grace period cancels the same way.
func TestCancelledBackupAbortsMultipartUploads(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	logw := &syncBuffer{b: &bytes.Buffer{}}
	logger = func(t *testing.T) *zap.Logger {
		return zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(logw), zap.DebugLevel))
	}
	t.Cleanup(func() { logger = testLogger })
	e := newEnv(t, func(c *Config) {
		c.Storage.URL = "s3://" + bucket + "/backups?region=" + srv.Region + "&endpoint=" + srv.URL
		c.Storage.S3 = s3.Config{AccessKey: srv.UserAccessKey, SecretKey: srv.UserSecretKey, ChunkSize: s3.MinChunkSize}
		c.Limits.UploadBytesPerSecond = 4 << 20 // a 16 MiB pack takes 4 s
	})
	ctx := context.Background()
	src := e.workspace("ws", 20, 1000)
	first := e.backup(src, "hank", "ws")
	e.workspace("ws", 21, 24<<20)

	resp, err := e.client.BackupWorkspace(ctx, &pb.BackupWorkspaceRequest{Owner: "hank", Workspace: "ws", Path: src})
	if err != nil {
		t.Fatal(err)
	}
	mc, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(srv.RootUser, srv.RootPassword, "")})
	if err != nil {
		t.Fatal(err)
	}
	pending := func() int {
		n := 0
		for u := range mc.ListIncompleteUploads(ctx, bucket, "", true) {
			if u.Err != nil {
				t.Fatal(u.Err)
			}
			n++
		}
		return n
	}
	sawUpload := false
	last := lastOf(e.watch(resp.Operation.Id, func(op *pb.Operation) {
		// Cancel once a multipart upload is under way.
		if !sawUpload && op.Progress.Phase == pb.OperationPhase_OPERATION_PHASE_TRANSFERRING && pending() > 0 {
			sawUpload = true
			if _, err := e.client.CancelOperation(ctx, &pb.CancelOperationRequest{OperationId: op.Id}); err != nil {
				t.Error(err)
			}
		}
	}))
	if !sawUpload || last.State != pb.OperationState_OPERATION_STATE_CANCELLED {
		t.Fatalf("saw a multipart upload: %v; backup ended %v %s", sawUpload, last.State, last.ErrorMessage)
	}
	if n := pending(); n != 0 {
		t.Fatalf("%d multipart uploads left after the cancelled backup", n)
	}
	list, err := e.client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "hank", Workspace: "ws"})
	if err != nil || len(list.Snapshots) != 1 || list.Snapshots[0].Id != first.Result.SnapshotId {
		t.Fatalf("snapshots: %v %v", list, err)
	}
	r, err := e.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "hank", Workspace: "ws", Path: e.root + "/back"})
	if err != nil {
		t.Fatal(err)
	}
	if last := lastOf(e.watch(r.Operation.Id, nil)); last.State != pb.OperationState_OPERATION_STATE_SUCCEEDED || last.Result.Files != 3 {
		t.Fatalf("restore of the previous snapshot: %v", last)
	}
	// The logs tell of every operation, and never of the secret key.
	text := logw.String()
	if strings.Count(text, `"msg":"operation ended"`) != 3 || strings.Contains(text, srv.UserSecretKey) {
		t.Fatalf("logs (3 operations, no secret expected):\n%s", text)
	}
	// A restore's line counts the bytes it downloaded as such.
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, `"msg":"operation ended"`) && strings.Contains(line, `"kind":"restore"`) &&
			(!strings.Contains(line, `"downloaded_bytes":`) || strings.Contains(line, `"new_bytes"`)) {
			t.Errorf("restore's log line: %s", line)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
