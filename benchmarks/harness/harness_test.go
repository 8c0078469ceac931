package main

import (
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary act as the rusage helper and as a
// workload process, as the harness binary does.
func TestMain(m *testing.M) {
	if os.Getenv(rusageHelperEnv) != "" {
		os.Exit(rusageHelper(os.Args[1:]))
	}
	if kind := os.Getenv(workloadEnv); kind != "" {
		os.Exit(workloadMain(kind, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"2GiB": 2 << 30, "2G": 2 << 30, "1GB": 1e9, "500MiB": 500 << 20, "1.5k": 1536, "4096": 4096,
	} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1x", "GiB", "-1"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

func TestGenerateDeterministicAndVerify(t *testing.T) {
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	const size = 9<<20 + 123 // not a multiple of the block size
	for _, d := range []string{a, b} {
		if err := generateLarge(d, size); err != nil {
			t.Fatal(err)
		}
	}
	ta, err := scanTree(a)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := scanTree(b)
	if err != nil {
		t.Fatal(err)
	}
	if ta.files != 2001 || ta.entries["big.bin"].size != size {
		t.Fatalf("got %d files, big.bin %d bytes", ta.files, ta.entries["big.bin"].size)
	}
	if err := compareTrees(ta, tb); err != nil {
		t.Fatalf("two generations differ: %v", err)
	}

	// Every kind of damage is caught.
	small := filepath.Join(b, "small", "d00", "f0000.txt")
	for name, damage := range map[string]func() error{
		"content": func() error {
			f, err := os.OpenFile(filepath.Join(b, "big.bin"), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte{'!'}, 5<<20)
			return err
		},
		"missing":    func() error { return os.Remove(small) },
		"unexpected": func() error { return os.WriteFile(filepath.Join(b, "extra"), nil, 0o644) },
		"mode":       func() error { return os.Chmod(small, 0o600) },
	} {
		if err := generateLarge(b, size); err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(b, "extra"))
		os.Chmod(small, 0o644)
		if err := damage(); err != nil {
			t.Fatal(err)
		}
		tb, err := scanTree(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := compareTrees(ta, tb); err == nil || !strings.Contains(err.Error(), "differs from source in 1 entries") {
			t.Errorf("%s: compareTrees = %v", name, err)
		}
	}
}

func needGit(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("the workspace generator needs git:", err) // as pkg/exclude's tests do
	}
}

func tinyWorkspace(t *testing.T) (string, workspaceSpec) {
	t.Helper()
	needGit(t)
	spec, err := parseWorkspaceSpec("tiny")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "ws")
	if err := generateWorkspace(dir, spec); err != nil {
		t.Fatal(err)
	}
	return dir, spec
}

func gitOut(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).Output()
	if err != nil {
		t.Fatalf("git %v: %v", args, err)
	}
	return strings.TrimSpace(string(out))
}

func TestParseWorkspaceSpec(t *testing.T) {
	def, err := parseWorkspaceSpec("default")
	if err != nil || def.nodeFiles != 100_000 || len(def.binaries) != 3 {
		t.Fatalf("default = %+v, %v", def, err)
	}
	if n := def.nominalSize(); n < 600<<20 || n > 1<<30 {
		t.Errorf("default nominal size %d, want 0.6-1 GiB", n)
	}
	half, err := parseWorkspaceSpec("0.5x")
	if err != nil || half.nodeFiles != 50_000 || half.binaries[0] != 32<<20 {
		t.Errorf("0.5x = %+v, %v", half, err)
	}
	big, err := parseWorkspaceSpec("2GiB")
	if err != nil || big.nodeFiles <= 200_000 || big.nominalSize() < 1900<<20 || big.nominalSize() > 2100<<20 {
		t.Errorf("2GiB = %+v (nominal %d), %v", big, big.nominalSize(), err)
	}
	for _, bad := range []string{"", "huge", "-1x", "0x"} {
		if _, err := parseWorkspaceSpec(bad); err == nil {
			t.Errorf("parseWorkspaceSpec(%q) succeeded", bad)
		}
	}
}

func TestGenerateWorkspace(t *testing.T) {
	a, spec := tinyWorkspace(t)
	b, _ := tinyWorkspace(t)
	ta, err := scanTree(a)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := scanTree(b)
	if err != nil {
		t.Fatal(err)
	}
	// git's index holds stat data (inodes, times), so it differs between
	// generations, as in real life; everything else is the same.
	for _, tr := range []*treeInfo{ta, tb} {
		delete(tr.entries, filepath.Join(".git", "index"))
	}
	if err := compareTrees(ta, tb); err != nil {
		t.Fatalf("two generations differ: %v", err)
	}
	if ha, hb := gitOut(t, a, "rev-parse", "HEAD"), gitOut(t, b, "rev-parse", "HEAD"); ha != hb {
		t.Errorf("HEAD %s vs %s", ha, hb)
	}

	count := map[string]int{}
	var binBytes, randBytes int64
	for p, e := range ta.entries {
		top, _, _ := strings.Cut(p, string(filepath.Separator))
		switch {
		case e.kind == 'f' && top == "build":
			binBytes += e.size
		case e.kind == 'f' && top == "data":
			randBytes += e.size
		case e.kind == 'l':
			target, err := os.Stat(filepath.Join(a, p))
			if err != nil || !target.Mode().IsRegular() || target.Mode().Perm() != 0o755 {
				t.Errorf("symlink %s -> %s: %v", p, e.target, err)
			}
		}
		if e.kind == 'f' {
			count[top]++
		}
	}
	if count["node_modules"] != spec.nodeFiles || count["src"] != spec.srcFiles || count["build"] != len(spec.binaries) || count["data"] != spec.randomFiles {
		t.Errorf("file counts %v, spec %+v", count, spec)
	}
	if binBytes != spec.binaries[0]+spec.binaries[1] || randBytes != spec.randomBytes {
		t.Errorf("binaries %d bytes, random %d bytes", binBytes, randBytes)
	}
	if ta.links == 0 {
		t.Error("no node_modules/.bin symlinks")
	}
	if n := strings.Count(gitOut(t, a, "log", "--format=%H"), "\n") + 1; n != spec.commits {
		t.Errorf("%d commits, want %d", n, spec.commits)
	}
	if st := gitOut(t, a, "status", "--porcelain"); st != "" {
		t.Errorf("git status not clean (node_modules, build and data are ignored):\n%s", st)
	}
	objs := gitOut(t, a, "count-objects", "-v")
	if !strings.Contains(objs, "packs: 1") || strings.Contains(objs, "\ncount: 0\n") {
		t.Errorf("want packed and loose objects:\n%s", objs)
	}
}

func mtimes(t *testing.T, root string) map[string]time.Time {
	t.Helper()
	m := map[string]time.Time{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		m[p] = info.ModTime()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestChangeTreeAndUndo(t *testing.T) {
	dir, _ := tinyWorkspace(t)
	src, err := scanTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	before := mtimes(t, dir)
	copyDir := filepath.Join(t.TempDir(), "copy") // for the same change on an identical copy
	if out, err := exec.Command("cp", "-a", dir, copyDir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	c, err := changeTree(dir, src, 1, changeSeed)
	if err != nil {
		t.Fatal(err)
	}
	want := max(4, int(math.Round(float64(src.files)/100)))
	if c.total() != want || len(c.deleted) == 0 || len(c.added) == 0 || c.grown == "" {
		t.Fatalf("changed %d files (%d edited, %d deleted, %d added, grown %q), want %d with some of each",
			c.total(), len(c.modified), len(c.deleted), len(c.added), c.grown, want)
	}
	changed, err := scanTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = compareTrees(src, changed)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("differs from source in %d entries", want)) {
		t.Fatalf("after the change: %v", err)
	}

	if err := c.undo(); err != nil {
		t.Fatal(err)
	}
	restored, err := scanTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := compareTrees(src, restored); err != nil {
		t.Fatalf("after undo: %v", err)
	}
	after := mtimes(t, dir)
	for p, mt := range before {
		if !after[p].Equal(mt) {
			t.Errorf("mtime of %s: %v, was %v", p, after[p], mt)
		}
	}

	c2, err := changeTree(copyDir, src, 1, changeSeed)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.modified, c2.modified) || !slices.Equal(c.deleted, c2.deleted) || !slices.Equal(c.added, c2.added) {
		t.Errorf("the same change differs between two copies")
	}
}

// TestChangeTreeKeepsExistingFiles: a change never overwrites a file where
// it would add one, and its undo leaves that file alone.
func TestChangeTreeKeepsExistingFiles(t *testing.T) {
	dir, _ := tinyWorkspace(t)
	src, err := scanTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	probe, err := changeTree(dir, src, 1, changeSeed)
	if err != nil {
		t.Fatal(err)
	}
	if err := probe.undo(); err != nil {
		t.Fatal(err)
	}
	squatter := filepath.Join(dir, probe.added[0])
	if err := os.WriteFile(squatter, []byte("not the change's"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := changeTree(dir, src, 1, changeSeed)
	if err != nil {
		t.Fatal(err)
	}
	if c.added[0] == probe.added[0] || !strings.HasSuffix(c.added[0], "-2.js") {
		t.Errorf("added %s where %s exists", c.added[0], probe.added[0])
	}
	if err := c.undo(); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(squatter); err != nil || string(data) != "not the change's" {
		t.Fatalf("the existing file: %q, %v", data, err)
	}
	if err := os.Remove(squatter); err != nil {
		t.Fatal(err)
	}
	restored, err := scanTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := compareTrees(src, restored); err != nil {
		t.Fatalf("after undo: %v", err)
	}
}

func TestGrowFileUndo(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	g, err := growFile(path, 9<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := os.Stat(path); info.Size() != 5+9<<20 {
		t.Fatalf("size %d after growing", info.Size())
	}
	if err := g.undo(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	info, _ := os.Stat(path)
	if err != nil || string(data) != "hello" || !info.ModTime().Equal(old) || info.Mode().Perm() != 0o600 {
		t.Fatalf("after undo: %q, %v, mtime %v, mode %v", data, err, info.ModTime(), info.Mode())
	}

	// A created file goes, and its directory gets its mtime back.
	if err := os.Chtimes(dir, old, old); err != nil {
		t.Fatal(err)
	}
	g, err = growFile(filepath.Join(dir, "new"), 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.undo(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	info, _ = os.Stat(dir)
	if len(ents) != 1 || !info.ModTime().Equal(old) {
		t.Fatalf("after undo: %d entries, directory mtime %v", len(ents), info.ModTime())
	}
	if _, err := growFile(dir, 1, 3); err == nil {
		t.Error("growing a directory succeeded")
	}
}

func TestMeasurePipeline(t *testing.T) {
	m, out, err := measurePipeline(nil, []string{"printf", "abc"}, []string{"tr", "a-z", "A-Z"})
	if err != nil || string(out) != "ABC" || m.wall <= 0 || m.maxRSS <= 0 {
		t.Fatalf("measurePipeline = %+v, %q, %v", m, out, err)
	}
	if _, _, err := measurePipeline(nil, []string{"sh", "-c", "echo oops >&2; exit 3"}, []string{"cat"}); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Errorf("failing first command: %v", err)
	}
	if _, _, err := measurePipeline(nil, []string{"/nonexistent/cmd"}); err == nil {
		t.Error("missing command succeeded")
	}

	// The child's peak RSS is its own, not the (large) parent's: Go starts
	// children with vfork, and Linux would carry this process's high-water
	// mark into a directly started child's ru_maxrss.
	ballast := make([]byte, 200<<20)
	for i := range ballast {
		ballast[i] = 1
	}
	m, _, err = measure(nil, "true")
	if err != nil || m.maxRSS <= 0 || m.maxRSS > 50<<20 {
		t.Errorf("peak RSS of `true` with a 200 MiB parent: %d bytes, %v", m.maxRSS, err)
	}
	t.Logf("peak RSS of `true` under the helper: %.1f MiB", float64(m.maxRSS)/(1<<20))
	runtime.KeepAlive(ballast)
}

func TestParseKopiaSnapshots(t *testing.T) {
	// The shape of `kopia snapshot list --json` (0.22), trimmed; the newer
	// snapshot first, and a start time without fractional seconds.
	out := []byte(`[
 {"id":"6ba32f94dd96c86bbb230e891cfc229c","source":{"host":"vm","userName":"root","path":"/d"},"startTime":"2026-12-01T23:59:46Z","stats":{"fileCount":3,"cachedFiles":2,"nonCachedFiles":1}},
 {"id":"24175de51b24952c5147749a1d6532aa","source":{"host":"vm","userName":"root","path":"/d"},"startTime":"2026-12-01T23:59:45.186186105Z","stats":{"fileCount":3,"cachedFiles":0,"nonCachedFiles":3}}
]`)
	snaps, err := parseKopiaSnapshots(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 || snaps[1].ID != "6ba32f94dd96c86bbb230e891cfc229c" || snaps[1].Stats.NonCachedFiles != 1 {
		t.Fatalf("got %+v, want the 23:59:46 snapshot last, with 1 file read", snaps)
	}
	for _, bad := range []string{`{}`, `[{"id":"x","startTime":"yesterday"}]`, `[{"startTime":"2026-12-01T23:59:46Z"}]`} {
		if _, err := parseKopiaSnapshots([]byte(bad)); err == nil {
			t.Errorf("parseKopiaSnapshots(%s) succeeded", bad)
		}
	}
}
