package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestForget(t *testing.T) {
	repoURL := "file://" + t.TempDir()
	src := t.TempDir()
	for i := range 4 {
		os.WriteFile(filepath.Join(src, "f"), []byte("version "+strconv.Itoa(i)), 0o644)
		args := []string{"backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", src}
		if i == 0 {
			args = append(args[:len(args)-1], "--tag", "pin=yes", src)
		}
		ok(t, run(t, nil, args...))
	}
	ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w2", src))
	count := func() int {
		r := ok(t, run(t, nil, "snapshots", "-r", repoURL, "--owner", "o1", "--json"))
		var list []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
			t.Fatalf("%q: %v", r.stdout, err)
		}
		return len(list)
	}
	if r := run(t, nil, "forget", "-r", repoURL, "--owner", "o1"); r.code != 2 || !strings.Contains(r.stderr, "needs a rule") {
		t.Fatalf("forget without a rule: exit %d, %q", r.code, r.stderr)
	}
	if r := run(t, nil, "forget", "-r", repoURL, "--owner", "o1", "--keep-within", "7y"); r.code != 2 {
		t.Fatalf("bad --keep-within: exit %d, %q", r.code, r.stderr)
	}
	r := ok(t, run(t, nil, "forget", "-r", repoURL, "--owner", "o1", "--keep-last", "2", "--keep-tag", "pin", "--dry-run"))
	if !strings.Contains(r.stdout, "workspace w1: keep 3, would forget 1") || !strings.Contains(r.stdout, "tag pin") || count() != 5 {
		t.Fatalf("dry run: %q, %d snapshots", r.stdout, count())
	}
	r = ok(t, run(t, nil, "forget", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--keep-last", "1", "--json"))
	var res struct {
		DryRun     bool `json:"dry_run"`
		Workspaces []struct {
			Workspace    string
			Keep, Forget []struct{ ID string }
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || len(res.Workspaces) != 1 || len(res.Workspaces[0].Forget) != 3 || count() != 2 {
		t.Fatalf("forget --keep-last 1 --json: %q %v, %d snapshots", r.stdout, err, count())
	}
	// What is kept still restores.
	dst := filepath.Join(t.TempDir(), "r")
	ok(t, run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", dst))
	if b, _ := os.ReadFile(filepath.Join(dst, "f")); string(b) != "version 3" {
		t.Fatalf("restored %q", b)
	}
}

func TestDeleteWorkspace(t *testing.T) {
	repoURL := "file://" + t.TempDir()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	for _, ws := range []string{"w1", "w1", "w2"} {
		ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", ws, src))
	}
	if r := run(t, nil, "delete", "-r", repoURL, "--owner", "o1"); r.code != 2 {
		t.Fatalf("delete without --workspace: exit %d", r.code)
	}
	r := ok(t, run(t, nil, "delete", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--json"))
	var rec struct {
		Deleted int `json:"snapshots_deleted"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rec); err != nil || rec.Deleted != 2 {
		t.Fatalf("receipt %q: %v", r.stdout, err)
	}
	r = ok(t, run(t, nil, "snapshots", "-r", repoURL, "--owner", "o1"))
	if strings.Contains(r.stdout, "w1") || !strings.Contains(r.stdout, "w2") {
		t.Fatalf("after deleting w1: %q", r.stdout)
	}
}
