package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/minio"
)

// rootList lists bucket under prefix as MinIO's root user: key to size.
func rootList(t *testing.T, srv *testservers.MinIOServer, bucket, prefix string) map[string]int64 {
	t.Helper()
	insecure := false
	st, err := minio.New(context.Background(), minio.Config{Endpoint: srv.Endpoint, Bucket: bucket, AccessKey: srv.RootUser, SecretKey: srv.RootPassword, Region: srv.Region, Secure: &insecure})
	if err != nil {
		t.Fatalf("open bucket %s as root: %v", bucket, err)
	}
	defer st.Close()
	m := map[string]int64{}
	if err := st.List(context.Background(), prefix, func(oi storage.ObjectInfo) error { m[oi.Key] = oi.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	return m
}

type purgeJSON struct {
	Owner        string  `json:"owner"`
	Objects      int     `json:"objects_deleted"`
	Bytes        int64   `json:"bytes_deleted"`
	DurationMS   *int64  `json:"duration_ms"`
	Left         int     `json:"objects_left"`
	Cache        string  `json:"cache_removed"`
	Bucket       *string `json:"bucket"`
	BucketExists bool    `json:"bucket_exists"`
	BucketEmpty  bool    `json:"bucket_empty"`
}

// TestPurgeOnMinIO: purge, as the restricted user (the minimal policy),
// leaves no object under the owner's prefix, as MinIO's root user sees
// it, and touches no object of another owner, not even of one whose id
// the purged one's is a prefix of.
func TestPurgeOnMinIO(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	cfg := writeConfig(t, fmt.Sprintf("storage:\n  s3:\n    accesskey: %s\n    secretkey: %s\n", srv.UserAccessKey, srv.UserSecretKey))
	url := fmt.Sprintf("s3://%s/ws?region=%s&endpoint=%s", bucket, srv.Region, srv.URL)
	src := t.TempDir()
	genTree(t, src, 1<<20, 21)
	for _, b := range []struct{ owner, ws string }{{"o1", "w1"}, {"o1", "w2"}, {"o1", "w1"}, {"o10", "w1"}, {"o2", "w1"}} {
		ok(t, run(t, nil, "backup", "-r", url, "--storage-config", cfg, "--owner", b.owner, "--workspace", b.ws, src))
	}
	ok(t, run(t, nil, "forget", "-r", url, "--storage-config", cfg, "--owner", "o1", "--keep-last", "1"))
	ok(t, run(t, nil, "prune", "-r", url, "--storage-config", cfg, "--owner", "o1")) // prune/ objects too
	o1 := rootList(t, srv, bucket, "ws/o1/")
	others := rootList(t, srv, bucket, "ws/")
	for k := range o1 {
		delete(others, k)
	}
	var o1Bytes int64
	for _, n := range o1 {
		o1Bytes += n
	}
	if len(o1) < 6 || len(others) < 6 {
		t.Fatalf("%d objects of o1, %d of others", len(o1), len(others))
	}
	if _, ok := o1["ws/o1/prune/state"]; !ok {
		t.Fatalf("no prune state among o1's objects: %v", o1)
	}
	var conf struct{ ID string }
	b := rootGet(t, srv, bucket, "ws/o1/config")
	if err := json.Unmarshal(b, &conf); err != nil || conf.ID == "" {
		t.Fatalf("o1's config %q: %v", b, err)
	}
	cacheDir := filepath.Join(childCache, "backupd", "cache", conf.ID)
	if _, err := os.Stat(cacheDir); err != nil {
		t.Fatalf("o1's node-local cache is not there before the purge: %v", err)
	}

	// Without --yes: a usage error saying what would go; nothing goes.
	r := run(t, nil, "purge", "-r", url, "--storage-config", cfg, "--owner", "o1")
	if r.code != 2 || !strings.Contains(r.stderr, "every object under o1/ in s3://"+bucket+"/ws") || !strings.Contains(r.stderr, "--yes") || strings.Contains(r.stderr, srv.UserSecretKey) {
		t.Fatalf("purge without --yes: exit %d, %q", r.code, r.stderr)
	}
	sameFiles(t, "purge without --yes", o1, rootList(t, srv, bucket, "ws/o1/"))

	r = ok(t, run(t, nil, "purge", "-r", url, "--storage-config", cfg, "--owner", "o1", "--yes", "--json"))
	var rec purgeJSON
	if err := json.Unmarshal([]byte(r.stdout), &rec); err != nil {
		t.Fatalf("purge --json %q: %v", r.stdout, err)
	}
	if rec.Owner != "o1" || rec.Objects != len(o1) || rec.Bytes != o1Bytes || rec.Left != 0 || rec.DurationMS == nil || rec.Cache != cacheDir || rec.Bucket != nil {
		t.Fatalf("purge receipt %+v; o1 had %d objects of %d bytes", rec, len(o1), o1Bytes)
	}
	if left := rootList(t, srv, bucket, "ws/o1/"); len(left) != 0 {
		t.Fatalf("after purge, o1 still has %v", left)
	}
	rest := rootList(t, srv, bucket, "ws/")
	sameFiles(t, "other owners' objects after purging o1", others, rest)
	if _, err := os.Stat(cacheDir); !os.IsNotExist(err) {
		t.Fatalf("o1's node-local cache is still there: %v", err)
	}

	// The others still restore; o1 is gone.
	for _, owner := range []string{"o10", "o2"} {
		dst := filepath.Join(t.TempDir(), "r")
		ok(t, run(t, nil, "restore", "-r", url, "--storage-config", cfg, "--owner", owner, "--workspace", "w1", dst))
		sameTree(t, src, dst)
	}
	if r := run(t, nil, "snapshots", "-r", url, "--storage-config", cfg, "--owner", "o1"); r.code != 0 || r.stderr != "no backups for owner o1\n" {
		t.Fatalf("snapshots of the purged owner: exit %d, %q", r.code, r.stderr)
	}
	// Again: nothing to do, not an error.
	r = ok(t, run(t, nil, "purge", "-r", url, "--storage-config", cfg, "--owner", "o1", "--yes"))
	if !strings.Contains(r.stdout, "deleted 0 objects") {
		t.Fatalf("second purge: %q", r.stdout)
	}
}

func rootGet(t *testing.T, srv *testservers.MinIOServer, bucket, key string) []byte {
	t.Helper()
	insecure := false
	st, err := minio.New(context.Background(), minio.Config{Endpoint: srv.Endpoint, Bucket: bucket, AccessKey: srv.RootUser, SecretKey: srv.RootPassword, Region: srv.Region, Secure: &insecure})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, err := storage.ReadAll(context.Background(), st, key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPurgeBucketPerOwner: under bucket-per-owner the owner's bucket is
// left empty, and says so; another owner's bucket is untouched.
func TestPurgeBucketPerOwner(t *testing.T) {
	srv := testservers.MinIO(t)
	src := t.TempDir()
	genTree(t, src, 1<<20, 22)
	url := fmt.Sprintf("s3://unused-root/ws?region=%s&endpoint=%s", srv.Region, srv.URL)
	tmpl := fmt.Sprintf("purge-%d-{owner}", time.Now().UnixNano())
	cfg := writeConfig(t, fmt.Sprintf("placement: bucket-per-owner\nbucket_template: %q\ns3:\n  accesskey: %s\n  secretkey: %s\n", tmpl, srv.RootUser, srv.RootPassword))
	for _, owner := range []string{"alice", "bob"} {
		ok(t, run(t, nil, "backup", "-r", url, "--storage-config", cfg, "--owner", owner, "--workspace", "w1", src))
	}
	aliceBucket := strings.ReplaceAll(tmpl, "{owner}", "alice")
	bobBucket := strings.ReplaceAll(tmpl, "{owner}", "bob")
	alice, bob := rootList(t, srv, aliceBucket, ""), rootList(t, srv, bobBucket, "")
	if len(alice) == 0 || len(bob) == 0 {
		t.Fatalf("%d objects in alice's bucket, %d in bob's", len(alice), len(bob))
	}

	r := run(t, nil, "purge", "-r", url, "--storage-config", cfg, "--owner", "alice")
	if r.code != 2 || !strings.Contains(r.stderr, "bucket "+aliceBucket) {
		t.Fatalf("purge without --yes: exit %d, %q", r.code, r.stderr)
	}
	r = ok(t, run(t, nil, "purge", "-r", url, "--storage-config", cfg, "--owner", "alice", "--yes"))
	if !strings.Contains(r.stdout, fmt.Sprintf("deleted %d objects", len(alice))) ||
		!strings.Contains(r.stdout, "bucket "+aliceBucket+" is now empty") || !strings.Contains(r.stdout, "operator") {
		t.Fatalf("purge under bucket-per-owner: %q", r.stdout)
	}
	// rootList opens the bucket without creating it: it is still there, empty.
	if left := rootList(t, srv, aliceBucket, ""); len(left) != 0 {
		t.Fatalf("alice's bucket after purge: %v", left)
	}
	sameFiles(t, "bob's bucket after purging alice", bob, rootList(t, srv, bobBucket, ""))

	r = ok(t, run(t, nil, "purge", "-r", url, "--storage-config", cfg, "--owner", "alice", "--yes", "--json"))
	var rec purgeJSON
	if err := json.Unmarshal([]byte(r.stdout), &rec); err != nil || rec.Objects != 0 || rec.Bucket == nil || *rec.Bucket != aliceBucket || !rec.BucketExists || !rec.BucketEmpty {
		t.Fatalf("second purge --json: %q %v", r.stdout, err)
	}
	// An owner without a bucket: nothing to purge, and no bucket made.
	r = ok(t, run(t, nil, "purge", "-r", url, "--storage-config", cfg, "--owner", "carol", "--yes", "--json"))
	rec = purgeJSON{}
	if err := json.Unmarshal([]byte(r.stdout), &rec); err != nil || rec.Objects != 0 || rec.Bucket == nil || rec.BucketExists || rec.BucketEmpty {
		t.Fatalf("purge of an owner without a bucket: %q %v", r.stdout, err)
	}
	insecure := false
	if _, err := minio.New(context.Background(), minio.Config{Endpoint: srv.Endpoint, Bucket: strings.ReplaceAll(tmpl, "{owner}", "carol"),
		AccessKey: srv.RootUser, SecretKey: srv.RootPassword, Region: srv.Region, Secure: &insecure}); err == nil {
		t.Fatal("purge created carol's bucket")
	}
}

// TestPurgeLocal: on a local root no file of the owner is left; usage
// errors exit 2, an invalid owner 1.
func TestPurgeLocal(t *testing.T) {
	store := t.TempDir()
	repoURL := "file://" + store
	src := t.TempDir()
	genTree(t, src, 1<<20, 23)
	for _, owner := range []string{"o1", "o2"} {
		ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", owner, "--workspace", "w1", src))
	}
	o2 := storedFiles(t, filepath.Join(store, "o2"))
	if r := run(t, nil, "purge", "-r", repoURL, "--yes"); r.code != 2 {
		t.Fatalf("purge without --owner: exit %d, %q", r.code, r.stderr)
	}
	if r := run(t, nil, "purge", "-r", repoURL, "--owner", "../o2", "--yes"); r.code != 1 || !strings.Contains(r.stderr, "invalid owner") {
		t.Fatalf("purge of an invalid owner: exit %d, %q", r.code, r.stderr)
	}
	r := ok(t, run(t, nil, "purge", "-r", repoURL, "--owner", "o1", "--yes"))
	if !strings.Contains(r.stdout, "purged owner o1") || !strings.Contains(r.stdout, "removed the node-local cache") {
		t.Fatalf("purge: %q", r.stdout)
	}
	if left := storedFiles(t, filepath.Join(store, "o1")); len(left) != 0 {
		t.Fatalf("files left of o1: %v", left)
	}
	sameFiles(t, "o2 after purging o1", o2, storedFiles(t, filepath.Join(store, "o2")))
	r = ok(t, run(t, nil, "purge", "--help"))
	if !strings.Contains(r.stdout, "--yes") || !strings.Contains(r.stdout, "bucket-per-owner") {
		t.Fatalf("purge --help: %s", r.stdout)
	}
}
