package sync

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
)

// includeSet is the paths a partial restore (RestoreOptions.Include)
// restores: slash-separated, relative to the snapshot's root, each known
// to exist in the snapshot.
type includeSet struct {
	paths []string
}

// newIncludeSet checks every path against the snapshot rooted at tree
// root. It returns nil, meaning everything, if one of them is the root.
func newIncludeSet(ctx context.Context, r *repo.Repository, root chunk.ID, paths []string) (*includeSet, error) {
	s := &includeSet{}
	for _, p := range paths {
		clean, err := CleanInclude(p)
		if err != nil {
			return nil, err
		}
		if clean == "" {
			return nil, nil
		}
		if err := findPath(ctx, r, root, clean); err != nil {
			return nil, fmt.Errorf("include %q: %w", p, err)
		}
		s.paths = append(s.paths, clean)
	}
	return s, nil
}

// CleanInclude turns an include path ("src/app", "/src/app/", "./src")
// into its form relative to the snapshot's root; "" is the root. A path
// with a ".." component or a NUL is an error.
func CleanInclude(p string) (string, error) {
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", fmt.Errorf("include %q: a path in the snapshot cannot contain \"..\"", p)
		}
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("include %q: NUL in path", p)
	}
	return strings.TrimPrefix(path.Clean("/"+p), "/"), nil
}

// findPath checks that the snapshot has p.
func findPath(ctx context.Context, r *repo.Repository, tree chunk.ID, p string) error {
	parts := strings.Split(p, "/")
	for i, name := range parts {
		t, err := r.LoadTree(ctx, tree)
		if err != nil {
			return err
		}
		j := sort.Search(len(t.Nodes), func(j int) bool { return t.Nodes[j].Name >= name })
		if j == len(t.Nodes) || t.Nodes[j].Name != name {
			return fmt.Errorf("no %s in the snapshot", path.Join(parts[:i+1]...))
		}
		if i < len(parts)-1 {
			if t.Nodes[j].Type != repo.TypeDir {
				return fmt.Errorf("%s in the snapshot is not a directory", path.Join(parts[:i+1]...))
			}
			tree = t.Nodes[j].Subtree
		}
	}
	return nil
}

// match tells whether the entry at rel is restored (visit) and whether
// everything below it is (full), or only the way to an included path.
func (s *includeSet) match(rel string) (visit, full bool) {
	for _, p := range s.paths {
		if rel == p || strings.HasPrefix(rel, p+"/") {
			return true, true
		}
		if strings.HasPrefix(p, rel+"/") {
			visit = true
		}
	}
	return visit, false
}
