package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupCheckpoint: backup --checkpoint, directly and through the
// daemon, writes checkpoints that snapshots marks (table and JSON);
// --keep-checkpoints leaves the newest N and every other snapshot.
func TestBackupCheckpoint(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "workspaces")
	src := filepath.Join(root, "ws1")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n"), 0o644)
	store := filepath.Join(dir, "store")
	repoURL := "file://" + store
	addr := startLocalDaemon(t, dir, root, repoURL)

	backup := strings.TrimSpace(ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", src)).stdout)
	var cps []string
	for i, how := range [][]string{{"-r", repoURL}, {"--daemon", addr}, {"-r", repoURL}} {
		args := append([]string{"backup", "--checkpoint", "--keep-checkpoints", "2", "--owner", "o1", "--workspace", "w1"}, how...)
		r := ok(t, run(t, nil, append(args, src)...))
		if id := strings.TrimSpace(r.stdout); len(id) != 64 {
			t.Fatalf("checkpoint %d printed %q", i, r.stdout)
		} else {
			cps = append(cps, id)
		}
	}
	for _, how := range [][]string{{"-r", repoURL}, {"--daemon", addr}} {
		r := ok(t, run(t, nil, append([]string{"snapshots", "--owner", "o1", "--json"}, how...)...))
		var snaps []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &snaps); err != nil {
			t.Fatal(err)
		}
		// Oldest first: the backup, then the two newest checkpoints.
		want := []struct {
			id string
			cp bool
		}{{backup, false}, {cps[1], true}, {cps[2], true}}
		if len(snaps) != len(want) {
			t.Fatalf("snapshots %v: %s", how, r.stdout)
		}
		for i, w := range want {
			if cp, _ := snaps[i]["checkpoint"].(bool); snaps[i]["id"] != w.id || cp != w.cp {
				t.Fatalf("snapshots %v, entry %d: %s, want %s (checkpoint %v)", how, i, r.stdout, w.id, w.cp)
			}
		}
		r = ok(t, run(t, nil, append([]string{"snapshots", "--owner", "o1"}, how...)...))
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 4 || !strings.Contains(lines[0], "KIND") || !strings.Contains(lines[1], " backup") ||
			!strings.Contains(lines[2], " checkpoint") || !strings.Contains(lines[3], " checkpoint") {
			t.Fatalf("snapshots table %v:\n%s", how, r.stdout)
		}
	}
	if r := run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--checkpoint", "--force", src); r.code != 2 {
		t.Fatalf("--checkpoint --force: exit %d, %s", r.code, r.stderr)
	}
}
