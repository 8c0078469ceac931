package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckAndRepairIndex: a damaged index object is a problem check names
// (exit 1) and a warning for every other command, which keep working;
// repair index makes check clean again.
func TestCheckAndRepairIndex(t *testing.T) {
	store := t.TempDir()
	repoURL := "file://" + store
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "a"), []byte("first"), 0o644)
	ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", src))
	os.WriteFile(filepath.Join(src, "b"), []byte("second, new content"), 0o644)
	ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", src))
	r := ok(t, run(t, nil, "check", "-r", repoURL, "--owner", "o1", "--read-data"))
	if !strings.Contains(r.stdout, "no problems found (2 snapshots") || !strings.Contains(r.stdout, "packs read") {
		t.Fatalf("check of a healthy repository: %q", r.stdout)
	}

	idx, _ := filepath.Glob(filepath.Join(store, "o1", "index", "*"))
	if len(idx) != 2 {
		t.Fatalf("%d index objects", len(idx))
	}
	os.WriteFile(idx[0], []byte("damaged"), 0o600)
	r = run(t, nil, "check", "-r", repoURL, "--owner", "o1", "--json")
	var res struct {
		OK       bool
		Problems []string
		Warnings []string
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || r.code != 1 || res.OK || len(res.Problems) != 1 ||
		!strings.Contains(res.Problems[0], filepath.Base(idx[0])) || len(res.Warnings) == 0 {
		t.Fatalf("check of a damaged index object: exit %d, %q, %v", r.code, r.stdout, err)
	}
	if !strings.Contains(r.stderr, filepath.Base(idx[0])) || !strings.Contains(r.stderr, "repair index") {
		t.Fatalf("no warning on stderr: %q", r.stderr)
	}
	dst := filepath.Join(t.TempDir(), "r")
	r = ok(t, run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", dst))
	if b, _ := os.ReadFile(filepath.Join(dst, "b")); string(b) != "second, new content" {
		t.Fatalf("restore with a damaged index object: %q", b)
	}

	r = ok(t, run(t, nil, "repair", "index", "-r", repoURL, "--owner", "o1"))
	if !strings.Contains(r.stdout, "indexed") {
		t.Fatalf("repair: %q", r.stdout)
	}
	r = ok(t, run(t, nil, "check", "-r", repoURL, "--owner", "o1", "--read-data"))
	if !strings.Contains(r.stdout, "no problems found") || strings.Contains(r.stdout, "warning") || r.stderr != "" {
		t.Fatalf("check after repair: %q %q", r.stdout, r.stderr)
	}
	ok(t, run(t, nil, "repair", "index", "-r", repoURL, "--owner", "o1", "--read-all-packs"))
	ok(t, run(t, nil, "check", "-r", repoURL, "--owner", "o1", "--read-data"))
}

// TestCheckJSON: a healthy repository gives exit 0 and its counts; with
// --read-data every pack is read.
func TestCheckJSON(t *testing.T) {
	repoURL := "file://" + t.TempDir()
	src := t.TempDir()
	genTree(t, src, 1<<20, 31)
	ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", src))
	var res struct {
		OK        bool     `json:"ok"`
		Problems  []string `json:"problems"`
		Warnings  []string `json:"warnings"`
		Snapshots int      `json:"snapshots"`
		Trees     int      `json:"trees"`
		Blobs     int      `json:"blobs"`
		PacksRead int      `json:"packs_read"`
	}
	for _, readData := range []bool{false, true} {
		args := []string{"check", "-r", repoURL, "--owner", "o1", "--json"}
		if readData {
			args = append(args, "--read-data")
		}
		r := ok(t, run(t, nil, args...))
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || !res.OK || res.Problems == nil || len(res.Problems) != 0 ||
			res.Warnings == nil || res.Snapshots != 1 || res.Trees < 7 || res.Blobs < 40 || (res.PacksRead > 0) != readData {
			t.Fatalf("check --json (read data %v): %q %v", readData, r.stdout, err)
		}
	}
}
