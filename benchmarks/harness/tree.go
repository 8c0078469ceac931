package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// entry describes one path of a tree, relative to the tree's root.
type entry struct {
	kind   byte // 'f' regular file, 'd' directory, 'l' symlink
	size   int64
	perm   fs.FileMode // permission bits plus setuid/setgid/sticky
	sum    [32]byte    // SHA-256 of a regular file's content
	target string      // symlink target
}

// treeInfo is a tree's manifest plus its totals.
type treeInfo struct {
	entries map[string]entry
	files   int
	dirs    int
	links   int
	bytes   int64 // sum of regular file sizes
}

const permMask = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// scanTree walks root and reads (and hashes) every regular file in it. Any
// file type other than regular file, directory and symlink is an error, so
// that nothing the tools might skip goes unnoticed.
func scanTree(root string) (*treeInfo, error) {
	t := &treeInfo{entries: map[string]entry{}}
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := entry{perm: info.Mode() & permMask}
		switch {
		case info.Mode().IsRegular():
			e.kind = 'f'
			e.size = info.Size()
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.CopyBuffer(h, f, buf)
			f.Close()
			if err != nil {
				return err
			}
			copy(e.sum[:], h.Sum(nil))
			t.files++
			t.bytes += e.size
		case info.IsDir():
			e.kind = 'd'
			t.dirs++
		case info.Mode()&fs.ModeSymlink != 0:
			e.kind = 'l'
			e.perm = 0 // symlink permissions are meaningless on Linux
			if e.target, err = os.Readlink(path); err != nil {
				return err
			}
			t.links++
		default:
			return fmt.Errorf("%s: unsupported file type %v", path, info.Mode().Type())
		}
		t.entries[rel] = e
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// compareTrees returns nil if got has exactly the entries of want: same
// paths, types, sizes, permission bits, contents and symlink targets.
// Modification times and ownership are not compared.
func compareTrees(want, got *treeInfo) error {
	var diffs []string
	for p, w := range want.entries {
		g, ok := got.entries[p]
		switch {
		case !ok:
			diffs = append(diffs, "missing: "+p)
		case g.kind != w.kind:
			diffs = append(diffs, fmt.Sprintf("type %c, want %c: %s", g.kind, w.kind, p))
		case g.size != w.size:
			diffs = append(diffs, fmt.Sprintf("size %d, want %d: %s", g.size, w.size, p))
		case g.sum != w.sum:
			diffs = append(diffs, "content differs: "+p)
		case g.target != w.target:
			diffs = append(diffs, fmt.Sprintf("symlink target %q, want %q: %s", g.target, w.target, p))
		case g.perm != w.perm:
			diffs = append(diffs, fmt.Sprintf("mode %v, want %v: %s", g.perm, w.perm, p))
		}
	}
	for p := range got.entries {
		if _, ok := want.entries[p]; !ok {
			diffs = append(diffs, "unexpected: "+p)
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	sort.Strings(diffs)
	n := len(diffs)
	if len(diffs) > 20 {
		diffs = append(diffs[:20], "...")
	}
	msg := fmt.Sprintf("restored tree differs from source in %d entries:", n)
	for _, d := range diffs {
		msg += "\n  " + d
	}
	return fmt.Errorf("%s", msg)
}

// dirSize is the sum of the sizes of the regular files under root.
func dirSize(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	return n, err
}

// removeAll removes root, first making read-only directories writable if a
// plain os.RemoveAll fails (restored trees keep the source's modes).
func removeAll(root string) error {
	if os.RemoveAll(root) == nil {
		return nil
	}
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(path, 0o700)
		}
		return nil
	})
	return os.RemoveAll(root)
}
