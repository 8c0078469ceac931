package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/backupd/backupd/internal/testservers"
)

var binary, childCache string

func TestMain(m *testing.M) {
	if out := os.Getenv(rssWrapperEnv); out != "" {
		os.Exit(rssWrapper(out, os.Args[1:]))
	}
	dir, err := os.MkdirTemp("", "backupctl-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "backupctl")
	// The binaries under test keep their node-local cache here, not in the
	// user's cache directory (where the test servers live).
	childCache = filepath.Join(dir, "cache")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		panic("build backupctl: " + err.Error() + "\n" + string(out))
	}
	code := testservers.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
	maxRSS         int64 // the child's peak resident set, in KiB
}

// run runs backupctl with args, through the test binary as rssWrapper to
// measure its peak RSS.
func run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	rssFile := filepath.Join(t.TempDir(), "maxrss")
	cmd := exec.Command(os.Args[0], append([]string{binary}, args...)...)
	cmd.Env = append(append(os.Environ(), "XDG_CACHE_HOME="+childCache, rssWrapperEnv+"="+rssFile), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(rssFile)
	if err != nil {
		t.Fatalf("backupctl %v: no peak RSS: %v\nstderr: %s", args, err, errb.String())
	}
	rss, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code, rss}
}

// rssWrapperEnv names the file where the test binary, run as rssWrapper,
// writes its child's peak RSS.
const rssWrapperEnv = "BACKUPCTL_TEST_RSS_FILE"

// rssWrapper runs args[0] with args[1:] as its child, with stdio passed
// on, writes the child's peak RSS (KiB) to out and returns its exit code.
// A child started by a large process records that process's peak as its
// own (Go starts children with vfork: at exec the kernel takes the peak
// of the memory shared until then), so the test binary, large after
// crafting objects, starts backupctl through a fresh small copy of itself.
func rssWrapper(out string, args []string) int {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "rss wrapper:", err)
		return 125
	}
	if err := os.WriteFile(out, []byte(strconv.FormatInt(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss, 10)), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "rss wrapper:", err)
		return 125
	}
	return code
}

func ok(t *testing.T, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	return r
}

func TestBackupRestoreEndToEnd(t *testing.T) {
	repoURL := "file://" + t.TempDir()
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "pkg", "empty"), 0o755)
	os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n"), 0o644)
	os.WriteFile(filepath.Join(src, "pkg", "big"), bytes.Repeat([]byte("0123456789abcdef"), 1<<17), 0o600)
	os.Symlink("main.go", filepath.Join(src, "link"))

	r := ok(t, run(t, nil, "backup", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--tag", "reason=stop", "--json", src))
	var st map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("backup --json output %q: %v", r.stdout, err)
	}
	for _, k := range []string{"snapshot_id", "files", "dirs", "bytes", "new_bytes", "stored_bytes", "blobs", "new_blobs", "objects_written", "duration_ms"} {
		if _, ok := st[k]; !ok {
			t.Errorf("backup --json lacks %q: %s", k, r.stdout)
		}
	}
	if st["files"].(float64) != 2 || st["new_bytes"].(float64) == 0 {
		t.Errorf("backup stats: %s", r.stdout)
	}
	id := st["snapshot_id"].(string)

	// Plain output is the snapshot id alone; BACKUPD_REPO stands in for -r.
	r = ok(t, run(t, []string{"BACKUPD_REPO=" + repoURL}, "backup", "--owner", "o1", "--workspace", "w1", src))
	id2 := strings.TrimSpace(r.stdout)
	if len(id2) != 64 || id2 == id {
		t.Fatalf("second backup printed %q", r.stdout)
	}

	r = ok(t, run(t, nil, "snapshots", "-r", repoURL, "--json"))
	var snaps []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &snaps); err != nil || len(snaps) != 2 {
		t.Fatalf("snapshots --json: %v %s", err, r.stdout)
	}
	if snaps[0]["id"] != id || snaps[0]["tags"].(map[string]any)["reason"] != "stop" {
		t.Fatalf("snapshots: %s", r.stdout)
	}
	r = ok(t, run(t, nil, "snapshots", "-r", repoURL, "--owner", "o1", "--workspace", "w1"))
	if !strings.Contains(r.stdout, id[:8]) || !strings.Contains(r.stdout, "reason=stop") {
		t.Fatalf("snapshots table: %s", r.stdout)
	}

	r = ok(t, run(t, nil, "ls", "-r", repoURL, "--owner", "o1", id[:10]))
	for _, want := range []string{"/main.go", "/pkg/big", "/pkg/empty", "/link -> main.go"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("ls lacks %q:\n%s", want, r.stdout)
		}
	}
	r = ok(t, run(t, nil, "ls", "-r", repoURL, "--owner", "o1", "latest", "pkg"))
	if strings.Contains(r.stdout, "main.go") || !strings.Contains(r.stdout, "/pkg/big") {
		t.Errorf("ls latest pkg:\n%s", r.stdout)
	}

	dst := filepath.Join(t.TempDir(), "new")
	r = ok(t, run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--snapshot", id, "--json", dst))
	var rs map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rs); err != nil || rs["files"].(float64) != 2 {
		t.Fatalf("restore --json: %v %s", err, r.stdout)
	}
	for _, p := range []string{"main.go", "pkg/big"} {
		a, _ := os.ReadFile(filepath.Join(src, p))
		b, _ := os.ReadFile(filepath.Join(dst, p))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs after restore", p)
		}
	}
	if l, _ := os.Readlink(filepath.Join(dst, "link")); l != "main.go" {
		t.Errorf("link = %q", l)
	}

	// Restoring into the now non-empty directory is refused.
	r = run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", dst)
	if r.code != 1 || !strings.Contains(r.stderr, "not empty") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Fatalf("restore into non-empty dir: %+v", r)
	}
	// Over it: the changed file comes back, the extra one goes.
	os.WriteFile(filepath.Join(dst, "main.go"), []byte("package changed\n"), 0o644)
	os.WriteFile(filepath.Join(dst, "extra"), []byte("x"), 0o644)
	r = ok(t, run(t, nil, "restore", "-r", repoURL, "--owner", "o1", "--workspace", "w1", "--snapshot", id, "--overwrite", "--delete", "--json", dst))
	if err := json.Unmarshal([]byte(r.stdout), &rs); err != nil || rs["unchanged_files"].(float64) != 1 || rs["deleted"].(float64) != 1 {
		t.Fatalf("restore --overwrite --delete --json: %v %s", err, r.stdout)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "main.go")); string(b) != "package main\n" {
		t.Errorf("main.go after restore over: %q", b)
	}
	if _, err := os.Stat(filepath.Join(dst, "extra")); err == nil {
		t.Error("--delete left an extra file")
	}
}

func TestErrorsAreOneClearLine(t *testing.T) {
	repoURL := "file://" + t.TempDir()
	cases := []struct {
		args []string
		code int
		want string // the first line of stderr
	}{
		{[]string{"backup", "--owner", "o", "--workspace", "w", "--bogus", "."}, 2, "backupctl: unknown flag: --bogus"},
		{[]string{"backup", "-r", repoURL, "--workspace", "w", "."}, 2, "backupctl: backup: missing required flag --owner"},
		{[]string{"backup", "-r", repoURL, "--owner", "o", "--workspace", "w"}, 2, "backupctl: backup: missing argument DIR"},
		{[]string{"backup", "-r", repoURL, "--owner", "../x", "--workspace", "w", "."}, 2, `backupctl: invalid owner "../x": must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`},
		{[]string{"backup", "-r", repoURL, "--owner", "o", "--workspace", "w", "--tag", "novalue", "."}, 2, `backupctl: --tag "novalue": want KEY=VALUE`},
		{[]string{"backup", "-r", "ftp://host/x", "--owner", "o", "--workspace", "w", "."}, 2, `backupctl: storage URL ftp://host/x: unsupported scheme "ftp" (use file, s3, minio, gs or azblob)`},
		{[]string{"restore", "-r", repoURL, "--owner", "nobody", "--workspace", "w", t.TempDir()}, 1, "backupctl: no backups for owner nobody"},
		{[]string{"restore", "-r", repoURL, "--owner", "o", "--workspace", "w", "--delete", t.TempDir()}, 2, "backupctl: --verify and --delete need --overwrite"},
	}
	for _, c := range cases {
		r := run(t, nil, c.args...)
		first, rest, _ := strings.Cut(r.stderr, "\n")
		wantRest := ""
		if c.code == 2 {
			wantRest = "Run 'backupctl " + c.args[0] + " --help' for usage.\n"
		}
		if r.code != c.code || first != c.want || rest != wantRest {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args, r.code, r.stderr, c.code, c.want)
		}
	}
	r := run(t, nil, "backup", "-r", repoURL, "--owner", "o", "--workspace", "w", "/does/not/exist")
	if r.code != 1 || !strings.Contains(r.stderr, "no such file") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("backup of a missing directory: %+v", r)
	}
	if r := ok(t, run(t, nil, "backup", "--help")); !strings.Contains(r.stdout, "--workspace") || !strings.Contains(r.stdout, "--tag") {
		t.Errorf("backup --help: %s", r.stdout)
	}
}

func TestDefaultRepositoryIsUnderDataHome(t *testing.T) {
	data := t.TempDir()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	env := []string{"XDG_DATA_HOME=" + data, "BACKUPD_REPO="}
	ok(t, run(t, env, "backup", "--owner", "o", "--workspace", "w", src))
	if _, err := os.Stat(filepath.Join(data, "backupd", "repository", "o", "config")); err != nil {
		t.Fatalf("default repository not under XDG_DATA_HOME: %v", err)
	}
}

func TestDiffAndStats(t *testing.T) {
	repoURL := "file://" + t.TempDir()
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "dir", "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "keep"), []byte("same"), 0o644)
	os.WriteFile(filepath.Join(src, "change"), []byte("v1"), 0o644)
	os.WriteFile(filepath.Join(src, "dir", "sub", "gone"), []byte("x"), 0o644)
	args := []string{"-r", repoURL, "--owner", "o1", "--workspace", "w1"}
	first := strings.TrimSpace(ok(t, run(t, nil, append(append([]string{"backup"}, args...), src)...)).stdout)
	os.WriteFile(filepath.Join(src, "change"), []byte("v2"), 0o644)
	os.RemoveAll(filepath.Join(src, "dir", "sub"))
	os.WriteFile(filepath.Join(src, "new"), []byte("n"), 0o644)
	ok(t, run(t, nil, append(append([]string{"backup"}, args...), src)...))

	r := ok(t, run(t, nil, "diff", "-r", repoURL, "--owner", "o1", first[:8], "latest"))
	want := "M /change\n- /dir/sub\n- /dir/sub/gone\n+ /new\n" // /dir itself only got a new mtime
	if r.stdout != want {
		t.Fatalf("diff:\n%s\nwant:\n%s", r.stdout, want)
	}
	r = ok(t, run(t, nil, "stats", "-r", repoURL, "--json"))
	var st []struct {
		Owner     string  `json:"owner"`
		Snapshots int     `json:"snapshots"`
		Logical   int64   `json:"logical_bytes"`
		Stored    int64   `json:"stored_bytes"`
		Ratio     float64 `json:"dedup_ratio"`
		Blobs     int     `json:"blobs"`
		Packs     int     `json:"packs"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || len(st) != 1 {
		t.Fatalf("stats: %v %s", err, r.stdout)
	}
	if s := st[0]; s.Owner != "o1" || s.Snapshots != 2 || s.Logical != 7+7 || s.Stored == 0 || s.Blobs == 0 || s.Packs == 0 {
		t.Fatalf("stats: %+v", s)
	}
}
