package dirfd

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// both runs f with openat2 (where the kernel has it) and with the walk
// one component at a time that older kernels get.
func both(t *testing.T, f func(t *testing.T)) {
	t.Run("openat2", func(t *testing.T) {
		if !haveOpenat2() {
			t.Fatal("this kernel has no openat2: the test machine must have it (Linux >= 5.6)")
		}
		f(t)
	})
	t.Run("components", func(t *testing.T) {
		forceComponentWalk = true
		t.Cleanup(func() { forceComponentWalk = false })
		f(t)
	})
}

func TestOpenDirNeverFollowsLinks(t *testing.T) {
	both(t, func(t *testing.T) {
		base := t.TempDir()
		root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
		mustDo(t, os.MkdirAll(filepath.Join(root, "a", "b"), 0o755))
		mustDo(t, os.MkdirAll(outside, 0o755))
		mustDo(t, os.Symlink(outside, filepath.Join(root, "abs")))
		mustDo(t, os.Symlink("../outside", filepath.Join(root, "a", "rel")))
		mustDo(t, os.Symlink("b", filepath.Join(root, "a", "inside")))
		d, err := Open(root)
		mustDo(t, err)
		defer d.Close()

		sub, err := d.OpenDir("a/b")
		mustDo(t, err)
		if sub.Name() != root+"/a/b" {
			t.Errorf("name %q", sub.Name())
		}
		sub.Close()
		for _, rel := range []string{"abs", "a/rel", "a/inside", "abs/x", "a/inside/."} {
			if _, err := d.OpenDir(rel); !errors.Is(err, ErrLink) {
				t.Errorf("OpenDir(%q) = %v, want ErrLink", rel, err)
			}
		}
		for _, rel := range []string{"..", "a/../..", "/etc", "a/../../outside"} {
			if _, err := d.OpenDir(rel); !errors.Is(err, ErrNotBelow) {
				t.Errorf("OpenDir(%q) = %v, want ErrNotBelow", rel, err)
			}
		}
		if _, err := d.MkdirAll("abs/new", 0o700); !errors.Is(err, ErrLink) {
			t.Errorf("MkdirAll through a link = %v", err)
		}
		if _, err := os.Stat(filepath.Join(outside, "new")); !os.IsNotExist(err) {
			t.Error("MkdirAll created a directory through a link")
		}
		nd, err := d.MkdirAll("a/b/c/d", 0o700)
		mustDo(t, err)
		nd.Close()
		if fi, err := os.Lstat(filepath.Join(root, "a/b/c/d")); err != nil || !fi.IsDir() {
			t.Fatalf("MkdirAll: %v", err)
		}
	})
}

// TestOpenDirRacingSwaps swaps a directory for a link out of the root
// while another goroutine opens it, thousands of times: the open either
// fails or lands inside, never outside.
func TestOpenDirRacingSwaps(t *testing.T) {
	both(t, func(t *testing.T) {
		base := t.TempDir()
		root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
		mustDo(t, os.MkdirAll(filepath.Join(root, "w", "sub"), 0o755))
		mustDo(t, os.MkdirAll(filepath.Join(outside, "sub"), 0o755))
		var out unix.Stat_t
		mustDo(t, unix.Stat(filepath.Join(outside, "sub"), &out))
		d, err := Open(root)
		mustDo(t, err)
		defer d.Close()

		var stop atomic.Bool
		swapped := make(chan int)
		go func() {
			n := 0
			w, moved, link := filepath.Join(root, "w"), filepath.Join(root, "w.moved"), filepath.Join(root, "w.link")
			_ = os.Symlink(outside, link)
			for !stop.Load() {
				// w is a directory, then a link to outside, then a directory.
				if os.Rename(w, moved) == nil && os.Rename(link, w) == nil {
					n++
					_ = os.Rename(w, link)
					_ = os.Rename(moved, w)
				}
			}
			swapped <- n
		}()
		opened, refused := 0, 0
		for range 20000 {
			sub, err := d.OpenDir("w/sub")
			if err != nil {
				refused++
				continue
			}
			st, err := sub.Stat()
			sub.Close()
			mustDo(t, err)
			if SameFile(&st, &out) {
				t.Fatal("OpenDir opened a directory outside the root through a swapped link")
			}
			opened++
		}
		stop.Store(true)
		if n := <-swapped; n == 0 || opened == 0 {
			t.Fatalf("race not exercised: %d swaps, %d opens, %d refused", n, opened, refused)
		}
	})
}

func TestRemoveAllNeverFollowsLinks(t *testing.T) {
	base := t.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	mustDo(t, os.MkdirAll(filepath.Join(root, "victim", "deep", "er"), 0o755))
	mustDo(t, os.WriteFile(filepath.Join(root, "victim", "deep", "f"), []byte("x"), 0o644))
	mustDo(t, os.MkdirAll(outside, 0o755))
	mustDo(t, os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o644))
	mustDo(t, os.Symlink(outside, filepath.Join(root, "victim", "link")))
	mustDo(t, os.Symlink(outside, filepath.Join(root, "toplink")))
	d, err := Open(root)
	mustDo(t, err)
	defer d.Close()
	mustDo(t, RemoveAll(d.Fd(), d.Name(), "victim", 100))
	mustDo(t, RemoveAll(d.Fd(), d.Name(), "toplink", 100))
	mustDo(t, RemoveAll(d.Fd(), d.Name(), "missing", 100))
	if b, err := os.ReadFile(filepath.Join(outside, "keep")); err != nil || string(b) != "keep" {
		t.Fatalf("outside file: %q, %v", b, err)
	}
	if names, _ := os.ReadDir(root); len(names) != 0 {
		t.Fatalf("left %v", names)
	}
	// Depth bound.
	mustDo(t, os.MkdirAll(filepath.Join(root, "a", "b", "c", "d"), 0o755))
	if err := RemoveAll(d.Fd(), d.Name(), "a", 2); err == nil {
		t.Fatal("RemoveAll went deeper than its bound")
	}
}

func TestSplitRel(t *testing.T) {
	for rel, want := range map[string]int{"": 0, ".": 0, "a": 1, "a/b/": 2, "./a//b": 2} {
		p, err := SplitRel(rel)
		if err != nil || len(p) != want {
			t.Errorf("SplitRel(%q) = %q, %v", rel, p, err)
		}
	}
	for _, rel := range []string{"/a", "..", "a/..", "a\x00b"} {
		if _, err := SplitRel(rel); !errors.Is(err, ErrNotBelow) {
			t.Errorf("SplitRel(%q) = %v", rel, err)
		}
	}
}
