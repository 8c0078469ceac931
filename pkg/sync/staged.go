package sync

import (
	"context"
	"fmt"
	"path"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/dirfd"
	"github.com/backupd/backupd/pkg/repo"
)

// A directory a late pattern matches (RestoreOptions.Late) is a "staged"
// subtree: the first pass leaves it out; after Ready the whole subtree is
// restored under a temporary name in its parent (tmpPrefix, random,
// tmpSuffix), and once every file in it is written and verified it is
// renamed into place in one step, never over an entry the workspace made
// meanwhile (then the workspace's entry stays, the staged copy is removed,
// and the conflict is recorded). One rename for the whole subtree: a
// dependency directory of 100,000 small files costs no more than in a
// plain restore, and it appears complete or not at all.

// stagedTree is a subtree the first pass left for after Ready.
type stagedTree struct {
	parent *dirMeta
	node   repo.Node // the directory's entry in its parent
	rel    string    // its path below the target
	disp   string    // its display path
	full   bool      // restoreTree's full: everything below it is restored
	depth  int       // its depth, as restoreTree counts

	dir *restoreDir // the parent, opened again; nil: gone (a conflict)
	tmp string      // the temporary name while it exists
	st  unix.Stat_t // the temporary directory, once made
}

// stage reports whether the directory n at rel in d is staged: a late
// pattern matches it, and neither is it below .git or a directory a
// priority pattern matches nor matched by one itself.
func (p *readyPlan) stage(d *restoreDir, n *repo.Node, rel string) bool {
	if p.lateGlob == nil || d.git || d.prio || d.staged || n.Name == ".git" {
		return false
	}
	return p.lateGlob.Excluded(rel, true) && !p.priority.Excluded(rel, true)
}

// addStaged plans the staged directory n at rel in d.
func (p *readyPlan) addStaged(d *restoreDir, n *repo.Node, rel string, full bool, depth int) {
	p.staged = append(p.staged, &stagedTree{parent: d.meta, node: *n, rel: rel, disp: d.join(n.Name), full: full, depth: depth})
	p.dirs[d.meta]++
	d.meta.late = true
}

// walkStaged restores the staged subtrees, each below a temporary
// directory in its parent, opened again (and checked to be the one
// restore made); the caller runs the batch writer meanwhile.
func (rs *restorer) walkStaged(ctx context.Context) error {
	p := rs.ready
	for _, s := range p.staged {
		d, err := p.openParent(rs, s.parent)
		if err != nil {
			return err
		}
		s.dir = d
		if d == nil {
			continue
		}
		sub, err := rs.makeStaged(s)
		if err != nil {
			return err
		}
		rs.res.Dirs++
		rs.opts.Progress.Dirs.Add(1)
		if err := rs.restoreTree(ctx, s.node.Subtree, sub, s.full, s.depth); err != nil {
			return err
		}
	}
	return nil
}

// openParent returns the directory m opened again for its late entries,
// once per restore; nil when the workspace removed or replaced it.
func (p *readyPlan) openParent(rs *restorer, m *dirMeta) (*restoreDir, error) {
	if d, ok := p.open[m]; ok {
		return d, nil
	}
	d, err := rs.reopenLate(m)
	if err != nil {
		return nil, err
	}
	p.open[m] = d
	return d, nil
}

// makeStaged creates the temporary directory of s in its parent,
// exclusively, and opens it for the walk.
func (rs *restorer) makeStaged(s *stagedTree) (*restoreDir, error) {
	d := s.dir
	name, err := createTempName(func(name string) error { return unix.Mkdirat(d.fd, name, 0o700) })
	if err != nil {
		return nil, fmt.Errorf("restore: create a temporary directory for %s: %w", d.join(s.node.Name), err)
	}
	s.tmp = name
	fd, err := dirfd.OpenAt(d.fd, s.tmp, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("restore: open %s: %w", d.join(s.tmp), err)
	}
	if err := unix.Fstat(fd, &s.st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("restore: stat %s: %w", d.join(s.tmp), err)
	}
	n := &s.node
	m := &dirMeta{rel: s.rel, at: path.Join(d.meta.where(), s.tmp), dev: s.st.Dev, ino: s.st.Ino,
		mode: n.Mode, mtime: n.MTime, uid: n.UID, gid: n.GID, xattrs: n.Xattrs, set: true}
	sub := rs.track(fd, d.join(s.tmp), m)
	sub.staged = true
	return sub, nil
}

// commitStaged renames each staged subtree into place, now that all of it
// is written, and releases its parent once its last late entry is in.
func (rs *restorer) commitStaged() error {
	p := rs.ready
	for _, s := range p.staged {
		d := s.dir
		if d == nil {
			p.conflict(s.disp)
			continue
		}
		if err := s.commit(p); err != nil {
			return err
		}
		p.dirs[s.parent]--
		if p.dirs[s.parent] == 0 {
			if err := d.release(); err != nil {
				return err
			}
		}
	}
	return nil
}

// commit moves s from its temporary name to its own, unless the workspace
// has made an entry of that name meanwhile (the conflict is recorded and
// the staged copy removed) or replaced the temporary directory.
func (s *stagedTree) commit(p *readyPlan) error {
	d := s.dir
	if err := hookLateRename(d.join(s.node.Name)); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, s.tmp, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || !dirfd.SameFile(&st, &s.st) {
		// Not the directory restore made (or gone): the workspace's
		// doing, and its to keep.
		s.tmp = ""
		p.conflict(s.disp)
		return nil
	}
	err := renameNoReplace(d.fd, s.tmp, s.node.Name)
	if err == unix.EINVAL || err == unix.ENOSYS {
		// No RENAME_NOREPLACE here (a directory cannot be linked): check,
		// then rename; the workspace could still make the name in
		// between, and a rename replaces only an empty directory.
		if err = unix.Fstatat(d.fd, s.node.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			err = unix.EEXIST
		} else if err == unix.ENOENT {
			err = unix.Renameat(d.fd, s.tmp, d.fd, s.node.Name)
		}
	}
	switch {
	case err == unix.EEXIST || err == unix.ENOTEMPTY:
		p.conflict(s.disp)
		return s.remove()
	case err == unix.ENOENT:
		p.conflict(s.disp)
	case err != nil:
		return fmt.Errorf("restore: rename into place %s: %w", d.join(s.node.Name), err)
	}
	s.tmp = ""
	return nil
}

// remove removes the staged copy of s if it is still where restore made
// it.
func (s *stagedTree) remove() error {
	if s.tmp == "" || s.dir == nil {
		return nil
	}
	var st unix.Stat_t
	name := s.tmp
	s.tmp = ""
	if unix.Fstatat(s.dir.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || !dirfd.SameFile(&st, &s.st) {
		return nil
	}
	return dirfd.RemoveAll(s.dir.fd, s.dir.path, name, repo.MaxTreeDepth+1)
}
