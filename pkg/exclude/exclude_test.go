package exclude

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// excludedWalk applies m as a backup does: a path is left out if it or a
// directory above it is excluded.
func excludedWalk(m *Matcher, rel string, isDir bool) bool {
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		if m.Excluded(strings.Join(parts[:i], "/"), true) {
			return true
		}
	}
	return m.Excluded(rel, isDir)
}

var patterns = []string{
	"# a comment",
	"",
	"*.log",
	"!keep.log",
	"build/",
	"/top-only",
	"docs/*.md",
	"**/gen/*.go",
	"vendor/**",
	"a/**/z",
	"\\#hash",
	"\\!bang",
	"trailing   ",
	"f?o.[ch]",
	"x[!0-9]",
	"node_modules",
	"/deep/er/",
	"**/cache",
	"!cache/keep",
}

// Paths: those ending in / are directories.
var paths = []string{
	"a.log", "sub/b.log", "keep.log", "sub/keep.log",
	"build/", "build/out.o", "sub/build/", "sub/build/x", "buildfile", "file/build",
	"top-only", "sub/top-only",
	"docs/", "docs/a.md", "docs/sub/", "docs/sub/b.md", "x/docs/", "x/docs/c.md",
	"gen/", "gen/a.go", "p/gen/", "p/gen/b.go", "p/gen/b.txt",
	"vendor/", "vendor/m/", "vendor/m/x.go", "v/vendor/", "v/vendor/y",
	"a/", "a/z", "a/b/", "a/b/z", "a/b/c/", "a/b/c/z", "a/y",
	"#hash", "!bang", "trailing",
	"fao.c", "fbo.h", "fo.c", "faao.c",
	"xa", "x1",
	"node_modules/", "node_modules/p/", "node_modules/p/i.js", "web/node_modules/", "web/node_modules/q.js",
	"deep/", "deep/er/", "deep/er/f", "o/deep/", "o/deep/er/", "o/deep/er/g",
	"cache/", "cache/keep", "cache/other", "q/cache",
	"plain.txt",
}

// TestAgreesWithGit checks every pattern and path above against git
// check-ignore, the reference implementation of the syntax.
func TestAgreesWithGit(t *testing.T) {
	gitBin, err := exec.LookPath("git")
	if err != nil {
		t.Fatal("git is needed as the reference for gitignore syntax:", err)
	}
	dir := t.TempDir()
	run := func(stdin string, args ...string) string {
		cmd := exec.Command(gitBin, args...)
		cmd.Dir = dir
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 1 {
			err = nil // check-ignore: nothing ignored
		}
		if err != nil {
			t.Fatalf("git %v: %v", args, err)
		}
		return string(out)
	}
	run("", "init", "-q")
	if err := os.WriteFile(filepath.Join(dir, ".gitignore"), []byte(strings.Join(patterns, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var rels []string
	for _, p := range paths {
		full := filepath.Join(dir, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
		} else {
			os.MkdirAll(filepath.Dir(full), 0o755)
			if err := os.WriteFile(full, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		rels = append(rels, strings.TrimSuffix(p, "/"))
	}
	gitIgnored := map[string]bool{}
	for _, l := range strings.Split(run(strings.Join(rels, "\n")+"\n", "check-ignore", "--no-index", "--stdin"), "\n") {
		if l != "" {
			gitIgnored[strings.TrimSuffix(l, "/")] = true
		}
	}
	m, err := New(".gitignore", patterns)
	if err != nil {
		t.Fatal(err)
	}
	var ours, theirs []string
	for _, p := range paths {
		rel := strings.TrimSuffix(p, "/")
		if excludedWalk(m, rel, strings.HasSuffix(p, "/")) {
			ours = append(ours, rel)
		}
		if gitIgnored[rel] {
			theirs = append(theirs, rel)
		}
	}
	sort.Strings(ours)
	sort.Strings(theirs)
	if strings.Join(ours, "\n") != strings.Join(theirs, "\n") {
		t.Fatalf("excluded differ from git check-ignore\n ours: %q\n  git: %q", ours, theirs)
	}
	if len(ours) < 20 || len(ours) > len(paths)-10 {
		t.Fatalf("the cases do not exercise both outcomes: %d of %d excluded", len(ours), len(paths))
	}
}

func TestBadPatterns(t *testing.T) {
	for _, p := range []string{"[unclosed", "a/**/[x", "/", "bad\x00"} {
		if _, err := New("--exclude", []string{p}); err == nil {
			t.Errorf("pattern %q: no error", p)
		} else if !strings.Contains(err.Error(), "--exclude") {
			t.Errorf("pattern %q: error %q does not name its source", p, err)
		}
	}
	if _, err := New(ExcludeFile, []string{"ok", "[bad"}); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("bad second line: %v", err)
	}
	var nilMatcher *Matcher
	if nilMatcher.Excluded("x", false) || !nilMatcher.Empty() {
		t.Error("a nil matcher excludes")
	}
}

func BenchmarkExcluded(b *testing.B) {
	m, err := New("bench", []string{"*.log", "node_modules/", "/build", "**/gen/*.go", "!keep.log"})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		m.Excluded("src/pkg/module/file.go", false)
	}
}
