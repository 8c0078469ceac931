package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/backupd/backupd/pkg/daemon"
)

// TestThroughDaemon runs backup, snapshots and restore through a daemon
// serving on a unix socket, with the backupctl binary.
func TestThroughDaemon(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "workspaces")
	src := filepath.Join(root, "ws1")
	os.MkdirAll(filepath.Join(src, "pkg"), 0o755)
	os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n"), 0o644)
	os.WriteFile(filepath.Join(src, "pkg", "data"), []byte(strings.Repeat("backupd ", 100000)), 0o600)
	sock := filepath.Join(dir, "d.sock")
	cfg := daemon.Config{Listen: "unix://" + sock, WorkspaceRoots: []string{root}, CacheDir: "none"}
	cfg.Storage.URL = "file://" + filepath.Join(dir, "store")
	srv, err := daemon.New(context.Background(), cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		srv.Shutdown(ctx)
	})
	env := []string{"BACKUPD_DAEMON=unix://" + sock}

	r := ok(t, run(t, env, "backup", "--owner", "o1", "--workspace", "w1", "--tag", "via=daemon", "--json", src))
	var st map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st["files"].(float64) != 2 || st["objects_written"].(float64) < 2 {
		t.Fatalf("backup --json through the daemon: %v %s", err, r.stdout)
	}
	id := st["snapshot_id"].(string)
	// Plain output: the id alone, as without a daemon.
	r = ok(t, run(t, nil, "backup", "--daemon", "unix://"+sock, "--owner", "o1", "--workspace", "w1", src))
	if got := strings.TrimSpace(r.stdout); len(got) != 64 || got == id {
		t.Fatalf("second backup printed %q", r.stdout)
	}

	r = ok(t, run(t, env, "snapshots", "--owner", "o1", "--json"))
	var snaps []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &snaps); err != nil || len(snaps) != 2 || snaps[0]["id"] != id || snaps[0]["tags"].(map[string]any)["via"] != "daemon" {
		t.Fatalf("snapshots through the daemon (oldest first): %v %s", err, r.stdout)
	}
	r = ok(t, run(t, env, "snapshots", "--owner", "o1"))
	if !strings.Contains(r.stdout, id[:8]) || !strings.Contains(r.stdout, "via=daemon") {
		t.Fatalf("snapshots table: %s", r.stdout)
	}

	dst := filepath.Join(root, "restored")
	r = ok(t, run(t, env, "restore", "--owner", "o1", "--workspace", "w1", "--snapshot", id[:8], dst))
	if !strings.HasPrefix(r.stdout, "restored snapshot "+id[:8]+": 2 files") {
		t.Fatalf("restore output: %s", r.stdout)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "pkg", "data")); len(b) != 800000 {
		t.Fatalf("restored data: %d bytes", len(b))
	}

	// The daemon's errors come through as one line, with the field named.
	r = run(t, env, "restore", "--owner", "o1", "--workspace", "w1", t.TempDir())
	if r.code != 1 || !strings.Contains(r.stderr, "path:") || !strings.Contains(r.stderr, "InvalidArgument") {
		t.Fatalf("restore outside the workspace roots: %+v", r)
	}
	r = run(t, env, "snapshots")
	if r.code != 2 || !strings.Contains(r.stderr, "--daemon needs --owner") {
		t.Fatalf("snapshots without --owner: %+v", r)
	}
}
