package docs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/azure"
	"github.com/backupd/backupd/pkg/storage/gcs"
	"github.com/backupd/backupd/pkg/storage/minio"
)

// readOnlyBackend is one backend as the read-only test sees it: the
// storage section for a root (with createbucket set), and a way to look
// at what exists.
type readOnlyBackend struct {
	name string
	// section returns the storage section's url and backend keys for
	// root, with the backend's createbucket (createcontainer) set.
	section func(root string) string
	// open opens bucket as it is (never creating it): a missing bucket is
	// an error that is storage.ErrNoBucket or storage.ErrNotFound.
	open func(ctx context.Context, bucket string) (storage.Storage, error)
}

func readOnlyBackends(srv servers) []readOnlyBackend {
	m := srv.minio
	return []readOnlyBackend{
		{"s3", func(root string) string {
			return fmt.Sprintf("url: s3://%s/ws?region=%s&endpoint=%s\ns3:\n  accesskey: %s\n  secretkey: %s\n  createbucket: true\n",
				root, m.Region, m.URL, m.RootUser, m.RootPassword)
		}, minioOpen(srv)}, // s3 and minio are both MinIO, looked at through minio-go
		{"minio", func(root string) string {
			return fmt.Sprintf("url: minio://%s/%s/ws?secure=false\nminio:\n  accesskey: %s\n  secretkey: %s\n  createbucket: true\n",
				m.Endpoint, root, m.RootUser, m.RootPassword)
		}, minioOpen(srv)},
		{"gcs", func(root string) string {
			return fmt.Sprintf("url: gs://%s/ws?endpoint=http://%s\ngcs:\n  project: %s\n  createbucket: true\n", root, srv.gcs.Host, srv.gcs.Project)
		}, func(ctx context.Context, bucket string) (storage.Storage, error) {
			return gcs.New(ctx, gcs.Config{Bucket: bucket, Endpoint: srv.gcs.Endpoint})
		}},
		{"azure", func(root string) string {
			return fmt.Sprintf("url: azblob://%s/ws?endpoint=%s\nazure:\n  accountname: %s\n  accountkey: %s\n  createcontainer: true\n",
				root, srv.azurite.BlobEndpoint, srv.azurite.AccountName, srv.azurite.AccountKey)
		}, func(ctx context.Context, bucket string) (storage.Storage, error) {
			return azure.New(ctx, azure.Config{Container: bucket, Endpoint: srv.azurite.BlobEndpoint, AccountName: srv.azurite.AccountName, AccountKey: srv.azurite.AccountKey})
		}},
	}
}

// minioOpen opens a MinIO bucket as root, never creating it.
func minioOpen(srv servers) func(ctx context.Context, bucket string) (storage.Storage, error) {
	insecure := false
	return func(ctx context.Context, bucket string) (storage.Storage, error) {
		return minio.New(ctx, minio.Config{Endpoint: srv.minio.Endpoint, Bucket: bucket, AccessKey: srv.minio.RootUser,
			SecretKey: srv.minio.RootPassword, Region: srv.minio.Region, Secure: &insecure})
	}
}

func randomName(prefix string) string {
	var b [6]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// readOnly runs every read-only command for owner with the storage
// config file cfg and checks that each says "no backups for owner ..."
// (msg): snapshots and stats on stderr with exit 0, ls, diff, restore and
// check as their error with exit 1; restore creates no target directory.
func readOnly(t *testing.T, dir, cfg, owner, msg string) {
	t.Helper()
	repo := []string{"--storage-config", cfg, "--owner", owner}
	target := filepath.Join(dir, "restored")
	for _, c := range []struct {
		args   []string
		code   int
		stdout string
	}{
		{[]string{"snapshots"}, 0, ""},
		{[]string{"snapshots", "--json"}, 0, "[]\n"},
		{[]string{"stats"}, 0, ""},
		{[]string{"stats", "--json"}, 0, "[]\n"},
		{[]string{"ls", "latest"}, 1, ""},
		{[]string{"diff", "latest", "latest"}, 1, ""},
		{[]string{"restore", "--workspace", "w", target}, 1, ""},
		{[]string{"check"}, 1, ""},
	} {
		args := append([]string{c.args[0]}, append(repo, c.args[1:]...)...)
		r := runIn(t, dir, nil, time.Minute, "backupctl", args...)
		want := msg + "\n"
		if c.code != 0 {
			want = "backupctl: " + want
		}
		if strings.HasSuffix(c.args[len(c.args)-1], "--json") {
			want = ""
		}
		if r.code != c.code || r.stderr != want || r.stdout != c.stdout {
			t.Errorf("backupctl %s: exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr %q",
				strings.Join(args, " "), r.code, r.stdout, r.stderr, c.code, c.stdout, want)
		}
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("restore for an owner with no backups made its target directory: %v", err)
	}
}

// viaDaemon starts backupd on cfg and runs snapshots and restore for
// owner through it: no backups, and (checked by the caller) nothing
// created.
func viaDaemon(t *testing.T, dir, section, owner, msg string) {
	t.Helper()
	roots := filepath.Join(dir, "workspaces")
	os.MkdirAll(roots, 0o755)
	sock := filepath.Join(dir, "backupd.sock")
	cfg := filepath.Join(dir, "backupd.yaml")
	indented := "  " + strings.ReplaceAll(strings.TrimSpace(section), "\n", "\n  ")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("listen: unix://%s\nworkspace_roots: [%s]\ncache_dir: none\nstorage:\n%s\n", sock, roots, indented)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := exec.Command(filepath.Join(binDir, "backupd"), "--config", cfg)
	d.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
	var logs strings.Builder
	d.Stderr = &logs
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.Wait() }()
	t.Cleanup(func() {
		d.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(time.Minute); !fileExists(sock); {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("backupd exited: %v\n%s", err, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("backupd not listening after a minute:\n%s", logs.String())
		}
	}
	daemon := "unix://" + sock
	r := runIn(t, dir, nil, time.Minute, "backupctl", "snapshots", "--daemon", daemon, "--owner", owner)
	if r.code != 0 || r.stdout != "" || r.stderr != "no backups for owner "+owner+"\n" {
		t.Errorf("snapshots through the daemon: %+v", r)
	}
	r = runIn(t, dir, nil, time.Minute, "backupctl", "restore", "--daemon", daemon, "--owner", owner, "--workspace", "w", filepath.Join(roots, "r"))
	// A restore is an operation of the daemon: its error names it.
	if want := "backupctl: " + msg + " (operation op-"; r.code != 1 || !strings.HasPrefix(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("restore through the daemon: exit %d, stderr %q; want exit 1, %q...", r.code, r.stderr, want)
	}
}

// TestReadOnlyCommandsCreateNothing runs snapshots, ls, diff, stats,
// restore and check, with createbucket (createcontainer) set, against
// each backend: a root bucket (directory) that does not exist, one that
// exists and is empty, and under bucket-per-owner an owner without a
// bucket; and the daemon's snapshots and restore for the last two. Each
// says "no backups for owner O", and afterwards no bucket, directory or
// object exists that was not there before.
func TestReadOnlyCommandsCreateNothing(t *testing.T) {
	srv := startServers(t)
	ctx := context.Background()
	backends := readOnlyBackends(srv)

	t.Run("local", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		missing := filepath.Join(dir, "missing")
		cfg := filepath.Join(dir, "storage.yaml")
		os.WriteFile(cfg, []byte("url: file://"+missing+"\n"), 0o600)
		readOnly(t, dir, cfg, "alice", "no backups for owner alice")
		if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a read-only command created the storage root: %v", err)
		}
		empty := filepath.Join(dir, "empty")
		os.Mkdir(empty, 0o700)
		os.WriteFile(cfg, []byte("url: file://"+empty+"\n"), 0o600)
		readOnly(t, dir, cfg, "alice", "no backups for owner alice")
		viaDaemon(t, dir, "url: file://"+empty, "alice", "no backups for owner alice")
		if entries, _ := os.ReadDir(empty); len(entries) != 0 {
			t.Errorf("read-only commands wrote into the storage root: %v", entries)
		}
	})
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			cfg := filepath.Join(dir, "storage.yaml")
			write := func(s string) {
				if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			missing := func(bucket string) {
				t.Helper()
				st, err := b.open(ctx, bucket)
				if err == nil {
					st.Close()
					t.Errorf("bucket %s was created", bucket)
				} else if !errors.Is(err, storage.ErrNoBucket) && !errors.Is(err, storage.ErrNotFound) {
					t.Fatalf("looking for bucket %s: %v", bucket, err)
				}
			}

			// A root bucket that does not exist (createbucket lets a backup
			// create it): no backups, and still no bucket.
			root := randomName("ro-")
			write(b.section(root))
			readOnly(t, dir, cfg, "alice", "no backups for owner alice")
			missing(root)

			// An empty root bucket: no backups, and still empty.
			root = randomName("ro-")
			st := createBucket(t, srv, b.name, root)
			write(b.section(root))
			readOnly(t, dir, cfg, "alice", "no backups for owner alice")
			viaDaemon(t, filepath.Join(dir, "d1"), b.section(root), "alice", "no backups for owner alice")
			if err := st.List(ctx, "", func(oi storage.ObjectInfo) error { t.Errorf("object %s created", oi.Key); return nil }); err != nil {
				t.Fatal(err)
			}

			// Bucket per owner: an owner without a bucket has no backups,
			// and gets none.
			tmpl := randomName("ro-") + "-{owner}"
			bucket := strings.ReplaceAll(tmpl, "{owner}", "alice")
			section := b.section("unused-root") + "placement: bucket-per-owner\nbucket_template: " + tmpl + "\n"
			write(section)
			msg := "no backups for owner alice (no bucket " + bucket + ")"
			readOnly(t, dir, cfg, "alice", msg)
			viaDaemon(t, filepath.Join(dir, "d2"), section, "alice", msg)
			missing(bucket)
			missing("unused-root")
		})
	}
}

// createBucket makes an empty bucket on the backend's server and opens it.
func createBucket(t *testing.T, srv servers, backend, name string) storage.Storage {
	t.Helper()
	ctx := context.Background()
	insecure := false
	var st storage.Storage
	var err error
	switch backend {
	case "s3", "minio":
		st, err = minio.New(ctx, minio.Config{Endpoint: srv.minio.Endpoint, Bucket: name, AccessKey: srv.minio.RootUser,
			SecretKey: srv.minio.RootPassword, Region: srv.minio.Region, Secure: &insecure, CreateBucket: true})
	case "gcs":
		st, err = gcs.New(ctx, gcs.Config{Bucket: name, Endpoint: srv.gcs.Endpoint, Project: srv.gcs.Project, CreateBucket: true})
	case "azure":
		st, err = azure.New(ctx, azure.Config{Container: name, Endpoint: srv.azurite.BlobEndpoint, AccountName: srv.azurite.AccountName,
			AccountKey: srv.azurite.AccountKey, CreateContainer: true})
	}
	if err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
