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
	addr := startLocalDaemon(t, dir, root, "file://"+filepath.Join(dir, "store"))
	env := []string{"BACKUPD_DAEMON=" + addr}

	r := ok(t, run(t, env, "backup", "--owner", "o1", "--workspace", "w1", "--tag", "via=daemon", "--json", src))
	var st map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st["files"].(float64) != 2 || st["objects_written"].(float64) < 2 {
		t.Fatalf("backup --json through the daemon: %v %s", err, r.stdout)
	}
	id := st["snapshot_id"].(string)
	// Plain output: the id alone, as without a daemon.
	r = ok(t, run(t, nil, "backup", "--daemon", addr, "--owner", "o1", "--workspace", "w1", src))
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

// A damaged snapshot object does not hide the others: both listings,
// direct and through a daemon on the same store, print the readable
// snapshots and a line naming the damaged one and why (in --json an entry
// with an "error" field), then exit 1.
func TestSnapshotsNameUnreadable(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "workspaces")
	src := filepath.Join(root, "ws1")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n"), 0o644)
	store := filepath.Join(dir, "store")
	repoURL := "file://" + store
	var ids []string
	for range 3 {
		r := ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", src))
		ids = append(ids, strings.TrimSpace(r.stdout))
	}
	objs, _ := filepath.Glob(filepath.Join(store, "o1", "snapshots", "w1", "*-"+ids[1]))
	if len(objs) != 1 {
		t.Fatalf("snapshot object of %s: %v", ids[1], objs)
	}
	if err := os.WriteFile(objs[0], []byte(`{"version":1,"owner":"o1"`), 0o644); err != nil {
		t.Fatal(err)
	}

	addr := startLocalDaemon(t, dir, root, repoURL)

	for _, how := range [][]string{{"-r", repoURL}, {"--daemon", addr}} {
		r := run(t, nil, append([]string{"snapshots", "--owner", "o1"}, how...)...)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 1 || len(lines) != 4 {
			t.Fatalf("%s: exit %d\n%s\n%s", how[0], r.code, r.stdout, r.stderr)
		}
		// Oldest first, the damaged one in its place, columns aligned.
		for i, id := range ids {
			l := lines[i+1]
			if !strings.HasPrefix(l, id[:8]+" ") || strings.Contains(l, "UNREADABLE") != (i == 1) {
				t.Errorf("%s: line %d: %q", how[0], i+1, l)
			}
		}
		if col := strings.Index(lines[0], "TAGS"); !strings.Contains(lines[2][col:], "UNREADABLE: ") || !strings.Contains(lines[2], "corrupt object") {
			t.Errorf("%s: the damaged snapshot's line: %q (header %q)", how[0], lines[2], lines[0])
		}
		if !strings.Contains(r.stderr, "3 snapshots\n") || !strings.Contains(r.stderr, "backupctl: 1 of 3 snapshots could not be read") {
			t.Errorf("%s: stderr %q", how[0], r.stderr)
		}

		r = run(t, nil, append([]string{"snapshots", "--owner", "o1", "--json"}, how...)...)
		var snaps []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &snaps); err != nil || r.code != 1 || len(snaps) != 3 {
			t.Fatalf("%s --json: exit %d, %v\n%s\n%s", how[0], r.code, err, r.stdout, r.stderr)
		}
		for i, s := range snaps {
			_, hasErr := s["error"]
			if s["id"] != ids[i] || hasErr != (i == 1) || s["owner"] != "o1" || s["workspace"] != "w1" || s["time"] == nil {
				t.Errorf("%s --json: entry %d: %v", how[0], i, s)
			}
		}
		if e, _ := snaps[1]["error"].(string); !strings.Contains(e, "corrupt object") {
			t.Errorf("%s --json: the damaged snapshot's error %q", how[0], e)
		}
		if _, ok := snaps[1]["stats"]; ok {
			t.Errorf("%s --json: the damaged snapshot has stats: %v", how[0], snaps[1])
		}
	}
	// Without damage, the exit status is 0 again.
	if err := os.Remove(objs[0]); err != nil {
		t.Fatal(err)
	}
	for _, how := range [][]string{{"-r", repoURL}, {"--daemon", addr}} {
		ok(t, run(t, nil, append([]string{"snapshots", "--owner", "o1"}, how...)...))
	}
}

// startLocalDaemon serves a daemon until the test ends, on a unix socket in
// dir, for the workspaces under root, storing at the storage URL store,
// and returns its address.
func startLocalDaemon(t *testing.T, dir, root, store string) string {
	t.Helper()
	sock := filepath.Join(dir, "d.sock")
	cfg := daemon.Config{Listen: "unix://" + sock, WorkspaceRoots: []string{root}, CacheDir: "none"}
	cfg.Storage.URL = store
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
	return "unix://" + sock
}
