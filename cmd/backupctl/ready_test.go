package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readyWorkspace makes a workspace with one large old file (late in a
// ready restore: more recently modified files than a snapshot lists) and
// many small new ones.
func readyWorkspace(t *testing.T, src string) {
	t.Helper()
	os.MkdirAll(filepath.Join(src, "gen"), 0o755)
	big := filepath.Join(src, "big.bin")
	os.WriteFile(big, bytes.Repeat([]byte("0123456789abcdef"), 1<<17), 0o644) // 2 MiB
	old := time.Unix(1e9, 0)
	if err := os.Chtimes(big, old, old); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		os.WriteFile(filepath.Join(src, "gen", fmt.Sprintf("f%d.go", i)), []byte("package gen\n"), 0o644)
	}
}

// readyLines checks a ready restore's output: the READY line (with the
// late file's 2 MiB to come, when known), then the usual one.
func readyLines(t *testing.T, stdout string, bytesKnown bool) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "READY after ") || !strings.HasPrefix(lines[1], "restored snapshot ") ||
		(bytesKnown && !strings.Contains(lines[0], "2.0 MiB still to come")) {
		t.Fatalf("ready restore output:\n%s", stdout)
	}
}

func TestRestoreReadyBeforeComplete(t *testing.T) {
	repoURL := "file://" + t.TempDir()
	src := t.TempDir()
	readyWorkspace(t, src)
	ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", src))
	dst := filepath.Join(t.TempDir(), "ws")
	r := ok(t, run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--ready-before-complete", "--priority", "*.go", dst))
	readyLines(t, r.stdout, true)
	if b, err := os.ReadFile(filepath.Join(dst, "big.bin")); err != nil || len(b) != 2<<20 {
		t.Fatalf("big.bin: %d bytes, %v", len(b), err)
	}
	// --json: one object, READY in it.
	dst2 := filepath.Join(t.TempDir(), "ws")
	r = ok(t, run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--ready-before-complete", "--json", dst2))
	var out map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out["ready_bytes_left"] != float64(2<<20) || out["conflicts"] != float64(0) {
		t.Fatalf("restore --ready-before-complete --json: %v %s", err, r.stdout)
	}
	// --late: the whole gen directory comes after READY.
	dst3 := filepath.Join(t.TempDir(), "ws")
	r = ok(t, run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--ready-before-complete", "--late", "gen/", "--json", dst3))
	out = nil
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out["ready_bytes_left"] != float64(2<<20+300*12) || out["conflicts"] != float64(0) {
		t.Fatalf("restore --ready-before-complete --late gen/ --json: %v %s", err, r.stdout)
	}
	if ents, err := os.ReadDir(filepath.Join(dst3, "gen")); err != nil || len(ents) != 300 {
		t.Fatalf("gen after the restore: %d entries, %v", len(ents), err)
	}
	r = run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--late", "gen/", t.TempDir())
	if r.code != 2 || !strings.Contains(r.stderr, "need --ready-before-complete") {
		t.Fatalf("--late alone: %+v", r)
	}
	r = run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--ready-before-complete", "--overwrite", dst)
	if r.code != 2 || !strings.Contains(r.stderr, "--overwrite") {
		t.Fatalf("--ready-before-complete --overwrite: %+v", r)
	}
	r = run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--priority", "*.go", t.TempDir())
	if r.code != 2 || !strings.Contains(r.stderr, "need --ready-before-complete") {
		t.Fatalf("--priority alone: %+v", r)
	}
	r = ok(t, run(t, nil, "restore", "--help"))
	for _, want := range []string{"--ready-before-complete", "--priority", "--ready-max-file-size", "--late", "READY"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("restore --help lacks %q", want)
		}
	}
}

func TestRestoreReadyBeforeCompleteThroughDaemon(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "workspaces")
	src := filepath.Join(root, "ws1")
	readyWorkspace(t, src)
	addr := startLocalDaemon(t, dir, root, "file://"+filepath.Join(dir, "store"))
	env := []string{"BACKUPD_DAEMON=" + addr}
	ok(t, run(t, env, "backup", "--owner", "o1", "--workspace", "w1", src))
	dst := filepath.Join(root, "restored")
	r := ok(t, run(t, env, "restore", "--owner", "o1", "--workspace", "w1", "--ready-before-complete", "--priority", "gen/", dst))
	// The bytes to come are printed only if the watch saw READY while it
	// lasted; the READY line is there either way.
	readyLines(t, r.stdout, false)
	if b, err := os.ReadFile(filepath.Join(dst, "big.bin")); err != nil || len(b) != 2<<20 {
		t.Fatalf("big.bin: %d bytes, %v", len(b), err)
	}
}
