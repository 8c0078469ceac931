package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/internal/testservers"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/minio"
)

// genTree writes a small workspace: source-like files, a larger file of
// n bytes, an empty dir and a symlink.
func genTree(t *testing.T, dir string, n int, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range 40 {
		p := filepath.Join(dir, "src", fmt.Sprintf("pkg%d", i%5), fmt.Sprintf("f%d.go", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(strings.Repeat(fmt.Sprintf("func f%d() int { return %d }\n", i, r.Int()), 50+i)), 0o644)
	}
	big := make([]byte, n)
	for i := range big {
		big[i] = byte(r.Uint32() % 16) // compresses about 2:1
	}
	os.WriteFile(filepath.Join(dir, "big.bin"), big, 0o600)
	os.MkdirAll(filepath.Join(dir, "empty"), 0o755)
	os.Symlink("src/pkg0/f0.go", filepath.Join(dir, "link"))
}

// digest maps each path to its type and content hash.
func digest(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			m[rel] = "link:" + l
		case d.IsDir():
			m[rel] = "dir"
		default:
			b, _ := os.ReadFile(p)
			m[rel] = fmt.Sprintf("file:%x", sha256.Sum256(b))
		}
		return nil
	})
	return m
}

func sameTree(t *testing.T, a, b string) {
	t.Helper()
	da, db := digest(t, a), digest(t, b)
	if len(da) != len(db) {
		t.Fatalf("%d entries backed up, %d restored", len(da), len(db))
	}
	for k, v := range da {
		if db[k] != v {
			t.Fatalf("%s: %s backed up, %q restored", k, v, db[k])
		}
	}
}

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "storage.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// roundTrip backs up a generated tree twice (the second adds no data) and
// restores it through backupctl with the given location and config.
func roundTrip(t *testing.T, url, config string, env []string) {
	src := t.TempDir()
	genTree(t, src, 12<<20, 1)
	args := []string{"-r", url, "--storage-config", config, "--owner", "o1", "--workspace", "w1"}
	r := ok(t, run(t, env, append(append([]string{"backup"}, args...), "--json", src)...))
	var st struct {
		NewBlobs int64 `json:"new_blobs"`
		Objects  int64 `json:"objects_written"`
	}
	json.Unmarshal([]byte(r.stdout), &st)
	if st.NewBlobs == 0 {
		t.Fatalf("first backup stored nothing: %s", r.stdout)
	}
	r = ok(t, run(t, env, append(append([]string{"backup"}, args...), "--json", src)...))
	json.Unmarshal([]byte(r.stdout), &st)
	if st.NewBlobs != 0 || st.Objects != 1 {
		t.Fatalf("unchanged re-backup stored data: %s", r.stdout)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	ok(t, run(t, env, append(append([]string{"restore"}, args...), dst)...))
	sameTree(t, src, dst)
	r = ok(t, run(t, env, "snapshots", "-r", url, "--storage-config", config, "--owner", "o1", "--json"))
	var snaps []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &snaps); err != nil || len(snaps) != 2 {
		t.Fatalf("snapshots: %v %s", err, r.stdout)
	}
}

func TestS3AsRestrictedUser(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	cfg := writeConfig(t, fmt.Sprintf("storage:\n  s3:\n    accesskey: %s\n    secretkey: %s\n", srv.UserAccessKey, srv.UserSecretKey))
	url := fmt.Sprintf("s3://%s/backups?region=%s&endpoint=%s", bucket, srv.Region, srv.URL)
	roundTrip(t, url, cfg, nil)
	// The secret never shows, even in an error.
	r := run(t, nil, "restore", "-r", url, "--storage-config", cfg, "--owner", "nobody", "--workspace", "w", t.TempDir())
	if r.code == 0 || strings.Contains(r.stderr, srv.UserSecretKey) {
		t.Fatalf("restore of a missing owner: %+v", r)
	}
}

func TestMinIO(t *testing.T) {
	srv := testservers.MinIO(t)
	bucket := srv.NewBucket(t)
	cfg := writeConfig(t, fmt.Sprintf("minio:\n  accesskey: %s\n  secretkey: %s\n", srv.UserAccessKey, srv.UserSecretKey))
	roundTrip(t, fmt.Sprintf("minio://%s/%s/ws?secure=false", srv.Endpoint, bucket), cfg, nil)
}

func TestGCS(t *testing.T) {
	srv := testservers.FakeGCS(t)
	bucket := srv.NewBucket(t)
	cfg := writeConfig(t, fmt.Sprintf("gcs:\n  endpoint: %s\n", srv.Endpoint))
	roundTrip(t, fmt.Sprintf("gs://%s/backups", bucket), cfg, nil)
}

func TestAzure(t *testing.T) {
	srv := testservers.Azurite(t)
	container := srv.NewContainer(t)
	cfg := writeConfig(t, fmt.Sprintf("azure:\n  accountname: %s\n  accountkey: %s\n", srv.AccountName, srv.AccountKey))
	roundTrip(t, fmt.Sprintf("azblob://%s/backups?endpoint=%s", container, srv.BlobEndpoint), cfg, nil)
}

func TestStorageConfigErrorsNameTheParameter(t *testing.T) {
	cases := map[string]struct{ url, yaml, want string }{
		"unknown key":      {"file:///x", "storage:\n  bogus: 1\n", "bogus"},
		"chunksize":        {"s3://bucket1/p?region=us-east-1", "s3:\n  chunksize: 1000\n", "chunksize"},
		"placement":        {"file:///x", "placement: everywhere\n", "placement"},
		"secret in url":    {"s3://b/p?region=us-east-1&secretkey=abc", "{}\n", "secretkey"},
		"userinfo":         {"s3://user:pass@b/p", "{}\n", "credentials do not belong in the URL"},
		"unknown scheme":   {"ftp://host/x", "{}\n", "ftp"},
		"bucket template":  {"s3://bucket1/p?region=us-east-1", "placement: bucket-per-owner\nbucket_template: fixed\n", "bucket_template"},
		"bucket per owner": {"file:///x", "placement: bucket-per-owner\nbucket_template: b-{owner}\n", "object store"},
	}
	for name, c := range cases {
		r := run(t, nil, "snapshots", "-r", c.url, "--storage-config", writeConfig(t, c.yaml), "--owner", "o")
		if r.code == 0 || !strings.Contains(r.stderr, c.want) || strings.Contains(r.stderr, "pass") && name == "userinfo" {
			t.Errorf("%s: exit %d, stderr %q; want an error naming %q", name, r.code, r.stderr, c.want)
		}
	}
}

// With MinIO stopped in the middle of a backup, the backup fails with a
// clear error, no snapshot of it appears, and the previous snapshot still
// restores.
func TestMinIOStoppedMidBackup(t *testing.T) {
	srv := testservers.StartMinIO(t)
	bucket := srv.NewBucket(t)
	cfg := writeConfig(t, fmt.Sprintf("s3:\n  accesskey: %s\n  secretkey: %s\nretry:\n  attempts: 3\n  initial: 50ms\n  max: 200ms\n", srv.UserAccessKey, srv.UserSecretKey))
	url := fmt.Sprintf("s3://%s/b?region=%s&endpoint=%s", bucket, srv.Region, srv.URL)
	args := []string{"-r", url, "--storage-config", cfg, "--owner", "o1", "--workspace", "w1"}

	first := t.TempDir()
	genTree(t, first, 1<<20, 2)
	ok(t, run(t, nil, append(append([]string{"backup"}, args...), first)...))

	packsBefore := countPacks(t, srv, bucket)
	second := t.TempDir()
	genTree(t, second, 200<<20, 3)
	cmd := exec.Command(binary, append(append([]string{"backup"}, args...), "--connections", "1", second)...)
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+childCache)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Stop the server once the second backup has stored a pack of its own:
	// a state, polled, not a guess at timing.
	waitForPacks(t, srv, bucket, packsBefore+1)
	srv.Stop()
	err := cmd.Wait()
	if err == nil {
		t.Fatal("backup succeeded with the storage down")
	}
	msg := stderr.String()
	if !strings.Contains(msg, "backup failed, no snapshot written") || strings.Count(strings.TrimSpace(msg), "\n") > 2 {
		t.Fatalf("unclear error: %q", msg)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	r := ok(t, run(t, nil, "snapshots", "-r", url, "--storage-config", cfg, "--owner", "o1", "--json"))
	var snaps []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &snaps); err != nil || len(snaps) != 1 {
		t.Fatalf("after the failed backup: %v %s", err, r.stdout)
	}
	dst := filepath.Join(t.TempDir(), "r")
	ok(t, run(t, nil, append(append([]string{"restore"}, args...), dst)...))
	sameTree(t, first, dst)
}

func countPacks(t *testing.T, srv *testservers.MinIOServer, bucket string) int {
	t.Helper()
	insecure := false
	st, err := minio.New(context.Background(), minio.Config{Endpoint: srv.Endpoint, Bucket: bucket, AccessKey: srv.RootUser, SecretKey: srv.RootPassword, Region: srv.Region, Secure: &insecure})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n := 0
	if err := st.List(context.Background(), "b/o1/data/", func(storage.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitForPacks(t *testing.T, srv *testservers.MinIOServer, bucket string, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for countPacks(t, srv, bucket) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the backup stored no pack in 2 minutes")
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// bucket-per-owner: the owner's bucket is created on first backup when the
// credentials allow it, and never with the restricted user's policy.
func TestBucketPerOwnerOnMinIO(t *testing.T) {
	srv := testservers.MinIO(t)
	src := t.TempDir()
	genTree(t, src, 1<<20, 4)
	url := fmt.Sprintf("s3://unused-root/ws?region=%s&endpoint=%s", srv.Region, srv.URL)
	tmpl := fmt.Sprintf("bpo-%d-{owner}", time.Now().UnixNano())
	root := writeConfig(t, fmt.Sprintf("placement: bucket-per-owner\nbucket_template: %q\ns3:\n  accesskey: %s\n  secretkey: %s\n", tmpl, srv.RootUser, srv.RootPassword))
	args := []string{"-r", url, "--storage-config", root, "--owner", "Alice", "--workspace", "w1"}
	ok(t, run(t, nil, append(append([]string{"backup"}, args...), src)...))
	dst := filepath.Join(t.TempDir(), "r")
	ok(t, run(t, nil, append(append([]string{"restore"}, args...), dst)...))
	sameTree(t, src, dst)
	// Another owner's restore does not create a bucket and says why.
	r := run(t, nil, "restore", "-r", url, "--storage-config", root, "--owner", "bob", "--workspace", "w1", t.TempDir())
	if r.code != 1 || r.stderr != "backupctl: no backups for owner bob (no bucket "+strings.Replace(tmpl, "{owner}", "bob", 1)+")\n" {
		t.Fatalf("restore for an owner without a bucket: %+v", r)
	}
	restricted := writeConfig(t, fmt.Sprintf("placement: bucket-per-owner\nbucket_template: %q\ns3:\n  accesskey: %s\n  secretkey: %s\n", tmpl, srv.UserAccessKey, srv.UserSecretKey))
	r = run(t, nil, "backup", "-r", url, "--storage-config", restricted, "--owner", "carol", "--workspace", "w1", src)
	if r.code != 1 || strings.Contains(r.stderr, srv.UserSecretKey) {
		t.Fatalf("bucket creation with the restricted user: %+v", r)
	}
	t.Logf("restricted user: %s", strings.TrimSpace(r.stderr))
}
