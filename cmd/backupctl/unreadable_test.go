package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// nobody is the uid and gid backupctl runs as to meet a real EACCES.
const nobody = 65534

// A backup run as uid 65534 of a directory holding a file of mode 000 and
// a directory of mode 000: both are left out, one warning line each and a
// count on stderr and in --json; snapshots --json lists them. --strict
// fails and writes no snapshot; the earlier snapshot restores.
func TestBackupLeavesOutUnreadable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run backupctl as another user")
	}
	base, err := os.MkdirTemp("", "backupctl-unreadable-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(base, "src", "locked"), 0o755); os.RemoveAll(base) })
	src, store := filepath.Join(base, "src"), filepath.Join(base, "store")
	// The workspace is root's; the repository and the cache are nobody's.
	for _, d := range []string{filepath.Join(src, "locked"), store, filepath.Join(base, "cache")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{store, filepath.Join(base, "cache")} {
		if err := os.Chown(d, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(base, 0o755)
	os.WriteFile(filepath.Join(src, "keep"), []byte("kept"), 0o644)
	os.WriteFile(filepath.Join(src, "secret"), []byte("secret"), 0o000)
	os.WriteFile(filepath.Join(src, "locked", "inside"), []byte("inside"), 0o644)
	os.Chmod(filepath.Join(src, "locked"), 0o000)
	bin := filepath.Join(base, "backupctl")
	in, err := os.Open(binary)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err == nil {
		_, err = io.Copy(out, in)
		out.Close()
	}
	in.Close()
	if err != nil {
		t.Fatal(err)
	}
	asNobody := func(args ...string) result {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+filepath.Join(base, "cache"), "HOME="+base)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return result{stdout: o.String(), stderr: e.String(), code: code}
	}
	repoURL := "file://" + store

	r := ok(t, asNobody("backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--json", src))
	var st map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("backup --json output %q: %v", r.stdout, err)
	}
	if st["unreadable"] != 2.0 || st["files"] != 1.0 || st["skipped"] != 0.0 {
		t.Fatalf("backup --json: %s\nstderr: %s", r.stdout, r.stderr)
	}
	for _, want := range []string{
		"warning: " + filepath.Join(src, "secret") + ": skipped, cannot be read: open: permission denied\n",
		"warning: " + filepath.Join(src, "locked") + ": skipped, cannot be read: open: permission denied\n",
		"warning: unreadable, left out of snapshot ",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	id := st["snapshot_id"].(string)

	r = asNobody("backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--strict", src)
	if r.code == 0 || !strings.Contains(r.stderr, "backup failed, no snapshot written") || !strings.Contains(r.stderr, "permission denied") {
		t.Fatalf("backup --strict: %+v", r)
	}

	r = ok(t, run(t, nil, "snapshots", "-r", repoURL, "--json"))
	var snaps []struct {
		ID         string `json:"id"`
		Unreadable []struct{ Path, Reason string }
		Stats      struct{ Unreadable int64 }
	}
	if err := json.Unmarshal([]byte(r.stdout), &snaps); err != nil || len(snaps) != 1 || snaps[0].ID != id {
		t.Fatalf("snapshots --json (one snapshot, the strict backup wrote none): %v %s", err, r.stdout)
	}
	if u := snaps[0].Unreadable; len(u) != 2 || u[0].Path != "locked" || u[1].Path != "secret" || u[1].Reason != "open: permission denied" || snaps[0].Stats.Unreadable != 2 {
		t.Fatalf("snapshots --json: %s", r.stdout)
	}
	dst := filepath.Join(t.TempDir(), "back")
	ok(t, run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--snapshot", id, dst))
	entries, _ := os.ReadDir(dst)
	if len(entries) != 1 || entries[0].Name() != "keep" {
		t.Fatalf("restored %v", entries)
	}
}
