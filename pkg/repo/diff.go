package repo

import (
	"context"
	"path"
	"slices"

	"github.com/backupd/backupd/pkg/chunk"
)

// ChangeKind says how a path differs between two snapshots.
type ChangeKind byte

// Kinds of change.
const (
	Added    ChangeKind = '+'
	Removed  ChangeKind = '-'
	Modified ChangeKind = 'M'
)

// Change is one difference between two trees.
type Change struct {
	Kind ChangeKind
	Path string
}

// Diff reports every path that differs between the trees a and b (a's
// side is the old one): added, removed, or modified (content, type, mode,
// ownership, link target or extended attributes; a changed mtime alone is
// not a modification). Subtrees with the same id are skipped unread, and
// changes are reported in path order.
func (r *Repository) Diff(ctx context.Context, a, b chunk.ID, fn func(Change) error) error {
	return r.diff(ctx, a, b, "/", fn)
}

func (r *Repository) diff(ctx context.Context, a, b chunk.ID, dir string, fn func(Change) error) error {
	if a == b {
		return nil
	}
	ta, tb := &Tree{}, &Tree{}
	var err error
	if !a.IsZero() {
		if ta, err = r.LoadTree(ctx, a); err != nil {
			return err
		}
	}
	if !b.IsZero() {
		if tb, err = r.LoadTree(ctx, b); err != nil {
			return err
		}
	}
	i, j := 0, 0
	for i < len(ta.Nodes) || j < len(tb.Nodes) {
		var na, nb *Node
		switch {
		case j == len(tb.Nodes) || i < len(ta.Nodes) && ta.Nodes[i].Name < tb.Nodes[j].Name:
			na = &ta.Nodes[i]
			i++
		case i == len(ta.Nodes) || tb.Nodes[j].Name < ta.Nodes[i].Name:
			nb = &tb.Nodes[j]
			j++
		default:
			na, nb = &ta.Nodes[i], &tb.Nodes[j]
			i++
			j++
		}
		if err := r.diffNode(ctx, dir, na, nb, fn); err != nil {
			return err
		}
	}
	return nil
}

func (r *Repository) diffNode(ctx context.Context, dir string, na, nb *Node, fn func(Change) error) error {
	var name string
	if na != nil {
		name = na.Name
	} else {
		name = nb.Name
	}
	p := path.Join(dir, name)
	switch {
	case na == nil:
		if err := fn(Change{Added, p}); err != nil {
			return err
		}
		if nb.Type == TypeDir {
			return r.diff(ctx, chunk.ID{}, nb.Subtree, p, fn)
		}
	case nb == nil:
		if err := fn(Change{Removed, p}); err != nil {
			return err
		}
		if na.Type == TypeDir {
			return r.diff(ctx, na.Subtree, chunk.ID{}, p, fn)
		}
	case na.Type != nb.Type:
		if err := r.diffNode(ctx, dir, na, nil, fn); err != nil {
			return err
		}
		return r.diffNode(ctx, dir, nil, nb, fn)
	default:
		if !sameMeta(na, nb) {
			if err := fn(Change{Modified, p}); err != nil {
				return err
			}
		}
		if na.Type == TypeDir {
			return r.diff(ctx, na.Subtree, nb.Subtree, p, fn)
		}
	}
	return nil
}

// sameMeta compares what a user would call the entry's content and
// attributes (not mtime, ctime or inode, which change on their own).
func sameMeta(a, b *Node) bool {
	return a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID && a.Size == b.Size &&
		a.Target == b.Target && slices.Equal(a.Content, b.Content) &&
		slices.EqualFunc(a.Xattrs, b.Xattrs, func(x, y Xattr) bool { return x.Name == y.Name && string(x.Value) == string(y.Value) })
}
