package sync

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/storage/faults"
	"github.com/backupd/backupd/pkg/storage/retry"
	"github.com/backupd/backupd/pkg/storage/s3"
)

func TestMain(m *testing.M) {
	if c := os.Getenv(soakEnv); c != "" {
		os.Exit(soakHelper(c)) // a helper process of TestSoak
	}
	if job := os.Getenv(unreadableChildEnv); job != "" {
		os.Exit(unreadableChild(job)) // a child of TestPermissionDeniedAsNonRoot
	}
	testservers.Main(m)
}

// The same as TestBackupAndRestoreThroughFaults, against a real MinIO
// through the s3 backend as the restricted user.
func TestBackupAndRestoreThroughFaultsOnMinIO(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	st, err := s3.New(context.Background(), s3.Config{Bucket: bucket, Region: srv.Region, RegionEndpoint: srv.URL,
		AccessKey: srv.UserAccessKey, SecretKey: srv.UserSecretKey, RootDirectory: "faults"})
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	makeTree(t, src)
	t.Cleanup(func() { chmodTreeWritable(src) })
	want := snapshotDir(t, src)
	f := faults.New(st, faults.Options{Rate: 0.2, AfterRate: 0.5, Seed: 2})
	rs := retry.New(f, retry.Options{Attempts: 20, Initial: time.Millisecond, Max: 10 * time.Millisecond})
	doBackup(t, openRepo(t, rs), src)
	dst := t.TempDir()
	t.Cleanup(func() { chmodTreeWritable(dst) })
	if _, err := restoreLatest(t, openRepo(t, rs), dst); err != nil {
		t.Fatal(err)
	}
	compareDirs(t, want, snapshotDir(t, dst))
	if f.Injected() < 3 {
		t.Fatalf("only %d faults injected", f.Injected())
	}
}
